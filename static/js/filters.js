// The filter bar: custom start/end show only for a custom range, and empty fields stay out of the URL.
(function () {
  "use strict";
  document.querySelectorAll("form[data-filters]").forEach(function (form) {
    var range = form.querySelector("[data-range]");
    var custom = form.querySelectorAll("[data-custom]");
    function toggle() {
      var on = range.value === "custom";
      custom.forEach(function (label) {
        label.hidden = !on;
      });
    }
    if (range) {
      range.addEventListener("change", toggle);
      toggle();
    }
    form.addEventListener("submit", function () {
      form.querySelectorAll("input, select").forEach(function (field) {
        if (!field.name) return;
        var useless = field.value === "" || (range && range.value !== "custom" && (field.name === "start" || field.name === "end"));
        if (useless) field.disabled = true; // disabled fields are not submitted
      });
      // A fresh filter starts again on the first page.
      var page = form.querySelector("input[name=page]");
      if (page) page.disabled = true;
    });
    // Coming back with the browser's back button must not leave fields disabled.
    window.addEventListener("pageshow", function () {
      form.querySelectorAll("[disabled]").forEach(function (field) {
        field.disabled = false;
      });
    });
  });
})();
