// Copy buttons of the admin (a connection's bot call, a new bot key): <button data-copy-from="ID" hidden> copies
// the text of the element with that id. A static file, not an inline script, so a Content-Security-Policy without
// 'unsafe-inline' allows it; the button stays hidden where this script does not run.
"use strict";
window.addEventListener("load", function () {
  function copyBySelection(source) {
    // No clipboard API outside a secure context (plain http other than localhost): select and copy instead.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    return document.execCommand("copy");
  }

  document.querySelectorAll("button[data-copy-from]").forEach(function (button) {
    const source = document.getElementById(button.dataset.copyFrom);
    if (!source) {
      return;
    }
    const label = button.textContent;
    function said(text) {
      button.textContent = text;
      window.setTimeout(function () {
        button.textContent = label;
      }, 2000);
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      const text = source.textContent;
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(
          () => said("Copied"),
          () => said(copyBySelection(source) ? "Copied" : "Select and copy")
        );
      } else {
        said(copyBySelection(source) ? "Copied" : "Select and copy");
      }
    });
  });
});
