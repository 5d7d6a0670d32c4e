// The model page's buy panel: connect, check the network, sign in, check the balance,
// approve (only what the allowance lacks), purchase, wait for confirmations, redeem,
// show the calls held. A purchase whose page closes is settled on the next visit
// (wallet.js); the indexer credits it meanwhile anyway.
"use strict";

(function () {
  const BALANCE_OF = "0x70a08231";
  const ALLOWANCE = "0xdd62ed3e";

  document.addEventListener("DOMContentLoaded", function () {
    const panel = document.getElementById("buy");
    if (!panel) return;
    const d = panel.dataset;
    const price = BigInt(d.price);
    const calls = document.getElementById("calls");
    const total = document.getElementById("total");
    const button = document.getElementById("buy-button");
    const message = document.getElementById("buy-message");
    const steps = document.getElementById("steps");

    function count() {
      const n = Number(calls.value);
      return Number.isInteger(n) && n >= 1 && n <= 1000000 ? n : null;
    }
    function showTotal() {
      const n = count();
      total.textContent = n ? MM.units(price * BigInt(n), d.decimals, d.symbol) : "—";
    }
    calls.addEventListener("input", showTotal);
    showTotal();

    function step(name, state, detail) {
      for (const li of steps.querySelectorAll("li")) {
        if (li.dataset.step === name) {
          li.className = state;
          li.setAttribute("aria-current", state === "active" ? "step" : "false");
          const base = li.dataset.label || li.textContent;
          li.dataset.label = base;
          li.textContent = detail ? base + " — " + detail : base;
        }
      }
    }
    function say(text, kind) {
      message.textContent = text;
      message.className = "message " + (kind || "");
    }

    async function signedInAs(address) {
      // the session must work before any token moves: the redeem after payment needs it
      const who = document.body.dataset.signedIn || "";
      if (who.toLowerCase() === address) {
        try {
          await MM.api("GET", "/api/v1/credits");
          return;
        } catch (err) {
          if (err.status !== 401) throw err;
        }
      }
      await MM.signIn(address);
    }

    async function buy(n) {
      let current = "connect";
      const go = function (name, detail) { current = name; step(name, "active", detail); };
      try {
        go("connect");
        const address = await MM.connect();
        step("connect", "done", address.slice(0, 6) + "…" + address.slice(-4));

        go("chain");
        await MM.ensureChain(Number(d.chainId));
        step("chain", "done", "chain " + d.chainId);

        go("signin");
        await signedInAs(address);
        step("signin", "done");

        go("funds");
        const plan = await MM.api("POST", "/api/v1/models/" + d.modelId + "/purchase", { calls: n });
        const cost = BigInt(plan.total);
        const held = await MM.readUint(d.token, BALANCE_OF + MM.word(address));
        if (held < cost) {
          throw new MM.UserError(
            "Not enough tokens: " + n + " calls cost " + MM.units(cost, d.decimals, d.symbol) +
              " and your wallet holds " + MM.units(held, d.decimals, d.symbol) + ". Nothing was spent."
          );
        }
        step("funds", "done", MM.units(cost, d.decimals, d.symbol));

        go("approve");
        const allowed = await MM.readUint(d.token, ALLOWANCE + MM.word(address) + MM.word(d.marketplace));
        if (allowed < cost) {
          const approval = await MM.sendTx(address, plan.approve.to, plan.approve.data);
          step("approve", "active", "waiting for the approval to be mined");
          const receipt = await MM.waitReceipt(approval);
          if (receipt.status !== "0x1") {
            throw new MM.UserError("The approval reverted on-chain (tx " + approval + "). Nothing was spent.");
          }
          step("approve", "done");
        } else {
          step("approve", "done", "already approved");
        }

        go("purchase");
        let tx;
        try {
          tx = await MM.sendTx(address, plan.purchase.to, plan.purchase.data);
        } catch (err) {
          if (err && (err.code === 3 || /revert/i.test(err.message || ""))) {
            throw new MM.UserError(
              "The contract refused the purchase (" + (err.message || "reverted") + "). No tokens moved."
            );
          }
          throw err;
        }
        MM.remember({ tx: tx, model: d.modelId, buyer: address, chain: d.chainId });
        step("purchase", "active", "tx " + tx.slice(0, 10) + "… waiting to be mined");
        const receipt = await MM.waitReceipt(tx);
        if (receipt.status !== "0x1") {
          MM.forget(tx);
          throw new MM.UserError(
            "The purchase reverted on-chain (tx " + tx + "). No tokens moved and no calls were credited." +
              " The price may have changed meanwhile: reload the page to see it."
          );
        }
        step("purchase", "done", "tx " + tx.slice(0, 10) + "…");

        go("confirm");
        const wanted = Number(d.confirmations);
        await MM.waitConfirmations(receipt, wanted, function (have, need) {
          step("confirm", "active", have + " of " + need);
        });
        step("confirm", "done", wanted + " of " + wanted);

        go("credit");
        let credited = false;
        for (let i = 0; i < 30 && !credited; i++) {
          try {
            await MM.redeem(tx);
            credited = true;
          } catch (err) {
            if (err.apiError === "receipt_already_redeemed") {
              credited = true; // the indexer was first
            } else if (err.status === 401) {
              await MM.signIn(address); // the session ended meanwhile
            } else if (err.apiError === "receipt_unconfirmed" || err.apiError === "receipt_not_found") {
              await MM.sleep(1000); // the gateway's node has not seen enough blocks yet
            } else {
              throw err;
            }
          }
        }
        if (!credited) {
          // paid, not yet credited here: the indexer credits it; the next visit says so
          step("credit", "active", "pending");
          say(
            "Paid (tx " + tx + "). Your " + n + " calls are not credited yet: the indexer credits " +
              "them on its own within a few blocks, and this site will tell you on your next visit.",
            "ok"
          );
          return;
        }
        MM.forget(tx);
        step("credit", "done");
        const mine = await MM.api("GET", "/api/v1/credits");
        const row = mine.find(function (c) { return String(c.model_id) === d.modelId; });
        const left = row ? row.remaining : 0;
        document.getElementById("balance").textContent = "You now hold " + left + " calls of this model.";
        document.getElementById("balance").dataset.calls = String(left);
        say("Bought " + n + " calls (tx " + tx + ").", "ok");
      } catch (err) {
        step(current, "failed");
        say(MM.explain(err), "bad");
      }
    }

    document.getElementById("buy-form").addEventListener("submit", async function (event) {
      event.preventDefault();
      const n = count();
      if (!n) {
        say("Choose a whole number of calls, from 1 to 1,000,000.", "bad");
        return;
      }
      if (d.offered !== "yes") {
        say("This model is not for sale.", "bad");
        return;
      }
      say("");
      steps.hidden = false;
      for (const li of steps.querySelectorAll("li")) {
        li.className = "";
        if (li.dataset.label) li.textContent = li.dataset.label;
      }
      button.disabled = true;
      try {
        await buy(n);
      } finally {
        button.disabled = false;
      }
    });
  });
})();
