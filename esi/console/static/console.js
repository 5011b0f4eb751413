// esi console: the only script of the console (no inline script: the Content-Security-Policy forbids it).
// Pages work without it; it adds "select all" to the dead-letter tables and a guard against empty selections
// (its message in the page's language: the button's data-empty-selection, rendered by the server).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("input[data-select-all]").forEach(function (all) {
    all.addEventListener("change", function () {
      all.closest("table").querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = all.checked; });
    });
  });
  document.querySelectorAll("button[value=selected]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      var form = button.form;
      if (form && form.querySelector("input[type=checkbox][name=ids]") && !form.querySelector("input[name=ids]:checked")) {
        event.preventDefault();
        button.setCustomValidity(button.dataset.emptySelection || "Select the dead letters first");
        button.reportValidity();
        setTimeout(function () { button.setCustomValidity(""); }, 2000);
      }
    });
  });
});
