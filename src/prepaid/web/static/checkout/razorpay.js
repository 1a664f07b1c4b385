// Open Razorpay Checkout for this order; Razorpay posts the signed result to the order's return page.
(function () {
  "use strict";
  var options = JSON.parse(document.getElementById("rzp-options").textContent);
  function open() {
    if (typeof window.Razorpay !== "function") { return; }
    new window.Razorpay(options).open();
  }
  var button = document.getElementById("rzp-open");
  if (button) { button.addEventListener("click", open); }
  open();
})();
