// What every page's script shares: calls to the /v1 API with the session cookie and the CSRF header, errors
// shown next to the form field they name, and amounts formatted for people. No framework, no CDN.
"use strict";

const Prepaid = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || `The server answered ${status}.`);
      this.status = status;
      this.code = error.code || "";
      this.param = error.param || null;
      this.body = body;
    }
  }

  // fetch() of a /v1 route as the signed-in user; resolves to the parsed JSON, rejects with an ApiError.
  async function api(method, path, body, headers = {}) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
    init.headers["X-CSRF-Token"] = csrf(); // every cookie-authenticated /v1 call needs it, reads included
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // Clear a form's error messages, then show ``error`` next to its field (or at the top of the form).
  function showError(form, error) {
    clearErrors(form);
    const field = error && error.param ? form.querySelector(`[data-error-for="${CSS.escape(error.param)}"]`) : null;
    const target = field || form.querySelector('[data-error-for="form"]');
    const text = error ? error.message : "";
    if (target) target.textContent = text; else if (text) alert(text);
    if (field) {
      const input = form.querySelector(`[name="${CSS.escape(error.param)}"]`);
      if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
    }
  }

  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach((node) => { node.textContent = ""; });
    form.querySelectorAll('[aria-invalid="true"]').forEach((node) => node.removeAttribute("aria-invalid"));
  }

  // Minor units to a price: 450000, "INR" -> "₹4,500.00". Integers only until the last step.
  function money(minor, currency, exponent = 2) {
    const formatter = new Intl.NumberFormat(undefined, {
      style: "currency", currency, minimumFractionDigits: exponent, maximumFractionDigits: exponent,
    });
    const sign = minor < 0 ? "-" : "";
    const units = BigInt(Math.abs(minor));
    const scale = 10n ** BigInt(exponent);
    return sign + formatter.format(`${units / scale}.${(units % scale).toString().padStart(exponent, "0")}`);
  }

  // Credits in the smallest unit to a figure: 12345 at scale 2 -> "123.45".
  function credits(amount, scale) {
    if (!scale) return amount.toLocaleString();
    const sign = amount < 0 ? "-" : "";
    const units = Math.abs(amount);
    const whole = Math.floor(units / 10 ** scale).toLocaleString();
    return `${sign}${whole}.${String(units % 10 ** scale).padStart(scale, "0")}`;
  }

  return { api, ApiError, showError, clearErrors, money, credits, csrf };
})();
