// The page's theme (issue 15): dark or light as the system asks (prefers-color-scheme), unless the
// engineer chose one with the toggle in the header, which is remembered in localStorage. Loaded in
// <head> without defer, so the chosen theme applies before the first paint (no white flash at 3 a.m.).
// Tells the page of every change with a "dashboard:theme" event on document (app.js redraws the charts).
(function () {
  "use strict";

  var KEY = "dashboard-theme";
  var root = document.documentElement;
  var systemDark = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function stored() {
    try { return window.localStorage.getItem(KEY); } catch (e) { return null; }
  }

  function current() {
    var chosen = stored();
    if (chosen === "dark" || chosen === "light") { return chosen; }
    return systemDark && systemDark.matches ? "dark" : "light";
  }

  function apply() {
    var chosen = stored();
    if (chosen === "dark" || chosen === "light") { root.setAttribute("data-theme", chosen); }
    else { root.removeAttribute("data-theme"); }
    var theme = current();
    var button = document.getElementById("theme-toggle");
    if (button) { button.setAttribute("aria-pressed", theme === "dark" ? "true" : "false"); }
    document.dispatchEvent(new CustomEvent("dashboard:theme", { detail: { theme: theme } }));
  }

  window.dashboardTheme = current;
  apply();
  if (systemDark && systemDark.addEventListener) { systemDark.addEventListener("change", apply); }
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("theme-toggle");
    if (!button) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      try { window.localStorage.setItem(KEY, current() === "dark" ? "light" : "dark"); } catch (e) { /* private mode */ }
      apply();
    });
    apply();
  });
})();
