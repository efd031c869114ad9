// The dashboard: charts from the server's figures (embedded as JSON), and an auto-refresh that fetches
// dashboard.json every 30 s and updates figures, tables and charts in place (no page reload).
// Every figure arrives already formatted by the server; this file only places it.
(function () {
  "use strict";

  var root = document.querySelector("[data-dashboard]");
  if (!root) return;
  var url = root.dataset.url;
  var every = Number(root.dataset.refresh || 30) * 1000;
  var controls = document.querySelector("[data-refresh-controls]");
  var toggle = document.getElementById("auto-refresh");
  var statusLine = document.getElementById("refresh-status");
  var STORE = "llmcost.autoRefresh";
  var timer = null;

  // --- formatting for chart axes and tooltips -----------------------------------------------------
  var usdBig = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
  var usdSmall = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumSignificantDigits: 3 });
  var count = new Intl.NumberFormat("en-US");
  var compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  function money(v) {
    if (v === null || v === undefined) return "—";
    return Math.abs(v) !== 0 && Math.abs(v) < 0.01 ? usdSmall.format(v) : usdBig.format(v);
  }
  function ms(v) {
    if (v === null || v === undefined) return "—";
    if (v < 10) return v.toFixed(1) + " ms";
    if (v < 1000) return Math.round(v) + " ms";
    return (v / 1000).toFixed(2) + " s";
  }

  function get(obj, path) {
    return path.split(".").reduce(function (o, key) {
      return o === null || o === undefined ? undefined : o[key];
    }, obj);
  }

  // --- figures and tables -------------------------------------------------------------------------
  function applyFigures(board) {
    document.querySelectorAll("[data-bind]").forEach(function (el) {
      var value = get(board, el.dataset.bind);
      if (value !== undefined && value !== null) el.textContent = value;
    });
    document.querySelectorAll("[data-tone]").forEach(function (el) {
      var tone = get(board, el.dataset.tone);
      el.classList.remove("good", "bad", "flat");
      if (tone) el.classList.add(tone);
    });
    document.querySelectorAll("[data-table]").forEach(function (tbody) {
      var rows = get(board, tbody.dataset.table);
      if (rows) renderRows(tbody, rows, Number(tbody.dataset.colspan || 1));
    });
  }

  function renderRows(tbody, rows, colspan) {
    var fragment = document.createDocumentFragment();
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      row.forEach(function (cell) {
        var td = document.createElement("td");
        if (cell.num) td.className = "num";
        if (cell.tone) td.classList.add("tone-" + cell.tone);
        var holder = td;
        if (cell.href) {
          var a = document.createElement("a");
          a.href = cell.href;
          td.appendChild(a);
          holder = a;
        }
        if (cell.code) {
          var code = document.createElement("code");
          holder.appendChild(code);
          holder = code;
        }
        holder.textContent = cell.text;
        tr.appendChild(td);
      });
      fragment.appendChild(tr);
    });
    if (!rows.length) {
      var empty = tbody.querySelector(".empty-row");
      if (empty) fragment.appendChild(empty.cloneNode(true));
      else {
        var tr = document.createElement("tr");
        var td = document.createElement("td");
        td.colSpan = colspan;
        td.className = "muted";
        td.textContent = "Nothing in this range.";
        tr.appendChild(td);
        fragment.appendChild(tr);
      }
    }
    tbody.replaceChildren(fragment);
  }

  // --- charts ---------------------------------------------------------------------------------------
  var PALETTE = ["#1d4ed8", "#047857", "#b45309", "#7c3aed", "#be123c", "#0e7490", "#4d7c0f", "#6b7280"];
  var charts = {};

  function axisMoney() {
    return { beginAtZero: true, ticks: { callback: function (v) { return money(v); } } };
  }
  function axisCount() {
    return { beginAtZero: true, ticks: { callback: function (v) { return compact.format(v); } } };
  }
  function axisMs() {
    return { beginAtZero: true, ticks: { callback: function (v) { return ms(v); } } };
  }
  function tooltip(format) {
    return {
      callbacks: {
        label: function (ctx) {
          var value = ctx.parsed && typeof ctx.parsed === "object" ? (ctx.chart.options.indexAxis === "y" ? ctx.parsed.x : ctx.parsed.y) : ctx.parsed;
          return (ctx.dataset.label ? ctx.dataset.label + ": " : (ctx.label ? ctx.label + ": " : "")) + format(value, ctx);
        },
      },
    };
  }

  var trendNotes = [];
  var specs = {
    "chart-trend": function (c) {
      trendNotes = c.trend.anomaly_notes || [];  // read by the tooltip, refreshed with the data
      return {
        type: "bar",
        data: {
          labels: c.trend.labels,
          datasets: [
            { type: "line", label: "Cost", data: c.trend.cost, borderColor: PALETTE[0], backgroundColor: PALETTE[0], yAxisID: "cost", tension: 0, pointRadius: 2, pointHitRadius: 8, order: 1 },
            { type: "bar", label: "Requests", data: c.trend.requests, backgroundColor: "rgba(107,114,128,0.28)", yAxisID: "requests", order: 2 },
          ].concat((c.trend.anomalies || []).some(function (v) { return v !== null; }) ? [
            // Buckets holding a team's anomalous hour (metrics.anomalies): a red marker on the cost line.
            { type: "line", label: "Unusual spend", data: c.trend.anomalies, showLine: false, borderColor: "#dc2626", backgroundColor: "#dc2626", pointStyle: "triangle", pointRadius: 7, pointHoverRadius: 9, yAxisID: "cost", order: 0 },
          ] : []),
        },
        options: {
          interaction: { mode: "index", intersect: false },
          scales: { cost: Object.assign(axisMoney(), { position: "left" }), requests: Object.assign(axisCount(), { position: "right", grid: { drawOnChartArea: false } }), x: { ticks: { maxTicksLimit: 12, autoSkip: true } } },
          plugins: { tooltip: (function () {
            var base = tooltip(function (v, ctx) { return ctx.dataset.yAxisID === "cost" ? money(v) : count.format(v); });
            base.callbacks.afterBody = function (items) {
              var notes = trendNotes;
              var index = items.length ? items[0].dataIndex : -1;
              return index >= 0 && notes[index] ? notes[index] : "";
            };
            return base;
          })() },
        },
      };
    },
    "chart-model-share": function (c) {
      return {
        type: "doughnut",
        data: { labels: c.model_share.labels, datasets: [{ data: c.model_share.cost, backgroundColor: PALETTE }] },
        options: {
          plugins: {
            legend: { position: "right" },
            tooltip: { callbacks: { label: function (ctx) {
              var total = ctx.dataset.data.reduce(function (a, b) { return a + b; }, 0);
              return ctx.label + ": " + money(ctx.parsed) + (total ? " (" + (100 * ctx.parsed / total).toFixed(1) + "%)" : "");
            } } },
          },
        },
      };
    },
    "chart-tokens": function (c) {
      return {
        type: "bar",
        data: {
          labels: c.tokens_by_model.labels,
          datasets: [
            { label: "Prompt", data: c.tokens_by_model.prompt, backgroundColor: PALETTE[0] },
            { label: "Output", data: c.tokens_by_model.output, backgroundColor: PALETTE[2] },
          ],
        },
        options: {
          indexAxis: "y",
          scales: { x: Object.assign(axisCount(), { stacked: true }), y: { stacked: true } },
          plugins: { tooltip: tooltip(function (v) { return count.format(v) + " tokens"; }) },
        },
      };
    },
    "chart-latency": function (c) {
      return {
        type: "bar",
        data: { labels: c.latency_histogram.labels, datasets: [{ label: "Requests", data: c.latency_histogram.counts, backgroundColor: PALETTE[5] }] },
        options: { scales: { y: axisCount() }, plugins: { legend: { display: false }, tooltip: tooltip(function (v) { return count.format(v); }) } },
      };
    },
    "chart-percentiles": function (c) {
      var p = c.percentiles;
      function line(label, data, color, dash) {
        return { label: label, data: data, borderColor: color, backgroundColor: color, borderDash: dash || [], tension: 0, pointRadius: 2, pointHitRadius: 8, spanGaps: false };
      }
      return {
        type: "line",
        data: {
          labels: p.labels,
          datasets: [line("P50", p.p50, PALETTE[1]), line("P95", p.p95, PALETTE[2]), line("P99", p.p99, PALETTE[4]), line("First token (avg.)", p.ttft, PALETTE[7], [4, 3])],
        },
        options: { interaction: { mode: "index", intersect: false }, scales: { y: axisMs(), x: { ticks: { maxTicksLimit: 12 } } }, plugins: { tooltip: tooltip(function (v) { return ms(v); }) } },
      };
    },
    "chart-cache": function (c) {
      return {
        type: "doughnut",
        data: { labels: c.cache.labels, datasets: [{ data: c.cache.events, backgroundColor: [PALETTE[1], "#d1d5db"] }] },
        options: { plugins: { legend: { position: "right" }, tooltip: { callbacks: { label: function (ctx) { return ctx.label + ": " + count.format(ctx.parsed); } } } } },
      };
    },
    "chart-cache-lookup": function (c) {
      return {
        type: "line",
        data: { labels: c.cache_lookup.labels, datasets: [{ label: "Lookup time", data: c.cache_lookup.lookup_ms, borderColor: PALETTE[3], backgroundColor: PALETTE[3], pointRadius: 2, spanGaps: true }] },
        options: { scales: { y: axisMs(), x: { ticks: { maxTicksLimit: 8 } } }, plugins: { legend: { display: false }, tooltip: tooltip(function (v) { return ms(v); }) } },
      };
    },
    "chart-query-types": function (c) {
      return {
        type: "bar",
        data: { labels: c.query_types.labels, datasets: [{ label: "Cost", data: c.query_types.cost, backgroundColor: PALETTE[3] }] },
        options: { indexAxis: "y", scales: { x: axisMoney() }, plugins: { legend: { display: false }, tooltip: tooltip(function (v) { return money(v); }) } },
      };
    },
  };

  function drawCharts(board) {
    if (typeof Chart === "undefined") return;
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.color = "#4b5563";
    Chart.defaults.maintainAspectRatio = false;
    Object.keys(specs).forEach(function (id) {
      var canvas = document.getElementById(id);
      if (!canvas) return;
      var spec = specs[id](board.charts);
      if (!spec) return;
      if (charts[id] && charts[id].data.datasets.length !== spec.data.datasets.length) {
        charts[id].destroy();  // a new shape (say, an anomaly marker appeared): draw it afresh
        delete charts[id];
      }
      if (charts[id]) {
        // Same shape, new numbers: update in place so the chart does not flash.
        charts[id].data.labels = spec.data.labels;
        spec.data.datasets.forEach(function (dataset, i) {
          if (charts[id].data.datasets[i]) charts[id].data.datasets[i].data = dataset.data;
        });
        charts[id].update("none");
      } else {
        charts[id] = new Chart(canvas, spec);
      }
    });
  }

  // --- auto-refresh ---------------------------------------------------------------------------------
  function say(text) {
    if (statusLine) statusLine.textContent = text;
  }

  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (response.redirected || type.indexOf("application/json") === -1) {
          stop();
          say("Signed out — reload the page to sign in again.");
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (board) {
        if (!board) return;
        if (root.hasAttribute("data-empty")) {
          if (board.has_events) window.location.reload();
          else say("Waiting for the first event…");
          return;
        }
        applyFigures(board);
        drawCharts(board);
        say("Updated " + new Date().toLocaleTimeString());
      })
      .catch(function (error) {
        say("Could not refresh (" + error.message + "); trying again in " + every / 1000 + " s.");
      })
      .finally(schedule);
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (toggle && toggle.checked && !document.hidden) timer = setTimeout(refresh, every);
  }

  function stop() {
    if (toggle) toggle.checked = false;
    clearTimeout(timer);
    timer = null;
  }

  if (controls) controls.hidden = false;
  if (toggle) {
    try {
      toggle.checked = window.localStorage.getItem(STORE) !== "off";
    } catch (e) { /* storage blocked: keep the default */ }
    toggle.addEventListener("change", function () {
      try {
        window.localStorage.setItem(STORE, toggle.checked ? "on" : "off");
      } catch (e) { /* ignore */ }
      say(toggle.checked ? "Auto-refresh on." : "Auto-refresh off.");
      schedule();
    });
  }
  // A hidden tab does not poll; it refreshes as soon as it is shown again.
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && toggle && toggle.checked) refresh();
    else schedule();
  });

  var embedded = document.getElementById("dashboard-data");
  if (embedded) drawCharts(JSON.parse(embedded.textContent));
  schedule();
})();
