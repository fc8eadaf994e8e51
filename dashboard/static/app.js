// smallcloud dashboard: confirmations, live status, console, stats, launch checks.
// Plain JS, no framework. Text from the API is only ever set with textContent.
(function () {
  "use strict";

  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const POLL_MS = parseInt(meta("poll-ms"), 10) || 2000;
  const CSRF = meta("csrf-token");
  const liveError = document.getElementById("live-error");

  // Every form with data-confirm asks first (stop, delete, ...).
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  function showError(text) {
    if (!liveError) return;
    liveError.textContent = text || "";
    liveError.hidden = !text;
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (response.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      throw new Error("logged out");
    }
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const error = new Error((body && body.error) || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // Calls `tick` now and every `ms` while the page is visible; stops when it returns false.
  function poll(tick, ms) {
    let stopped = false;
    async function run() {
      if (stopped) return;
      if (!document.hidden) {
        try {
          if ((await tick()) === false) { stopped = true; return; }
          showError("");
        } catch (e) {
          if (e.message !== "logged out") showError("Live update failed: " + e.message);
        }
      }
      setTimeout(run, ms);
    }
    run();
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function statusBadge(status, task) {
    const span = el("span", {});
    span.append(el("span", { class: "status s-" + status.toLowerCase(), text: status }));
    if (task) { span.append(" "); span.append(el("span", { class: "task", text: task + "…" })); }
    return span;
  }

  function actionButton(url, label, confirmText, cls) {
    const form = el("form", { method: "post", action: url, class: "inline" });
    if (confirmText) form.dataset.confirm = confirmText;
    form.append(el("input", { type: "hidden", name: "csrf_token", value: CSRF }));
    form.append(el("button", { type: "submit", class: cls || "", text: label }));
    return form;
  }

  // ---------------------------------------------------------------- instance list
  const table = document.getElementById("instances");
  if (table) {
    const tbody = document.getElementById("instance-rows");
    const empty = document.getElementById("no-instances");
    poll(async () => {
      const data = await getJSON(table.dataset.source);
      const signature = (i) => i.sig;  // what the row shows, age aside (made by the server)
      const render = (i) => {
        // The buttons of what the API accepts now (allowed_actions, from its state machine).
        const actions = el("td", { class: "actions" });
        const allowed = new Set(i.allowed_actions);
        if (allowed.has("stop")) actions.append(actionButton(i.url + "/stop", "Stop", `Stop ${i.name}?`));
        if (allowed.has("reboot")) actions.append(actionButton(i.url + "/reboot", "Reboot", `Reboot ${i.name}?`));
        if (allowed.has("start")) actions.append(actionButton(i.url + "/start", "Start"));
        if (allowed.has("delete")) {
          actions.append(actionButton(i.url + "/delete", "Delete", `Delete ${i.name}? This cannot be undone.`, "danger"));
        }
        return el("tr", { dataset: { id: i.id, sig: signature(i) } },
          el("td", { "data-label": "Name" }, el("a", { href: i.url, text: i.name })),
          el("td", { "data-label": "Status", class: "status-cell" }, statusBadge(i.status, i.task_state)),
          el("td", { "data-label": "Flavor", text: i.flavor }),
          el("td", { "data-label": "Image", text: i.image }),
          el("td", { "data-label": "Host", text: i.host }),
          el("td", { "data-label": "Address", text: i.addresses.join(", ") }),
          el("td", { "data-label": "Age", class: "age", title: i.created_at, text: i.age }),
          actions);
      };
      // Touch only the rows that changed, so a button under the pointer stays put.
      const current = Array.from(tbody.rows);
      const sameOrder = current.length === data.instances.length &&
        current.every((tr, n) => tr.dataset.id === data.instances[n].id);
      if (sameOrder) {
        data.instances.forEach((i, n) => {
          const tr = current[n];
          if (tr.dataset.sig !== signature(i)) tr.replaceWith(render(i));
          else { const age = tr.querySelector("td.age"); if (age) age.textContent = i.age; }
        });
      } else {
        tbody.replaceChildren(...data.instances.map(render));
      }
      if (empty) empty.hidden = data.instances.length > 0;
      return true;
    }, POLL_MS);
  }

  // ---------------------------------------------------------------- one instance
  const detail = document.getElementById("instance");
  if (detail) {
    const statusEl = document.getElementById("live-status");
    const fault = document.getElementById("fault");
    const actionRows = document.getElementById("action-rows");
    const noActions = document.getElementById("no-actions");
    // Show the operations the API accepts now (allowed_actions), hide the others.
    const showAllowed = (allowed) => {
      for (const node of document.querySelectorAll("#operations [data-action]")) {
        node.hidden = !allowed.has(node.dataset.action);
      }
      noActions.hidden = allowed.size > 0;
    };
    poll(async () => {
      let data;
      try {
        data = await getJSON(detail.dataset.source);
      } catch (e) {
        if (e.status === 404) {
          statusEl.replaceChildren(statusBadge("DELETED", ""));
          showAllowed(new Set());
          showError("");
          const gone = document.getElementById("live-error");
          if (gone) { gone.textContent = "This instance no longer exists."; gone.hidden = false; }
          return false;
        }
        throw e;
      }
      const i = data.instance;
      statusEl.replaceChildren(statusBadge(i.status, i.task_state));
      showAllowed(new Set(i.allowed_actions));
      for (const dd of document.querySelectorAll("#props dd[data-key]")) {
        const value = i[dd.dataset.key];
        dd.textContent = Array.isArray(value) ? value.join(", ") : (value === undefined ? "" : String(value));
      }
      fault.textContent = i.fault;
      fault.hidden = !i.fault;
      actionRows.replaceChildren(...data.actions.map((a) => el("tr", {},
        el("td", { "data-label": "Action", text: a.action }), el("td", { "data-label": "User", text: a.user }),
        el("td", { "data-label": "Started", text: a.start }), el("td", { "data-label": "Finished", text: a.end }),
        el("td", { "data-label": "Result", class: "r-" + a.result, text: a.result }),
        el("td", { "data-label": "Error", text: a.error }))));
      return true;
    }, POLL_MS);

    const consoleEl = document.getElementById("console");
    const consoleNote = document.getElementById("console-note");
    poll(async () => {
      const data = await getJSON(detail.dataset.console);
      const atBottom = consoleEl.scrollTop + consoleEl.clientHeight >= consoleEl.scrollHeight - 8;
      if (consoleEl.textContent !== data.output) {
        consoleEl.textContent = data.output;
        if (atBottom) consoleEl.scrollTop = consoleEl.scrollHeight;
      }
      consoleNote.textContent = data.note || "";
      return true;
    }, POLL_MS);

    const statsEl = document.getElementById("stats");
    let previous = null;
    const kib = (v) => v >= 1048576 ? (v / 1048576).toFixed(1) + " GiB" : (v / 1024).toFixed(0) + " MiB";
    const bytes = (v) => v >= 1073741824 ? (v / 1073741824).toFixed(1) + " GiB" : (v / 1048576).toFixed(1) + " MiB";
    poll(async () => {
      const data = await getJSON(detail.dataset.stats);
      const s = data.stats;
      if (!s) {
        statsEl.replaceChildren(el("dt", { text: "—" }), el("dd", { class: "muted", text: data.note || "no stats" }));
        previous = null;
        return true;
      }
      let cpu = "…";
      if (previous && s.sampled_at > previous.sampled_at) {
        const elapsed = s.sampled_at - previous.sampled_at;
        cpu = (100 * (s.cpu_time_ns - previous.cpu_time_ns) / (elapsed * 1e9 * Math.max(s.vcpus, 1))).toFixed(1) + " %";
      }
      previous = s;
      const rows = [["Power", s.power_state], ["vCPUs", s.vcpus], ["CPU", cpu],
        ["Memory (balloon)", kib(s.memory_actual_kb)], ["Guest total", kib(s.memory_available_kb)],
        ["Guest free", kib(s.memory_unused_kb)], ["Host RSS", kib(s.memory_rss_kb)],
        ["Reclaimed", kib(s.memory_reclaimed_kb || 0)],
        ["Disk read", bytes(s.disk_read_bytes)], ["Disk written", bytes(s.disk_write_bytes)]];
      statsEl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
      return true;
    }, Math.max(POLL_MS, 3000));
  }

  // ---------------------------------------------------------------- launch
  const launch = document.getElementById("launch-form");
  if (launch) {
    const out = document.getElementById("launch-check");
    const submit = document.getElementById("launch-submit");
    let seq = 0;
    async function check() {
      const mine = ++seq;
      const params = new URLSearchParams({
        flavor: launch.elements.flavor.value, image: launch.elements.image.value,
        count: launch.elements.count.value || "1" });
      out.replaceChildren(el("span", { class: "muted", text: "checking quota and hosts…" }));
      try {
        const data = await getJSON(launch.dataset.check + "?" + params);
        if (mine !== seq) return;
        if (data.ok) {
          out.replaceChildren(el("p", { class: "ok", text: `Fits your quota; would go to host ${data.placement.host}.` }));
        } else {
          out.replaceChildren(...data.messages.map((m) => el("p", { class: "flash error", text: m })));
        }
        out.dataset.ok = data.ok ? "yes" : "no";
        submit.disabled = !data.ok;
      } catch (e) {
        if (mine === seq) { out.replaceChildren(el("p", { class: "muted", text: "Could not check: " + e.message })); submit.disabled = false; }
      }
    }
    for (const name of ["flavor", "image", "count"]) {
      launch.elements[name].addEventListener("change", check);
      launch.elements[name].addEventListener("input", check);
    }
    check();
  }
})();
