// ModelMarket storefront: the wallet (any EIP-1193 provider at window.ethereum), Sign-In
// with Ethereum, and calls to our own API with the session cookie and CSRF token.
// Plain script, no build step; exposes window.MM for the page scripts.
"use strict";

(function () {
  const STEP_ERRORS = {
    4001: "You rejected the request in your wallet. Nothing was sent and nothing was spent.",
    4100: "Your wallet has not authorised this site. Connect it and try again.",
    4900: "Your wallet is disconnected from the network.",
    4901: "Your wallet is not connected to this network.",
  };

  class UserError extends Error {}

  function provider() {
    if (!window.ethereum || typeof window.ethereum.request !== "function") {
      throw new UserError(
        "No Ethereum wallet found in this browser: install one (any EIP-1193 wallet) to buy or sign in."
      );
    }
    return window.ethereum;
  }

  function explain(err) {
    if (err instanceof UserError) return err.message;
    if (err && STEP_ERRORS[err.code]) return STEP_ERRORS[err.code];
    if (err && err.apiError) return err.message;
    const text = (err && err.message) || String(err);
    return "The wallet reported an error: " + text;
  }

  async function rpc(method, params) {
    return provider().request({ method: method, params: params || [] });
  }

  async function connect() {
    const accounts = await rpc("eth_requestAccounts");
    if (!accounts || !accounts.length) throw new UserError("Your wallet shared no account.");
    return accounts[0].toLowerCase();
  }

  async function ensureChain(wanted) {
    const current = parseInt(await rpc("eth_chainId"), 16);
    if (current === wanted) return;
    try {
      await rpc("wallet_switchEthereumChain", [{ chainId: "0x" + wanted.toString(16) }]);
    } catch (err) {
      throw new UserError(
        "Your wallet is on chain " + current + "; this market runs on chain " + wanted +
          ". Switch networks in your wallet and try again. Nothing was spent."
      );
    }
    const now = parseInt(await rpc("eth_chainId"), 16);
    if (now !== wanted) {
      throw new UserError("Your wallet stayed on chain " + now + "; this market runs on chain " + wanted + ".");
    }
  }

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  async function api(method, path, body) {
    const init = { method: method, headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      const err = new Error((data && data.message) || "the server answered " + resp.status);
      err.apiError = (data && data.error) || "http_" + resp.status;
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  async function signIn(address) {
    const made = await api("POST", "/session/message", { address: address });
    const signature = await rpc("personal_sign", [hexUtf8(made.message), address]);
    const done = await api("POST", "/session", { message: made.message, signature: signature });
    const meta = document.querySelector('meta[name="csrf-token"]');
    if (meta && done.csrf_token) meta.setAttribute("content", done.csrf_token);
    showSignedIn(done.address);
    return done.address;
  }

  function showSignedIn(address) {
    // the header, as the server renders it for a signed-in visitor
    document.body.dataset.signedIn = address.toLowerCase();
    const who = document.getElementById("who");
    if (!who) return;
    who.textContent = "";
    const span = document.createElement("span");
    span.append("Signed in as ");
    const code = document.createElement("code");
    code.title = address;
    code.textContent = address.slice(0, 6) + "…" + address.slice(-4);
    span.appendChild(code);
    const out = document.createElement("button");
    out.type = "button";
    out.id = "sign-out";
    out.className = "link";
    out.textContent = "Sign out";
    out.addEventListener("click", signOut);
    who.append(span, " ", out);
  }

  function hexUtf8(text) {
    const bytes = new TextEncoder().encode(text);
    let out = "0x";
    for (const b of bytes) out += b.toString(16).padStart(2, "0");
    return out;
  }

  function word(value) {
    // one 32-byte ABI word: a BigInt, or an address
    if (typeof value === "string") return value.toLowerCase().replace(/^0x/, "").padStart(64, "0");
    return BigInt(value).toString(16).padStart(64, "0");
  }

  async function readUint(to, data) {
    const out = await rpc("eth_call", [{ to: to, data: data }, "latest"]);
    return BigInt(out && out !== "0x" ? out : "0x0");
  }

  async function sendTx(from, to, data) {
    return rpc("eth_sendTransaction", [{ from: from, to: to, data: data }]);
  }

  async function waitReceipt(hash, onTick) {
    for (let i = 0; i < 600; i++) {
      const receipt = await rpc("eth_getTransactionReceipt", [hash]);
      if (receipt) return receipt;
      if (onTick) onTick(i);
      await sleep(1000);
    }
    throw new UserError("The transaction " + hash + " was not mined within 10 minutes.");
  }

  async function waitConfirmations(receipt, wanted, onProgress) {
    const mined = parseInt(receipt.blockNumber, 16);
    for (let i = 0; i < 3600; i++) {
      // as the gateway counts them: blocks on top of the one that holds the tx
      const head = parseInt(await rpc("eth_blockNumber"), 16);
      const have = head - mined;
      if (onProgress) onProgress(Math.min(have, wanted), wanted);
      if (have >= wanted) return;
      await sleep(1000);
    }
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  function units(amount, decimals, symbol) {
    if (decimals === "" || decimals === undefined || decimals === null) return amount.toString() + " units";
    const d = BigInt(decimals);
    const base = 10n ** d;
    const whole = amount / base;
    let frac = (amount % base).toString().padStart(Number(d), "0").replace(/0+$/, "");
    return whole.toString() + (frac ? "." + frac : "") + " " + symbol;
  }

  function parseUnits(text, decimals) {
    const t = String(text).trim();
    if (!/^\d+(\.\d+)?$/.test(t)) throw new UserError("Write the price as a number, like 0.02.");
    const [whole, frac = ""] = t.split(".");
    if (frac.length > Number(decimals)) throw new UserError("The token has only " + decimals + " decimals.");
    const value = BigInt(whole) * 10n ** BigInt(decimals) + BigInt(frac.padEnd(Number(decimals), "0") || "0");
    if (value <= 0n) throw new UserError("The price must be above 0.");
    return value;
  }

  function notice(text) {
    const box = document.getElementById("notice");
    if (!box) return;
    box.textContent = text;
    box.hidden = !text;
  }

  // pending purchases survive a closed page; the next visit settles them
  const PENDING = "modelmarket.pending";
  function pending() {
    try { return JSON.parse(localStorage.getItem(PENDING) || "[]"); } catch (e) { return []; }
  }
  function remember(entry) {
    const all = pending().filter(function (p) { return p.tx !== entry.tx; });
    entry.at = Date.now();
    all.push(entry);
    localStorage.setItem(PENDING, JSON.stringify(all));
  }
  function forget(tx) {
    localStorage.setItem(PENDING, JSON.stringify(pending().filter(function (p) { return p.tx !== tx; })));
  }

  async function redeem(tx) {
    return api("POST", "/api/v1/receipts", { tx_hash: tx });
  }

  async function settlePending() {
    const who = (document.body.dataset.signedIn || "").toLowerCase();
    if (!who) return; // only when signed in, and only this buyer's purchases
    const week = 7 * 24 * 3600 * 1000;
    for (const p of pending()) {
      if (p.at && Date.now() - p.at > week) {
        forget(p.tx); // long credited by the indexer, or never mined
        continue;
      }
      if ((p.buyer || "").toLowerCase() !== who) continue;
      try {
        const done = await redeem(p.tx);
        const calls = done.credited.reduce(function (n, c) { return n + c.calls; }, 0);
        notice("Your earlier purchase (tx " + p.tx + ") is credited: " + calls + " calls.");
        forget(p.tx);
      } catch (err) {
        if (err.apiError === "receipt_already_redeemed") {
          notice("Your earlier purchase (tx " + p.tx + ") was credited while you were away.");
          forget(p.tx);
        } else if (err.apiError === "receipt_unconfirmed" || err.apiError === "receipt_not_found") {
          notice("Your earlier purchase (tx " + p.tx + ") is still confirming; its calls will be credited on their own.");
        } else if (err.apiError === "receipt_reverted") {
          notice("Your earlier purchase (tx " + p.tx + ") reverted: no tokens moved.");
          forget(p.tx);
        } else if (err.status === 401) {
          return;
        } else {
          notice("Your earlier purchase (tx " + p.tx + "): " + err.message);
        }
      }
    }
  }

  function wireSession() {
    const inButton = document.getElementById("sign-in");
    if (inButton) {
      inButton.addEventListener("click", async function () {
        try {
          const address = await connect();
          await signIn(address);
          window.location.reload();
        } catch (err) {
          notice(explain(err));
        }
      });
    }
    const outButton = document.getElementById("sign-out");
    if (outButton) outButton.addEventListener("click", signOut);
  }

  async function signOut() {
    try {
      await api("POST", "/session/end");
    } finally {
      window.location.reload();
    }
  }

  window.MM = {
    UserError: UserError, explain: explain, rpc: rpc, connect: connect, ensureChain: ensureChain,
    api: api, signIn: signIn, word: word, readUint: readUint, sendTx: sendTx,
    waitReceipt: waitReceipt, waitConfirmations: waitConfirmations, units: units,
    parseUnits: parseUnits, notice: notice, remember: remember, forget: forget, redeem: redeem,
    sleep: sleep,
  };

  document.addEventListener("DOMContentLoaded", function () {
    wireSession();
    settlePending();
  });
})();
