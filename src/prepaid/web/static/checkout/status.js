// The order status page: ask the order's status every few seconds until it is final (paid and credited,
// failed, expired...), so credits that arrive with a late webhook appear without a reload.
(function () {
  "use strict";
  var box = document.getElementById("order-status");
  if (!box || box.getAttribute("data-final") === "true") { return; }
  var url = box.getAttribute("data-poll-url");
  var message = document.getElementById("order-message");
  var state = document.getElementById("order-state");
  var tries = 0;
  var delay = 2000;
  function show(view) {
    message.textContent = view.message;
    state.textContent = view.status;
    message.className = view.credited ? "good" : (view.final ? "error" : "");
  }
  function poll() {
    tries += 1;
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (view) {
        if (view) { show(view); }
        // A failed or expired order: reload once, so the page offers to try again.
        if (view && view.final && !view.credited && view.status !== "cancelled") { window.location.reload(); return; }
        if (view && view.final) { return; }
        if (tries < 150) { window.setTimeout(poll, tries > 30 ? delay * 5 : delay); }
      })
      .catch(function () { if (tries < 150) { window.setTimeout(poll, delay * 5); } });
  }
  window.setTimeout(poll, delay);
})();
