// The buy page: the live quote (POST /v1/quotes) as the user picks a plan or types a quantity, a currency or a
// coupon, then "Pay" creates the order (POST /v1/orders, with an Idempotency-Key so a double click makes one
// order) and opens its checkout page. Errors show next to the field the API names (Prepaid.showError).
// Data from the API is put in the page with textContent only.
"use strict";

(() => {
  const form = document.getElementById("buy-form");
  if (!form) return;
  const scale = Number(form.dataset.creditScale || 0);
  let exponents = {};
  try { exponents = JSON.parse(form.dataset.exponents || "{}"); } catch (_) { exponents = {}; }
  const lines = document.getElementById("quote-lines");
  const status = document.getElementById("quote-status");
  const pay = document.getElementById("pay");
  const field = (name) => form.elements.namedItem(name);
  const DEBOUNCE_MS = 300;

  let timer = null;
  let asked = 0; // the newest quote request; older answers are dropped
  let quoted = null; // {key: the purchase as JSON, quote}
  let busy = false;
  let orderKey = null; // {purchase: JSON, key}: the Idempotency-Key of the order being placed

  const money = (minor, currency) => Prepaid.money(minor, currency, exponents[currency] ?? 2);
  const credits = (amount) => Prepaid.credits(amount, scale);

  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return "buy_" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // What the form says to buy, as the API's body; or an error for the field that is not right yet.
  function purchase() {
    const item = form.querySelector('input[name="item"]:checked');
    const body = { currency: field("currency").value };
    if (!item) return { error: { param: "plan", message: "Choose a plan or a custom quantity." } };
    if (item.value === "custom") {
      const typed = (field("quantity").value || "").trim();
      if (!/^[0-9]{1,15}$/.test(typed) || Number(typed) < 1) {
        return { error: { param: "quantity", message: "Enter a whole number of credits." } };
      }
      body.quantity = Number(typed);
    } else {
      body.plan = item.value;
    }
    const coupon = (field("coupon").value || "").trim();
    if (coupon) body.coupon = coupon;
    return { body };
  }

  // Show an error next to its field without taking the cursor from where the user is typing.
  function showError(error) {
    const active = document.activeElement;
    Prepaid.showError(form, error);
    if (active && active !== document.activeElement && form.contains(active)) active.focus();
  }

  function row(line, label, value, className) {
    const tr = document.createElement("tr");
    tr.dataset.line = line;
    if (className) tr.className = className;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = label;
    const td = document.createElement("td");
    td.className = "num";
    td.textContent = value;
    tr.append(th, td);
    return tr;
  }

  function showQuote(quote) {
    const c = quote.currency;
    const rows = [];
    const radio = quote.plan ? form.querySelector(`input[name="item"][value="${CSS.escape(quote.plan)}"]`) : null;
    const what = quote.plan ? `${(radio && radio.dataset.name) || quote.plan} plan` : `${credits(quote.credits)} credits`;
    rows.push(row("subtotal", `${what}`, money(quote.subtotal, c)));
    const slab = quote.applied && quote.applied.slab;
    if (slab || quote.slab_discount) {
      const label = slab
        ? `Volume discount (${slab.percent} % from ${credits(slab.min_credits)} credits)`
        : "Volume discount";
      rows.push(row("slab", label, `−${money(quote.slab_discount, c)}`, "good"));
    }
    if ((quote.applied && quote.applied.offer) || quote.offer_discount) {
      rows.push(row("offer", "Offer", `−${money(quote.offer_discount, c)}`, "good"));
    }
    if (quote.applied && quote.applied.coupon) {
      rows.push(row("coupon", `Coupon ${quote.applied.coupon}`, `−${money(quote.coupon_discount, c)}`, "good"));
    }
    if (quote.tax || quote.tax_percent !== "0") {
      const label = `Tax (${quote.tax_percent} %${quote.tax_inclusive ? ", included" : ""})`;
      rows.push(row("tax", label, money(quote.tax, c)));
    }
    rows.push(row("total", "Total", money(quote.total, c), "total"));
    let got = `${credits(quote.credits)} credits`;
    if (quote.bonus_credits) got += ` + ${credits(quote.bonus_credits)} bonus`;
    rows.push(row("credits", "You get", got));
    lines.replaceChildren(...rows);
    status.textContent = "";
    pay.textContent = `Pay ${money(quote.total, c)}`;
    pay.disabled = busy;
  }

  function stale(message) {
    quoted = null;
    lines.replaceChildren();
    status.textContent = message;
    pay.textContent = "Pay";
    pay.disabled = true;
  }

  async function refresh() {
    const wanted = purchase();
    const mine = ++asked;
    if (wanted.error) {
      showError(wanted.error);
      stale("Choose what to buy to see the price.");
      return;
    }
    const key = JSON.stringify(wanted.body);
    status.textContent = "Working out the price…";
    try {
      const quote = await Prepaid.api("POST", "/v1/quotes", wanted.body);
      if (mine !== asked) return;
      Prepaid.clearErrors(form);
      quoted = { key, quote };
      showQuote(quote);
    } catch (error) {
      if (mine !== asked) return;
      showError(error);
      stale("Fix the field marked above to see the price.");
    }
  }

  function changed(event) {
    if (event.target === field("quantity")) {
      const custom = form.querySelector('input[name="item"][value="custom"]');
      if (custom && !custom.checked) custom.checked = true;
    }
    const mine = field("my_coupon");
    if (mine && event.target === mine) {
      if (mine.value) field("coupon").value = mine.value;
    } else if (mine && event.target === field("coupon")) {
      const typed = field("coupon").value.trim().toUpperCase();
      mine.value = Array.from(mine.options).some((option) => option.value === typed) ? typed : "";
    }
    // A change event that changes nothing (a field losing focus as the user clicks Pay) keeps the quote.
    const wanted = purchase();
    if (quoted && !wanted.error && quoted.key === JSON.stringify(wanted.body)) {
      window.clearTimeout(timer);
      return;
    }
    pay.disabled = true;
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, DEBOUNCE_MS);
  }

  form.addEventListener("input", changed);
  form.addEventListener("change", changed);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) return;
    const wanted = purchase();
    if (wanted.error) { showError(wanted.error); return; }
    const purchaseKey = JSON.stringify(wanted.body);
    if (!quoted || quoted.key !== purchaseKey) { refresh(); return; }
    if (!orderKey || orderKey.purchase !== purchaseKey) orderKey = { purchase: purchaseKey, key: newKey() };
    busy = true;
    pay.disabled = true;
    status.textContent = "Opening the payment…";
    try {
      const order = await Prepaid.api("POST", "/v1/orders", wanted.body, { "Idempotency-Key": orderKey.key });
      // The checkout page opens the gateway (or shows the status of an order paid already, such as a free one).
      window.location.assign(order.checkout_url || `/buy/orders/${encodeURIComponent(order.id)}`);
    } catch (error) {
      busy = false;
      // A refusal is stored under its key: another try needs a new one. A network or server error may be
      // retried with the same key (the server answers the first order, never a second).
      if (error instanceof Prepaid.ApiError && error.status >= 400 && error.status < 500 && error.status !== 409) {
        orderKey = null;
      }
      showError(error instanceof Prepaid.ApiError ? error : { message: "The payment could not be opened; try again." });
      status.textContent = "";
      pay.disabled = false;
    }
  });

  refresh();
})();
