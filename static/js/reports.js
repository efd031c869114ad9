// The Reports page: a metadata key input shows only beside a grouping set to "Metadata key…", and the
// stacked bar chart is drawn from the server's figures (embedded as JSON; this file only places them).
(function () {
  "use strict";

  document.querySelectorAll("form[data-report-form] [data-dimension]").forEach(function (select) {
    var key = document.querySelector('[data-key-of="' + select.dataset.dimension + '"]');
    if (!key) return;
    function toggle() {
      key.hidden = select.value !== "metadata";
    }
    select.addEventListener("change", toggle);
    toggle();
  });

  var data = document.getElementById("report-chart-data");
  var canvas = document.getElementById("chart-report");
  if (!data || !canvas || typeof Chart === "undefined") return;
  var chart = JSON.parse(data.textContent);
  var palette = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16", "#9ca3af"];
  var usdBig = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
  var usdSmall = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumSignificantDigits: 3 });
  function money(v) {
    return Math.abs(v) !== 0 && Math.abs(v) < 0.01 ? usdSmall.format(v) : usdBig.format(v);
  }
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: chart.labels,
      datasets: chart.datasets.map(function (set, index) {
        var last = index === chart.datasets.length - 1 && /^Other \(/.test(set.label);
        return { label: set.label, data: set.data, backgroundColor: last ? palette[8] : palette[index % 8], stack: "cost" };
      }),
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { stacked: true, ticks: { autoSkip: true, maxRotation: 0 } },
        y: { stacked: true, beginAtZero: true, ticks: { callback: function (v) { return Math.abs(v) < 1 ? usdSmall.format(v) : usdBig.format(v); } } },
      },
      plugins: {
        legend: { position: "bottom" },
        tooltip: {
          callbacks: {
            label: function (item) { return item.dataset.label + ": " + money(item.parsed.y); },
          },
        },
      },
    },
  });
})();
