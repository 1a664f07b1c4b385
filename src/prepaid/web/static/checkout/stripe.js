// Stripe Elements for this order's PaymentIntent: Stripe.js (loaded from https://js.stripe.com/v3/, as Stripe
// requires) mounts the Payment Element with the publishable key and the intent's client secret from the form's
// data attributes; "Pay" calls stripe.confirmPayment, and Stripe sends the browser to the attempt's return page
// with payment_intent and payment_intent_client_secret (the server then asks Stripe whether it is paid). A
// card error comes back here instead and is shown next to the form, and the buyer can try again.
(function () {
  "use strict";
  var form = document.getElementById("stripe-form");
  if (!form) { return; }
  var status = document.getElementById("stripe-status");
  var problem = document.getElementById("stripe-error");
  var pay = document.getElementById("stripe-pay");
  var data = form.dataset;

  function show(message) { problem.textContent = message || ""; }

  if (typeof window.Stripe !== "function") {
    status.textContent = "";
    show("Stripe's payment form could not be loaded. Check your connection and reload the page.");
    return;
  }
  var stripe = window.Stripe(data.publishableKey);
  var elements = stripe.elements({ clientSecret: data.clientSecret });
  var payment = elements.create("payment");
  payment.on("ready", function () {
    status.textContent = "Enter your payment details.";
    pay.disabled = false;
  });
  payment.on("loaderror", function (event) {
    status.textContent = "";
    show((event && event.error && event.error.message) || "Stripe's payment form could not be loaded.");
  });
  payment.mount("#payment-element");

  // The intent was paid already (another tab, a double click): the return page asks Stripe and shows the order.
  function toReturnPage() {
    var secret = data.clientSecret;
    var url = new URL(data.returnUrl, window.location.href);
    url.searchParams.set("payment_intent", secret.split("_secret_")[0]);
    url.searchParams.set("payment_intent_client_secret", secret);
    window.location.assign(url.toString());
  }

  var busy = false;
  function done() { busy = false; pay.disabled = false; status.textContent = ""; }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (busy) { return; }
    busy = true;
    pay.disabled = true;
    show("");
    status.textContent = "Confirming the payment with Stripe…";
    stripe.confirmPayment({ elements: elements, confirmParams: { return_url: data.returnUrl } }).then(
      function (result) {
        // On success Stripe has sent the browser to return_url; only an error comes back here.
        if (!result || !result.error) { return; }
        if (result.error.code === "payment_intent_unexpected_state") { toReturnPage(); return; }
        done();
        show(result.error.message || "The payment did not go through. Check the details and try again.");
      },
      function () {
        done();
        show("Stripe could not be reached. Check your connection and try again.");
      }
    );
  });
})();
