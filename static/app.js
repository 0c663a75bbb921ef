// Region dashboard: draws the region page's Plotly charts. Everything else is htmx attributes.
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

  document.addEventListener("DOMContentLoaded", function () {
    var section = document.getElementById("charts");
    if (section && window.Plotly) { setUpCharts(section); }
  });
})();
