// Region dashboard: draws the region page's Plotly charts, filters the overview and counts its
// relative times on. The rest is htmx.
// No inline script anywhere (the Content-Security-Policy forbids it): this file is all there is.
(function () {
  "use strict";

  var REFRESH_MS = 30000;

  function drawChart(container, url, windowName) {
    var request = (container.dataset.chartUrl || url) + "?metric=" + encodeURIComponent(container.dataset.metric) +
      "&window=" + encodeURIComponent(windowName);
    return fetch(request, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (figure) {
        container.classList.remove("chart-error");
        container.removeAttribute("data-error");
        applyTheme(figure.layout);
        return window.Plotly.react(container, figure.data, figure.layout,
          { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
      })
      .catch(function (error) {
        container.classList.add("chart-error");
        container.setAttribute("data-error", "chart unavailable: " + error.message);
      });
  }

  // -- the charts follow the page's theme (issue 15): colours from the CSS custom properties ------
  function themeUpdate() {
    var style = window.getComputedStyle(document.documentElement);
    var text = style.getPropertyValue("--text").trim() || "#1f2328";
    var grid = style.getPropertyValue("--chart-grid").trim() || "#d1d9e0";
    var card = style.getPropertyValue("--card").trim() || "#ffffff";
    return {
      "font.color": text, "xaxis.gridcolor": grid, "yaxis.gridcolor": grid, "xaxis.linecolor": grid,
      "yaxis.linecolor": grid, "xaxis.zerolinecolor": grid, "yaxis.zerolinecolor": grid,
      "hoverlabel.bgcolor": card, "hoverlabel.font.color": text, "legend.font.color": text
    };
  }

  function applyTheme(layout) {
    var update = themeUpdate();
    Object.keys(update).forEach(function (path) {
      var parts = path.split("."), node = layout;
      for (var i = 0; i < parts.length - 1; i++) { node = node[parts[i]] = node[parts[i]] || {}; }
      node[parts[parts.length - 1]] = update[path];
    });
  }

  document.addEventListener("dashboard:theme", function () {
    document.querySelectorAll(".chart.js-plotly-plot").forEach(function (chart) {
      if (window.Plotly) { window.Plotly.relayout(chart, themeUpdate()); }
    });
  });

  function setUpCharts(section) {
    var url = section.dataset.chartUrl;
    var buttons = section.querySelectorAll(".window-button");
    var charts = section.querySelectorAll(".chart");
    var current = section.querySelector('.window-button[aria-pressed="true"]');
    var windowName = current ? current.dataset.window : "1h";

    function drawAll() {
      charts.forEach(function (chart) { drawChart(chart, url, windowName); });
    }

    buttons.forEach(function (button) {
      button.addEventListener("click", function () {
        windowName = button.dataset.window;
        buttons.forEach(function (b) { b.setAttribute("aria-pressed", b === button ? "true" : "false"); });
        drawAll();
      });
    });
    drawAll();
    setInterval(function () { if (!document.hidden) { drawAll(); } }, REFRESH_MS);
  }

  // A table wider than a phone scrolls inside its own box (app.css); such a box must take the
  // keyboard focus, or a keyboard user could not scroll it (WCAG 2.1.1, axe scrollable-region-focusable).
  function focusableScrollers() {
    document.querySelectorAll("table").forEach(function (table) {
      if (table.scrollWidth > table.clientWidth + 1) { table.setAttribute("tabindex", "0"); }
      else if (table.getAttribute("tabindex") === "0") { table.removeAttribute("tabindex"); }
    });
  }
  document.addEventListener("DOMContentLoaded", focusableScrollers);
  document.addEventListener("htmx:afterSettle", focusableScrollers);
  window.addEventListener("resize", focusableScrollers);
  // The overview's filter: a state (the counts bar's buttons) and a text the region's name contains.
  // It lives here, not on the server, so each live refresh stays the one request it was and the
  // filter is applied again right after the morph swap, before the browser paints. The URL keeps
  // it (?show=&q=), so a reload or a shared link shows the same regions.
  function setUpOverviewFilter(form) {
    var input = form.querySelector("#region-filter-text");
    var status = form.querySelector("#region-filter-status");
    var query = new URLSearchParams(window.location.search);
    var filter = { show: query.get("show") || "all", text: query.get("q") || "" };
    if (!document.querySelector('#overview .filter-button[data-show="' + CSS.escape(filter.show) + '"]')) {
      filter.show = "all";  // a link from before a filter existed, or a mistyped one: show everything
    }
    input.value = filter.text;
    form.hidden = false;

    function apply() {
      var overview = document.getElementById("overview");
      if (!overview) { return; }
      var needle = filter.text.trim().toLowerCase();
      var filtering = filter.show !== "all" || needle !== "";
      var items = overview.querySelectorAll("[data-filters]");
      var shown = 0;
      items.forEach(function (item) {
        var match = (filter.show === "all" || item.dataset.filters.split(" ").indexOf(filter.show) >= 0) &&
          item.dataset.region.toLowerCase().indexOf(needle) >= 0;
        item.hidden = !match;
        if (match) { shown += 1; }
      });
      overview.querySelectorAll(".region-group").forEach(function (group) {
        group.hidden = filtering && !group.querySelector("[data-filters]:not([hidden])");
      });
      overview.querySelectorAll(".filter-button").forEach(function (button) {
        button.setAttribute("aria-pressed", button.dataset.show === filter.show ? "true" : "false");
      });
      var words = filtering ? (shown ? "Showing " + shown + " of " + items.length + " regions" :
        "No region matches the filter") : "";
      if (status.textContent !== words) { status.textContent = words; }  // announced only on change
    }

    function remember() {
      var url = new URL(window.location.href);
      url.searchParams.delete("show");
      url.searchParams.delete("q");
      if (filter.show !== "all") { url.searchParams.set("show", filter.show); }
      if (filter.text) { url.searchParams.set("q", filter.text); }
      window.history.replaceState(window.history.state, "", url);
      apply();
    }

    document.addEventListener("click", function (event) {
      var button = event.target.closest ? event.target.closest("#overview .filter-button") : null;
      if (!button) { return; }
      // Pressing the pressed button again lets go of it.
      filter.show = button.dataset.show === filter.show ? "all" : button.dataset.show;
      remember();
    });
    input.addEventListener("input", function () { filter.text = input.value; remember(); });
    form.addEventListener("submit", function (event) { event.preventDefault(); });
    form.querySelector("#region-filter-clear").addEventListener("click", function () {
      filter = { show: "all", text: "" };
      input.value = "";
      remember();
    });
    document.body.addEventListener("htmx:afterSwap", apply);
    apply();
  }

  // -- relative times ("polled 12 s ago") count on in the page -----------------------------------
  // The overview is built once for every viewer (dashboard/web/shared_views.py), so its words stop
  // at the moment it was built. Each <time data-ago> carries its moment; this rewrites the words
  // every second, and right after every swap, before the browser paints. The server's clock is the
  // reference: a laptop whose clock is off would otherwise show a fresh poll as minutes old.
  var serverSkewMs = 0;

  function formatDuration(seconds) {  // dashboard/text.py format_duration, word for word
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 120) { return seconds + " s"; }
    if (seconds < 7200) { return Math.floor(seconds / 60) + " min"; }
    if (seconds < 172800) { return Math.floor(seconds / 3600) + " h " + Math.floor(seconds % 3600 / 60) + " min"; }
    return Math.floor(seconds / 86400) + " d";
  }

  function countOn() {
    var now = Date.now() + serverSkewMs;
    document.querySelectorAll("time[data-ago]").forEach(function (element) {
      var at = Date.parse(element.getAttribute("datetime"));
      if (isNaN(at)) { return; }
      var words = formatDuration((now - at) / 1000) + " ago";
      if (element.textContent !== words) { element.textContent = words; }
    });
  }

  document.addEventListener("htmx:afterRequest", function (event) {
    var date = event.detail.xhr && event.detail.xhr.getResponseHeader("Date");
    var server = date ? Date.parse(date) : NaN;
    if (isNaN(server)) { return; }
    // The header has whole seconds: the server's clock is half a second past it, on average, and a
    // difference under two seconds is that rounding, not a wrong clock.
    var skew = server + 500 - Date.now();
    serverSkewMs = Math.abs(skew) > 2000 ? skew : 0;
  });
  document.addEventListener("htmx:afterSwap", countOn);
  window.setInterval(countOn, 1000);

  document.addEventListener("DOMContentLoaded", function () {
    countOn();
    var section = document.getElementById("charts");
    if (section && window.Plotly) { setUpCharts(section); }
    var filter = document.getElementById("region-filter");
    if (filter) { setUpOverviewFilter(filter); }
  });
})();
