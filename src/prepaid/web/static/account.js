// The account page's live part: the wallets' figures follow the user's own events over the WebSocket
// /v1/stream (the session cookie authenticates it; the server checks the page's Origin). A balance.updated
// event updates balance, held, available and owed at once, then the wallet is read again (GET /v1/wallets/{id})
// for its paid and promotional split. A dropped connection is opened again after 1 s, 2 s, 4 s ... at most 30 s,
// and the wallets are read again then, for what happened meanwhile. Data is written with textContent only.
"use strict";

(() => {
  const section = document.getElementById("wallets");
  if (!section || !("WebSocket" in window)) return;
  const scale = Number(section.dataset.creditScale || "0");
  const live = document.getElementById("live");
  const FIRST_DELAY = 1000;
  const MAX_DELAY = 30000;
  let delay = FIRST_DELAY;
  let connectedOnce = false;

  // Credits in the smallest unit, shown as the server's ``credits`` filter shows them: thousands separated by
  // commas, the fraction without trailing zeros (1500000 at scale 6 -> "1.5"). Integers only.
  function credits(amount) {
    const sign = amount < 0 ? "-" : "";
    const units = Math.abs(Math.trunc(amount));
    const base = 10 ** scale;
    const rest = units % base;  // exact for integers below 2^53; a float division could round the whole part up
    const whole = String((units - rest) / base).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    if (!scale) return sign + whole;
    const fraction = String(rest).padStart(scale, "0").replace(/0+$/, "");
    return sign + whole + (fraction ? "." + fraction : "");
  }

  function setFigure(card, name, value) {
    if (typeof value !== "number") return;
    const node = card.querySelector(`[data-figure="${name}"]`);
    if (node && node.textContent !== credits(value)) node.textContent = credits(value);
  }

  function cardOf(walletId) {
    return Array.from(document.querySelectorAll("[data-wallet]")).find((node) => node.dataset.wallet === walletId);
  }

  function showWallet(wallet) {
    const card = cardOf(wallet.id || wallet.wallet_id);
    if (!card) return;
    for (const name of ["balance", "held", "available", "debt", "paid", "promotional"]) setFigure(card, name, wallet[name]);
    if (typeof wallet.refund === "number" && typeof wallet.adjustment === "number") {
      setFigure(card, "other", wallet.refund + wallet.adjustment);
    }
  }

  // Every cookie call to /v1 carries the CSRF header, reads included (the server checks it on all of them).
  const get = (path) => Prepaid.api("GET", path);

  function status(text) {
    if (live) live.textContent = text;
  }

  async function reread(walletId) {
    try {
      showWallet(await get(`/v1/wallets/${encodeURIComponent(walletId)}`));
    } catch (_) { /* the event's own figures stay shown */ }
  }

  async function rereadAll() {
    try {
      const page = await get("/v1/wallets?limit=100");
      (page.data || []).forEach(showWallet);
    } catch (_) { /* shown as they were */ }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/v1/stream`);
    socket.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (_) { return; }
      if (message.type === "stream.ready") {
        delay = FIRST_DELAY;
        section.dataset.live = "connected";
        status("Live: balances update as they change.");
        if (connectedOnce) rereadAll();  // what changed while the connection was down
        connectedOnce = true;
      } else if (message.type === "balance.updated" && message.data) {
        showWallet(message.data);
        reread(message.data.wallet_id);
      }
    });
    socket.addEventListener("close", () => {
      section.dataset.live = "reconnecting";
      status(`Reconnecting in ${Math.round(delay / 1000)} s…`);
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, MAX_DELAY);
    });
  }

  connect();
})();
