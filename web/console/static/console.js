// The console's live parts: a manual recharge whose result appears without a reload, and the
// history's new ledger entries. Both poll small JSON endpoints of the same origin.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const balances = () => document.querySelectorAll("[data-balance]");

  function setBalance(text) {
    balances().forEach((el) => { el.textContent = text; });
  }

  function pollRun(runId, out) {
    let tries = 0;
    const tick = async () => {
      tries += 1;
      const res = await fetch(`/payments/recharges/${runId}`, { credentials: "same-origin" });
      if (!res.ok) { out.textContent = "Could not read the recharge's status."; return; }
      const run = await res.json();
      setBalance(run.balance);
      if (run.done) {
        out.className = "recharge-result " + (run.succeeded ? "ok" : "bad");
        out.textContent = run.succeeded
          ? `Recharged ${run.amount}. Your balance is now ${run.balance}.`
          : `The recharge failed: ${run.decline || "the charge did not go through."}`;
        return;
      }
      out.textContent = "Recharge in progress…";
      if (tries < 120) setTimeout(tick, 1000);
    };
    tick();
  }

  const form = document.querySelector("form[data-recharge]");
  if (form) {
    const out = form.querySelector("[data-recharge-result]");
    if (form.dataset.run) pollRun(form.dataset.run, out);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      out.className = "recharge-result";
      out.textContent = "Sending…";
      const res = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { "X-CSRF-Token": csrf },
        credentials: "same-origin",
      });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) {
        out.className = "recharge-result bad";
        out.textContent = body.error || "The recharge could not be started.";
        return;
      }
      pollRun(body.run_id, out);
    });
  }

  const ledger = document.querySelector("table[data-live-ledger]");
  if (ledger) {
    let after = Number(ledger.dataset.after || 0);
    const body = ledger.querySelector("tbody");
    const tick = async () => {
      const res = await fetch(`/history/entries?after=${after}`, { credentials: "same-origin" });
      if (res.ok) {
        const page = await res.json();
        setBalance(page.balance);
        for (const e of page.entries) {
          const empty = body.querySelector("tr.empty");
          if (empty) empty.remove();
          const row = document.createElement("tr");
          row.className = "fresh";
          const [day, time] = e.date.split(" ");
          const when = document.createElement("td");
          when.className = "when";
          const clock = document.createElement("span");
          clock.textContent = time;
          when.append(day + " ", clock);
          row.appendChild(when);
          const cells = [e.kind, (e.credit ? "+" : "") + e.amount, e.balance_after];
          cells.forEach((text, i) => {
            const td = document.createElement("td");
            td.textContent = text;
            if (i >= 1) td.className = "num" + (i === 1 && e.credit ? " credit" : "");
            row.appendChild(td);
          });
          body.insertBefore(row, body.firstChild);
          after = Math.max(after, e.id);
        }
      }
      setTimeout(tick, 2000);
    };
    setTimeout(tick, 2000);
  }

  // PAYMENT_GATEWAY=stripe: Stripe.js Elements collects the card and confirms a SetupIntent
  // with Stripe; only the SetupIntent's id comes back to us.
  const stripeForm = document.getElementById("stripe-card-form");
  if (stripeForm && window.Stripe) {
    const stripe = window.Stripe(stripeForm.dataset.stripeKey);
    const card = stripe.elements().create("card");
    card.mount("#card-element");
    const error = stripeForm.querySelector("[data-card-error]");
    const button = stripeForm.querySelector("button[type=submit]");
    stripeForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      error.textContent = "";
      try {
        const res = await fetch("/billing/card/setup", {
          method: "POST",
          headers: { "X-CSRF-Token": csrf },
          credentials: "same-origin",
        });
        const body = await res.json();
        if (!res.ok) throw new Error(body.error || "The card could not be added.");
        const result = await stripe.confirmCardSetup(body.client_secret, {
          payment_method: { card },
        });
        if (result.error) throw new Error(result.error.message || "The card was declined.");
        stripeForm.elements.setup_intent.value = result.setupIntent.id;
        stripeForm.submit();
      } catch (err) {
        error.textContent = err.message;
        button.disabled = false;
      }
    });
  }

  // PAYMENT_GATEWAY=stripe: a recharge that failed with authentication_required is confirmed
  // on-session. The server hands over the failed charge's PaymentIntent (recording first that
  // the confirmation started), Stripe.js runs the bank's step, then the form asks the server to
  // settle: the server asks Stripe what happened, never this page.
  const authForm = document.getElementById("stripe-authenticate-form");
  if (authForm && window.Stripe) {
    const stripe = window.Stripe(authForm.dataset.stripeKey);
    const error = document.querySelector("[data-authenticate-error]");
    const button = authForm.querySelector("button[type=submit]");
    authForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      error.textContent = "";
      try {
        const res = await fetch("/billing/authenticate/start", {
          method: "POST",
          headers: { "X-CSRF-Token": csrf },
          credentials: "same-origin",
        });
        const body = await res.json().catch(() => ({}));
        if (!res.ok) throw new Error(body.error || "The payment could not be started.");
        if (body.client_secret) {
          const data = body.payment_method ? { payment_method: body.payment_method } : {};
          const result = await stripe.confirmCardPayment(body.client_secret, data);
          if (result.error) {
            throw new Error(result.error.message || "Your bank did not confirm the payment.");
          }
        }
        authForm.submit();
      } catch (err) {
        error.textContent = err.message;
        button.disabled = false;
      }
    });
  }

  // Card number in groups of four as it is typed (display only; the server strips spaces).
  const number = document.getElementById("card_number");
  if (number) {
    number.addEventListener("input", () => {
      const digits = number.value.replace(/\D/g, "").slice(0, 19);
      number.value = digits.replace(/(.{4})/g, "$1 ").trim();
    });
  }
})();
