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
        return window.Plotly.react(container, figure.data, figure.layout,
          { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
      })
      .catch(function (error) {
        container.classList.add("chart-error");
        container.setAttribute("data-error", "chart unavailable: " + error.message);
      });
  }

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

  document.addEventListener("DOMContentLoaded", function () {
    var section = document.getElementById("charts");
    if (section && window.Plotly) { setUpCharts(section); }
  });
})();
