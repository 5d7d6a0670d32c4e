// My account: sign in from the page, create a key (shown once), revoke a key.
"use strict";

(function () {
  async function revokeKey(button) {
    try {
      await MM.api("DELETE", "/api/v1/keys/" + encodeURIComponent(button.dataset.keyId));
      window.location.reload();
    } catch (err) {
      MM.notice(MM.explain(err));
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const signIn = document.getElementById("account-sign-in");
    if (signIn) {
      signIn.addEventListener("click", async function () {
        try {
          const address = await MM.connect();
          await MM.signIn(address);
          window.location.reload();
        } catch (err) {
          MM.notice(MM.explain(err));
        }
      });
    }
    const form = document.getElementById("new-key");
    if (form) {
      form.addEventListener("submit", async function (event) {
        event.preventDefault();
        try {
          const made = await MM.api("POST", "/api/v1/keys", { name: document.getElementById("key-name").value });
          document.getElementById("new-key-text").textContent = made.api_key;
          document.getElementById("new-key-shown").hidden = false;
          const row = document.createElement("tr");
          row.dataset.keyId = made.key_id;
          const id = document.createElement("code");
          id.textContent = made.key_id;
          const revoke = document.createElement("button");
          revoke.type = "button";
          revoke.className = "revoke";
          revoke.dataset.keyId = made.key_id;
          revoke.textContent = "Revoke";
          revoke.setAttribute("aria-label", "Revoke key " + made.key_id);
          revoke.addEventListener("click", function () { revokeKey(revoke); });
          for (const content of [id, document.getElementById("key-name").value, "just now", "live", revoke]) {
            const cell = document.createElement("td");
            cell.append(content);
            row.appendChild(cell);
          }
          document.querySelector("#keys tbody").appendChild(row);
        } catch (err) {
          MM.notice(MM.explain(err));
        }
      });
    }
    for (const button of document.querySelectorAll("button.revoke")) {
      button.addEventListener("click", function () { revokeKey(button); });
    }
  });
})();
