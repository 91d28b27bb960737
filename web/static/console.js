// Hookpost console: small progressive enhancements. Every page works without this script.
// - <time data-local>: shown in the browser's zone, UTC kept on hover;
// - [data-refresh=N]: the element is re-read from the same URL every N seconds (live lists, in-flight events);
// - the events filter form learns the browser's UTC offset, so typed times are local;
// - "select all" for the rows of the events table.
(function () {
  "use strict";
  function pad(n) { return String(n).padStart(2, "0"); }
  function localise(root) {
    root.querySelectorAll("time[data-local]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) { return; }
      el.title = el.title || el.textContent;
      el.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      el.removeAttribute("data-local");
    });
  }
  function offsetLabel(minutes) {
    if (!minutes) { return "UTC"; }
    var ahead = -minutes, sign = ahead >= 0 ? "+" : "-", a = Math.abs(ahead);
    return "UTC" + sign + pad(Math.floor(a / 60)) + ":" + pad(a % 60) + ", your browser";
  }
  function timezones() {
    var tz = document.querySelector("input[data-tz]");
    if (!tz) { return; }
    if (tz.value === "") { tz.value = String(new Date().getTimezoneOffset()); }
    document.querySelectorAll("[data-tz-label]").forEach(function (el) {
      el.textContent = "(" + offsetLabel(parseInt(tz.value, 10)) + ")";
    });
  }
  function selectAll(root) {
    var all = root.querySelector("input[data-select-all]");
    if (!all) { return; }
    all.hidden = false;
    all.addEventListener("change", function () {
      root.querySelectorAll("input[name=id]").forEach(function (box) { box.checked = all.checked; });
    });
  }
  function refresher(el) {
    var seconds = parseInt(el.getAttribute("data-refresh"), 10);
    if (!seconds || !el.id) { return; }
    var timer = window.setTimeout(function tick() {
      if (el.contains(document.activeElement)) {  // someone is using a control in it: don't pull it away
        timer = window.setTimeout(tick, seconds * 1000);
        return;
      }
      fetch(window.location.href, { headers: { "X-Hookpost-Refresh": el.id }, credentials: "same-origin" })
        .then(function (resp) { return resp.ok ? resp.text() : Promise.reject(resp.status); })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById(el.id);
          if (!fresh) { return; }
          var checked = {};
          el.querySelectorAll("input[name=id]:checked").forEach(function (b) { checked[b.value] = true; });
          el.innerHTML = fresh.innerHTML;
          el.querySelectorAll("input[name=id]").forEach(function (b) { b.checked = !!checked[b.value]; });
          localise(el); selectAll(el);
          if (fresh.hasAttribute("data-refresh")) { timer = window.setTimeout(tick, seconds * 1000); }
          else { el.removeAttribute("data-refresh"); }
        })
        .catch(function () { timer = window.setTimeout(tick, seconds * 2000); });
    }, seconds * 1000);
    return timer;
  }
  document.addEventListener("DOMContentLoaded", function () {
    localise(document);
    timezones();
    selectAll(document);
    document.querySelectorAll("[data-refresh][id]").forEach(refresher);
  });
})();
