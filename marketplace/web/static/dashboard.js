// The seller's own dashboard: withdraw, set price, delist, relist, each a transaction
// the seller's wallet signs (the calldata is built here from the selectors the page
// carries; every argument is a 32-byte word).
"use strict";

(function () {
  document.addEventListener("DOMContentLoaded", function () {
    const box = document.getElementById("seller-actions");
    if (!box) return;
    const d = box.dataset;
    const message = document.getElementById("seller-message");

    async function send(label, data) {
      message.textContent = label + ": confirm in your wallet…";
      try {
        const address = await MM.connect();
        if (address !== d.seller.toLowerCase()) {
          throw new MM.UserError("Your wallet's account is " + address + ", not this seller.");
        }
        await MM.ensureChain(Number(d.chainId));
        const tx = await MM.sendTx(address, d.marketplace, data);
        message.textContent = label + ": waiting for tx " + tx.slice(0, 10) + "…";
        const receipt = await MM.waitReceipt(tx);
        if (receipt.status !== "0x1") throw new MM.UserError(label + " reverted on-chain (tx " + tx + ").");
        message.textContent = label + ": done (tx " + tx.slice(0, 10) + "…). The page updates once the indexer sees it.";
        setTimeout(function () { window.location.reload(); }, 1500);
      } catch (err) {
        message.textContent = MM.explain(err);
      }
    }

    const withdraw = document.getElementById("withdraw");
    if (withdraw) {
      withdraw.addEventListener("click", function () {
        send("Withdraw", d.selWithdraw + MM.word(d.token));
      });
    }
    for (const form of document.querySelectorAll("form.set-price")) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        try {
          if (form.dataset.decimals === "") throw new MM.UserError("The token's decimals are unknown right now: try again later.");
          const value = MM.parseUnits(form.querySelector("input").value, form.dataset.decimals);
          send("Set price", d.selSetprice + MM.word(BigInt(form.dataset.modelId)) + MM.word(value));
        } catch (err) {
          message.textContent = MM.explain(err);
        }
      });
    }
    for (const b of document.querySelectorAll("button.delist")) {
      b.addEventListener("click", function () { send("Delist", d.selDelist + MM.word(BigInt(b.dataset.modelId))); });
    }
    for (const b of document.querySelectorAll("button.relist")) {
      b.addEventListener("click", function () { send("Relist", d.selRelist + MM.word(BigInt(b.dataset.modelId))); });
    }
  });
})();
