// nodemaint operator portal: dialogs, the acknowledgement rule of the
// maintenance dialog, and live updates (Server-Sent Events carrying HTML
// fragments rendered by the server). No framework, no build step.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Dialogs: [data-open=ID] opens, [data-close] closes.
  document.querySelectorAll("[data-open]").forEach((b) =>
    b.addEventListener("click", () => {
      const d = document.getElementById(b.dataset.open);
      if (d) {
        const menu = b.closest("details");
        if (menu) menu.open = false;
        d.showModal();
      }
    })
  );
  document.querySelectorAll("[data-close]").forEach((b) =>
    b.addEventListener("click", () => b.closest("dialog").close())
  );
  document.querySelectorAll("[data-back]").forEach((a) =>
    a.addEventListener("click", (e) => {
      if (history.length > 1) {
        e.preventDefault();
        history.back();
      }
    })
  );

  // Maintenance: the VFW acknowledgement is required for "Stop All" only.
  const form = document.getElementById("maint-form");
  if (form) {
    const sync = () => {
      const mode = form.querySelector("input[name=mode]:checked");
      form.querySelectorAll("[data-required-for]").forEach((el) => {
        el.required = !!mode && mode.value === el.dataset.requiredFor;
      });
      form.dataset.mode = mode ? mode.value : "";
    };
    form.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", sync));
    sync();
  }

  // Submitting a form disables its buttons, so a double click sends one request.
  document.querySelectorAll("form[method=post]").forEach((f) =>
    f.addEventListener("submit", () => {
      setTimeout(() => f.querySelectorAll("button[type=submit]").forEach((b) => (b.disabled = true)), 0);
    })
  );

  // Live updates.
  const root = document.getElementById("live-root");
  if (!root || !root.dataset.live) return;
  const badge = document.getElementById("live");
  const state = (text, cls) => {
    if (badge) {
      badge.textContent = text;
      badge.className = "live " + cls;
    }
  };
  let reloadPending = false;
  const anyDialogOpen = () => !!document.querySelector("dialog[open]");
  document.addEventListener("close", () => {
    if (reloadPending && !anyDialogOpen()) location.reload();
  }, true);

  const es = new EventSource(root.dataset.live);
  es.onopen = () => state("live", "on");
  es.onerror = () => state(es.readyState === EventSource.CLOSED ? "ended" : "reconnecting…", "off");
  es.addEventListener("fragments", (e) => {
    const d = JSON.parse(e.data);
    for (const [id, html] of Object.entries(d.fragments || {})) {
      const el = document.getElementById(id);
      if (el && el.innerHTML !== html) el.innerHTML = html;
    }
    // A Stack Details page: a new status or job changes the actions; reload
    // (after the operator closes an open dialog).
    if (d.key !== undefined && root.dataset.key !== undefined && d.key !== root.dataset.key) {
      if (anyDialogOpen()) reloadPending = true;
      else location.reload();
    }
    root.dataset.updated = String(Date.now());
  });
  es.addEventListener("end", () => {
    es.close();
    state("ended", "off");
    root.dataset.ended = "true";
    // Abort is for running jobs only.
    document.getElementById("abort-form")?.remove();
  });
  es.addEventListener("gone", () => {
    es.close();
    state("gone", "off");
  });
});
