// panelsrv pages: the copy buttons. Loaded from /static (the CSP allows no inline script).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
      } catch {
        document.execCommand("copy");  // plain-HTTP development: no clipboard API there
      }
      button.textContent = "Copied";
    });
  }
});
