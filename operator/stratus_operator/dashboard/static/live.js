// Live parts of a page: each element with data-live="URL" is replaced by the fragments that
// URL streams (Server-Sent Events) whenever what it shows changes. Forms with data-confirm
// ask first.
"use strict";
document.querySelectorAll("[data-live]").forEach((element) => {
  const source = new EventSource(element.dataset.live);
  source.addEventListener("fragment", (event) => {
    element.innerHTML = JSON.parse(event.data);
    element.dispatchEvent(new CustomEvent("stratus:updated", { bubbles: true }));
  });
});
document.querySelectorAll("form[data-confirm]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
});
