// orion-proxy console: live refresh of the parts marked data-live, and charts (uPlot) from
// /ui/data/series (or a chart's data-source, e.g. one client's). The pages work without this
// script; it only keeps them current.
(function () {
  "use strict";
  var REFRESH_MS = 5000;

  function busy() {
    var a = document.activeElement;
    return a && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA");
  }

  function refresh() {
    if (document.hidden || busy()) return;
    fetch(location.href, { credentials: "same-origin", headers: { "X-Console-Refresh": "1" } })
      .then(function (r) { if (r.redirected || !r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (fresh && fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
        });
        var stamp = document.getElementById("refreshed");
        if (stamp) stamp.textContent = new Date().toLocaleTimeString();
      })
      .catch(function () {});
  }

  var plots = {};
  var CHARTS = {
    rps: { title: "Requests per second", series: [["rps", "req/s"]] },
    errors: { title: "Errors per 10 s", series: [["errors_4xx", "4xx"], ["errors_5xx", "5xx"], ["limited_429", "429"]] },
    latency: { title: "Latency (ms)", series: [["p50_ms", "p50"], ["p95_ms", "p95"], ["p99_ms", "p99"]] },
    upstream: { title: "OrionVM latency (ms) and errors", series: [["upstream_p50_ms", "p50"], ["upstream_p95_ms", "p95"], ["upstream_errors", "errors"]] },
    client: { title: "Requests, errors and 429s per 10 s", series: [["requests", "requests"], ["errors", "errors"], ["limited_429", "429"]] },
    endpoint: { title: "Calls, failures and mean latency per 10 s", series: [["calls", "calls"], ["failures", "failures"], ["mean_ms", "mean ms"]] }
  };
  var COLORS = ["#0a58ca", "#cf222e", "#9a6700", "#1a7f37"];

  var SERIES = "/ui/data/series";

  function sourceOf(el) { return el.getAttribute("data-source") || SERIES; }

  // Draws the charts fed by `source`. Each chart says what it drew (data-drawn-points, and the
  // sum of its first series in data-drawn-total), for people and tests alike.
  function draw(source, points) {
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      if (sourceOf(el) !== source) return;
      var spec = CHARTS[el.getAttribute("data-chart")];
      if (!spec || typeof uPlot === "undefined") return;
      var data = [points.map(function (p) { return p.t; })];
      spec.series.forEach(function (s) {
        data.push(points.map(function (p) { return p[s[0]] === null ? null : p[s[0]]; }));
      });
      var key = el.getAttribute("data-chart") + " " + source;
      var width = Math.max(300, el.clientWidth - 16);
      el.setAttribute("data-drawn-points", String(points.length));
      el.setAttribute("data-drawn-total", String(data[1].reduce(function (a, v) { return a + (v || 0); }, 0)));
      if (plots[key]) { plots[key].setData(data); return; }
      var series = [{}];
      spec.series.forEach(function (s, i) { series.push({ label: s[1], stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true }); });
      var host = el.querySelector(".plot") || el;
      plots[key] = new uPlot({ width: width, height: 180, series: series, scales: { x: { time: true } } }, data, host);
    });
  }

  function charts() {
    if (document.hidden) return;
    var sources = {};
    document.querySelectorAll("[data-chart]").forEach(function (el) { sources[sourceOf(el)] = true; });
    Object.keys(sources).forEach(function (source) {
      fetch(source, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (j) { draw(source, j.points || []); })
        .catch(function () {});
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    charts();
    if (document.querySelector("[data-live]") || document.querySelector("[data-chart]")) {
      setInterval(function () { refresh(); charts(); }, REFRESH_MS);
    }
    document.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (e) {
        if (!window.confirm(f.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
  });
})();
