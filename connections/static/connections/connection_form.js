// Connection form: show only the placeholders the chosen provider type needs. Without JavaScript every
// placeholder field stays visible and the server still checks which ones are required.
"use strict";
window.addEventListener("load", function () {
  const provider = document.getElementById("id_provider");
  if (!provider || !provider.dataset.placeholders) {
    return;
  }
  const byProvider = JSON.parse(provider.dataset.placeholders);
  function update() {
    const wanted = byProvider[provider.value] || [];
    document.querySelectorAll("input.placeholder-input").forEach(function (input) {
      const row = input.closest(".form-row");
      if (row) {
        row.style.display = wanted.includes(input.dataset.placeholder) ? "" : "none";
      }
    });
  }
  provider.addEventListener("change", update);
  update();
});
