// Loopdeck dashboard: live updates without reloads, the confirm-and-send actions, the start
// form and inline artifacts. Hand-written, no dependencies; the pages work (read-only) without it.
//
// Live data comes from two places: the page's own URL answers its live regions as JSON when
// asked with `X-Loopdeck-Live: 1` (the server renders them, the script morphs them in so
// nothing flickers and open <details> stay open), and a run's timeline is appended from the
// events API: a Server-Sent Events stream when it works, polling with the events cursor when
// it does not (a proxy that buffers, a platform that cuts long responses).
"use strict";

(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const body = document.body;
  const ACTIVE = new Set(["queued", "running", "waiting"]);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---- The one place that talks to the server. Authorization goes here, once. -------------
  // With API tokens configured (body[data-auth=token]) pages load with the HttpOnly sign-in
  // cookie, which the API accepts for reads only; every request of the script carries the
  // tab's copy of the token as a Bearer header, so changes work and a forged cross-site
  // request has no credential. A 401 means the token is missing or no longer valid: sign in.
  const TOKEN_KEY = "loopdeck.token";
  const Api = {
    token() {
      try {
        return sessionStorage.getItem(TOKEN_KEY) || "";
      } catch (_) {
        return "";
      }
    },
    remember(token) {
      try {
        sessionStorage.setItem(TOKEN_KEY, token);
      } catch (_) {
        /* storage refused (private mode): changes will ask to sign in again */
      }
    },
    forget() {
      try {
        sessionStorage.removeItem(TOKEN_KEY);
      } catch (_) {
        /* nothing stored */
      }
    },
    needsToken: () => body.dataset.auth === "token",
    signIn(why) {
      if (Api.leaving) return;
      Api.leaving = true;
      const next = location.pathname + location.search;
      const query = new URLSearchParams({ next });
      if (why) query.set("why", why);
      location.assign(`/signin?${query}`);
    },
    async fetch(url, options = {}) {
      const { signInOn401 = true, ...rest } = options;
      const headers = new Headers(rest.headers || {});
      const token = Api.token();
      if (token) headers.set("Authorization", `Bearer ${token}`);
      const resp = await fetch(url, { ...rest, headers, credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401 && signInOn401 && Api.needsToken()) {
        const change = !["GET", "HEAD"].includes((rest.method || "GET").toUpperCase());
        if (token) Api.forget();
        Api.signIn(token || !change ? "expired" : "tab");
      }
      return resp;
    },
    async json(url, options = {}) {
      const headers = { Accept: "application/json", ...(options.headers || {}) };
      if (options.body !== undefined) headers["Content-Type"] = "application/json";
      const resp = await Api.fetch(url, { ...options, headers });
      let data = null;
      try {
        data = await resp.json();
      } catch (_) {
        data = null;
      }
      if (!resp.ok) {
        const info = (data && data.error) || {};
        const err = new Error(info.message || `the server answered ${resp.status}`);
        err.status = resp.status;
        err.code = info.code || "http_error";
        err.details = info.details || {};
        throw err;
      }
      return data;
    },
  };

  // ---- Times: the viewer's zone, UTC on hover; ages that tick between refreshes. ------------
  const formats = {
    datetime: new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" }),
    time: new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" }),
  };
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const utcText = (d) =>
    `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.` +
    `${pad(d.getUTCMilliseconds(), 3)} UTC`;

  function localizeTimes(root) {
    for (const t of $$("time[datetime]", root)) {
      const d = new Date(t.dateTime);
      if (Number.isNaN(d.getTime())) continue;
      t.textContent = (formats[t.dataset.fmt] || formats.datetime).format(d);
      t.title = utcText(d);
    }
  }

  function fmtDuration(s) {
    if (s < 10) return `${Math.floor(s)} s`;
    s = Math.round(s);
    if (s < 60) return `${s} s`;
    let m = Math.floor(s / 60);
    s %= 60;
    if (m < 60) return s ? `${m} min ${s} s` : `${m} min`;
    let h = Math.floor(m / 60);
    m %= 60;
    if (h < 48) return m ? `${h} h ${m} min` : `${h} h`;
    const d = Math.floor(h / 24);
    h %= 24;
    return h ? `${d} d ${h} h` : `${d} d`;
  }
  const fmtAgo = (s) => (s < 1 ? "just now" : `${fmtDuration(s)} ago`);

  const ages = new WeakMap(); // element → [age in s when rendered, performance.now() then]
  function stampAges(root) {
    const now = performance.now();
    for (const el of $$(".ago[data-age]", root)) {
      ages.set(el, [parseFloat(el.dataset.age) || 0, now]);
      el.textContent = fmtAgo(parseFloat(el.dataset.age) || 0);
    }
  }
  function tickAges() {
    const now = performance.now();
    for (const el of $$(".ago[data-age]")) {
      let entry = ages.get(el);
      if (!entry || String(entry[0]) !== el.dataset.age) {
        entry = [parseFloat(el.dataset.age) || 0, now];
        ages.set(el, entry);
      }
      const text = fmtAgo(entry[0] + (now - entry[1]) / 1000);
      if (el.textContent !== text) el.textContent = text;
    }
  }

  // ---- Morph: patch the live DOM to match fresh server HTML, touching only what changed. ----
  // Children with ids inside [data-keyed] are matched by id; [data-keep] subtrees belong to
  // the client once rendered (an opened artifact); the `open` state of <details> is the user's.
  function morph(from, to) {
    if (from.nodeType !== to.nodeType || from.nodeName !== to.nodeName) {
      from.replaceWith(to);
      return to;
    }
    if (from.nodeType !== Node.ELEMENT_NODE) {
      if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
      return from;
    }
    if (from.hasAttribute("data-keep") && from.id === to.id) return from;
    for (const { name } of Array.from(from.attributes)) {
      if (name !== "open" && !to.hasAttribute(name)) from.removeAttribute(name);
    }
    for (const { name, value } of Array.from(to.attributes)) {
      if (name !== "open" && from.getAttribute(name) !== value) from.setAttribute(name, value);
    }
    if (to.hasAttribute("data-keyed")) morphKeyed(from, to);
    else morphChildren(from, to);
    return from;
  }
  function morphChildren(from, to) {
    const a = Array.from(from.childNodes);
    const b = Array.from(to.childNodes);
    b.forEach((node, i) => (i < a.length ? morph(a[i], node) : from.appendChild(node)));
    for (let i = b.length; i < a.length; i++) a[i].remove();
  }
  function morphKeyed(from, to) {
    const old = new Map(Array.from(from.children).filter((c) => c.id).map((c) => [c.id, c]));
    const result = Array.from(to.children).map((node) => {
      const match = node.id && old.get(node.id);
      if (!match) return node;
      old.delete(node.id);
      return morph(match, node);
    });
    for (const stale of old.values()) stale.remove();
    for (const node of Array.from(from.childNodes)) {
      if (node.nodeType !== Node.ELEMENT_NODE) node.remove();
    }
    result.forEach((node, i) => {
      if (from.children[i] !== node) from.insertBefore(node, from.children[i] || null);
    });
  }

  function parseHTML(html) {
    const tpl = document.createElement("template");
    tpl.innerHTML = html; // our own server's escaped HTML
    localizeTimes(tpl.content);
    stampAges(tpl.content);
    return tpl.content;
  }

  async function refreshRegions() {
    const data = await Api.json(location.pathname + location.search, {
      headers: { "X-Loopdeck-Live": "1" },
    });
    const fresh = parseHTML(data.html);
    for (const el of Array.from(fresh.children)) {
      const current = el.id && document.getElementById(el.id);
      if (current) morph(current, el);
    }
    tickAges();
    return data.state || {};
  }

  // ---- Status line: only problems are announced. -------------------------------------------
  const liveStatus = $("#live-status");
  let troubled = false;
  function reportTrouble(message) {
    troubled = true;
    liveStatus.textContent = message;
    liveStatus.classList.add("bad");
  }
  function reportOk() {
    if (!troubled) return;
    troubled = false;
    liveStatus.textContent = "Connection restored.";
    liveStatus.classList.remove("bad");
  }

  // ---- Adaptive polling: the server says how long to wait; hidden tabs do not poll. --------
  function poller(tick, firstDelay) {
    let timer = null;
    let failures = 0;
    let running = false;
    async function run() {
      timer = null;
      if (document.hidden) return;
      running = true;
      let next;
      try {
        next = (await tick()) || 30000;
        failures = 0;
        reportOk();
      } catch (err) {
        failures += 1;
        next = Math.min(30000, 2000 * 2 ** Math.min(failures, 4));
        reportTrouble(`Could not refresh (${err.message}); retrying in ${Math.round(next / 1000)} s.`);
      }
      running = false;
      schedule(next);
    }
    function schedule(ms) {
      if (timer) clearTimeout(timer);
      timer = setTimeout(run, ms);
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !timer && !running) run();
    });
    schedule(firstDelay);
    return { now: () => (running ? null : schedule(0)) };
  }

  // ---- Run page: timeline from SSE or the events cursor, regions polled. ---------------------
  function runPage() {
    const runId = body.dataset.runId;
    const list = $("#timeline-list");
    const mode = $("#tl-mode");
    const tplEvent = $("#tpl-event");
    const tplLogs = $("#tpl-logs");
    let after = parseInt(list.dataset.after, 10) || 0;
    let status = body.dataset.status;
    let streaming = false;
    let streamBroken = body.dataset.stream !== "on";
    let refreshTimer = null;

    const atBottom = () => list.scrollHeight - list.scrollTop - list.clientHeight < 8;
    list.scrollTop = list.scrollHeight;

    function eventItem(e) {
      const li = tplEvent.content.firstElementChild.cloneNode(true);
      li.id = `ev-${e.id}`;
      li.classList.add(`ev-${e.type.replace(/\./g, "-")}`);
      const t = $("time", li);
      t.dateTime = e.created_at;
      $(".ev-type", li).textContent = e.type;
      const stage = $(".ev-stage", li);
      if (e.stage) stage.textContent = e.attempt ? `${e.stage} #${e.attempt}` : e.stage;
      else stage.remove();
      $(".ev-msg", li).textContent = e.message || "";
      localizeTimes(li);
      return li;
    }
    function logLine(e) {
      const span = document.createElement("span");
      span.className = "log-line";
      span.id = `ev-${e.id}`;
      span.textContent = e.message || "";
      return [span];
    }
    function setCount(group, n) {
      $(".log-count", group).textContent = String(n);
      $(".log-noun", group).textContent = n === 1 ? "log line" : "log lines";
    }
    function logGroup(e) {
      const li = tplLogs.content.firstElementChild.cloneNode(true);
      li.id = `logs-${e.id}`;
      li.dataset.stage = e.stage || "";
      li.dataset.attempt = e.attempt ? String(e.attempt) : "";
      $(".ev-stage", li).textContent = e.stage ? (e.attempt ? `${e.stage} #${e.attempt}` : e.stage) : "the run";
      $(".log", li).append(...logLine(e));
      setCount(li, 1);
      return li;
    }
    function append(events) {
      if (!events.length) return;
      const stick = atBottom();
      for (const e of events) {
        if (e.id <= after || document.getElementById(`ev-${e.id}`)) continue;
        after = e.id;
        const last = list.lastElementChild;
        if (e.type === "log") {
          const same = last && last.classList.contains("ev-logs") &&
            last.dataset.stage === (e.stage || "") &&
            last.dataset.attempt === (e.attempt ? String(e.attempt) : "");
          if (same) {
            $(".log", last).append(...logLine(e));
            setCount(last, $$(".log-line", last).length);
          } else {
            list.appendChild(logGroup(e));
          }
        } else {
          list.appendChild(eventItem(e));
        }
      }
      list.dataset.after = String(after);
      if (stick) list.scrollTop = list.scrollHeight;
    }
    async function pollEvents() {
      for (;;) {
        const page = await Api.json(`/api/runs/${encodeURIComponent(runId)}/events?after=${after}&limit=500`);
        append(page.events);
        if (page.events.length < 500) return page.run_status;
      }
    }
    function refreshSoon() {
      if (refreshTimer) return;
      refreshTimer = setTimeout(() => {
        refreshTimer = null;
        refreshRegions().then((s) => (status = s.status || status), () => {});
      }, 250);
    }

    // One SSE message at a time out of a fetch() body (EventSource cannot send headers).
    async function* sse(resp, onActivity) {
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      let msg = { event: "message", data: [], id: null };
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          onActivity();
          buf += value;
          for (;;) {
            const m = /\r\n|\r|\n/.exec(buf);
            if (!m || (m[0] === "\r" && m.index === buf.length - 1)) break;
            const line = buf.slice(0, m.index);
            buf = buf.slice(m.index + m[0].length);
            if (line === "") {
              if (msg.data.length) yield { event: msg.event, data: msg.data.join("\n"), id: msg.id };
              msg = { event: "message", data: [], id: null };
            } else if (!line.startsWith(":")) {
              const i = line.indexOf(":");
              const field = i < 0 ? line : line.slice(0, i);
              let val = i < 0 ? "" : line.slice(i + 1);
              if (val.startsWith(" ")) val = val.slice(1);
              if (field === "data") msg.data.push(val);
              else if (field === "event") msg.event = val;
              else if (field === "id") msg.id = val;
            }
          }
        }
      } finally {
        reader.cancel().catch(() => {});
      }
    }

    async function stream() {
      if (streaming || streamBroken) return;
      streaming = true;
      mode.textContent = "live (streaming)";
      let failures = 0;
      while (streaming) {
        const ctrl = new AbortController();
        let watchdog = null;
        // Pings come every 5 s: silence for 15 s means something between us buffers.
        const kick = () => {
          clearTimeout(watchdog);
          watchdog = setTimeout(() => ctrl.abort(), 15000);
        };
        try {
          kick();
          const resp = await Api.fetch(
            `/api/runs/${encodeURIComponent(runId)}/events/stream?after=${after}`,
            { headers: { Accept: "text/event-stream" }, signal: ctrl.signal },
          );
          const type = resp.headers.get("content-type") || "";
          if (!resp.ok || !resp.body || !type.startsWith("text/event-stream")) {
            // The server (or something in front of it) does not stream: poll from now on.
            streamBroken = true;
            break;
          }
          let ended = false;
          for await (const msg of sse(resp, kick)) {
            if (msg.event === "event") {
              append([JSON.parse(msg.data)]);
              refreshSoon();
            } else if (msg.event === "end") {
              ended = true;
              break;
            } else if (msg.event === "error") {
              throw new Error("the stream reported an error");
            }
          }
          failures = 0;
          if (ended) break; // the run finished; the regular refresh takes it from here
        } catch (_) {
          failures += 1;
          if (failures >= 3) {
            streamBroken = true;
            break;
          }
          await sleep(1000 * failures);
        } finally {
          clearTimeout(watchdog);
        }
      }
      streaming = false;
      mode.textContent = streamBroken ? "live (polling)" : "";
      refreshSoon();
    }

    const timer = poller(async () => {
      if (!streaming) {
        const st = await pollEvents();
        if (st) status = st;
      }
      const state = await refreshRegions();
      status = state.status || status;
      if (ACTIVE.has(status)) {
        if (!streaming && !streamBroken) stream();
        if (!streaming) mode.textContent = "live (polling)";
      } else if (!streaming) {
        mode.textContent = "";
      }
      return state.poll_ms;
    }, ACTIVE.has(status) ? 2000 : 30000);

    if (ACTIVE.has(status)) stream();
    // A finished run's page may hold only the first page of a long timeline: fetch the rest.
    // (The stream of an active run replays everything after the cursor by itself.)
    if (!streaming) pollEvents().catch(() => {});
    body.addEventListener("loopdeck:changed", () => timer.now());

    // Artifacts open inline: the rendered view loads the first time a <details> opens.
    async function loadInto(box, url) {
      box.setAttribute("aria-busy", "true");
      try {
        const resp = await Api.fetch(url, { headers: { "X-Loopdeck-Fragment": "1" } });
        const text = await resp.text();
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        box.replaceChildren(parseHTML(text));
      } catch (err) {
        const p = document.createElement("p");
        p.className = "form-error";
        p.textContent = `Could not load it: ${err.message}`;
        box.replaceChildren(p);
      } finally {
        box.removeAttribute("aria-busy");
      }
    }
    document.addEventListener("toggle", (ev) => {
      const d = ev.target;
      if (!(d instanceof HTMLDetailsElement) || !d.open || !d.dataset.src || d.dataset.loaded) return;
      d.dataset.loaded = "1";
      loadInto($(".artifact-body", d), d.dataset.src);
    }, true);
    document.addEventListener("click", (ev) => {
      const a = ev.target.closest && ev.target.closest(".artifact-body a[data-inline]");
      if (!a) return;
      ev.preventDefault();
      loadInto(a.closest(".artifact-body"), a.getAttribute("href"));
    });
  }

  // ---- Actions: one confirm dialog for every button that changes something. ------------------
  function actions() {
    const dlg = $("#confirm");
    if (!dlg) return;
    const form = $("#confirm-form");
    const fieldsBox = $("#confirm-fields");
    const errorBox = $("#confirm-error");
    const previewBox = $("#confirm-preview");
    const yes = $("#confirm-yes");
    let current = null;

    function fieldEl(f, i) {
      const wrap = document.createElement("div");
      wrap.className = f.kind === "checkbox" ? "field check" : "field";
      const id = `cf-${i}`;
      const hintId = `${id}-hint`;
      const errId = `${id}-err`;
      const label = document.createElement(f.kind === "checkboxes" ? "span" : "label");
      label.textContent = f.label + (f.required ? " (required)" : "");
      if (f.kind !== "checkboxes") label.htmlFor = id;
      else label.id = `${id}-label`;
      let input;
      if (f.kind === "hidden") {
        input = document.createElement("input");
        input.type = "hidden";
        input.value = f.value;
        wrap.hidden = true;
      } else if (f.kind === "select") {
        input = document.createElement("select");
        for (const o of f.options) {
          const opt = new Option(o.label, o.value, false, !!o.checked);
          input.append(opt);
        }
      } else if (f.kind === "checkbox") {
        input = document.createElement("input");
        input.type = "checkbox";
        input.checked = f.value === true;
      } else if (f.kind === "checkboxes") {
        input = document.createElement("div");
        input.className = "options";
        input.setAttribute("role", "group");
        input.setAttribute("aria-labelledby", `${id}-label`);
        f.options.forEach((o, j) => {
          const l = document.createElement("label");
          const c = document.createElement("input");
          c.type = "checkbox";
          c.value = o.value;
          c.checked = !!o.checked;
          c.id = `${id}-${j}`;
          l.append(c, document.createTextNode(o.label));
          input.append(l);
        });
      } else {
        input = document.createElement(f.kind === "text" ? "input" : "textarea");
        if (f.kind === "textarea") input.rows = 3;
        if (f.required) input.required = true;
      }
      if (f.kind !== "checkboxes") input.id = id;
      input.dataset.name = f.name;
      input.dataset.kind = f.kind;
      const hint = document.createElement("p");
      hint.className = "hint";
      hint.id = hintId;
      hint.textContent = f.hint || "";
      const err = document.createElement("p");
      err.className = "field-error";
      err.id = errId;
      err.hidden = true;
      input.setAttribute("aria-describedby", `${hintId} ${errId}`);
      if (f.kind === "checkbox") wrap.append(input, label, hint, err);
      else wrap.append(label, input, hint, err);
      return wrap;
    }

    function values() {
      const out = {};
      for (const el of $$("[data-name]", fieldsBox)) {
        const { name, kind } = el.dataset;
        if (kind === "checkbox") out[name] = el.checked;
        else if (kind === "checkboxes") out[name] = $$("input:checked", el).map((c) => c.value);
        else if (el.value.trim() !== "") out[name] = el.value.trim();
      }
      return out;
    }

    function showFieldError(name, message) {
      const el = $(`[data-name="${CSS.escape(name)}"]`, fieldsBox);
      if (!el) return false;
      const err = el.parentElement.querySelector(".field-error");
      err.textContent = message;
      err.hidden = false;
      el.setAttribute("aria-invalid", "true");
      return true;
    }
    function clearErrors() {
      errorBox.hidden = true;
      errorBox.textContent = "";
      for (const e of $$(".field-error", fieldsBox)) e.hidden = true;
      for (const e of $$("[aria-invalid]", fieldsBox)) e.removeAttribute("aria-invalid");
    }

    // What a preview answers, in words (the re-run plan: GET /api/runs/{id}/rerun-plan).
    const PLAN_PARTS = [
      ["rerun", "Will run again", (x) => (x.why && x.why !== "chosen" ? `${x.name} (${x.why})` : x.name)],
      ["reused", "Kept and reused (not run again)", (x) =>
        (x.needed_by && x.needed_by.length ? `${x.name} (read by ${x.needed_by.join(", ")})` : x.name)],
      ["untouched", "Left as they are", (x) => `${x.name} (${x.status})`],
    ];
    let previewSeq = 0;
    async function preview() {
      if (!current.preview) return;
      const seq = ++previewSeq;
      const params = new URLSearchParams();
      const chosen = values();
      for (const f of current.fields) {
        const v = chosen[f.name];
        if (f.kind === "checkboxes") {
          if (f.required && !(v && v.length)) {
            previewBox.hidden = false;
            previewBox.textContent = "Choose at least one task to see what would run again.";
            return;
          }
          (v || []).forEach((x) => params.append(f.name, x));
        }
      }
      previewBox.hidden = false;
      previewBox.textContent = "Working out what would run again…";
      try {
        const plan = await Api.json(`${current.preview}?${params}`);
        if (seq !== previewSeq) return; // a newer choice is being previewed
        previewBox.replaceChildren();
        for (const [key, title, show] of PLAN_PARTS) {
          const items = (plan && plan[key]) || [];
          if (!items.length && key === "untouched") continue;
          const p = document.createElement("p");
          p.className = `plan-${key}`;
          const strong = document.createElement("strong");
          strong.textContent = `${title}: `;
          p.append(strong, document.createTextNode(items.map(show).join(", ") || "none"));
          previewBox.append(p);
        }
      } catch (err) {
        if (seq === previewSeq) previewBox.textContent = `No preview: ${err.message}`;
      }
    }

    document.addEventListener("click", (ev) => {
      const btn = ev.target.closest && ev.target.closest("button[data-action][data-config]");
      if (!btn || btn.disabled) return;
      if (Api.needsToken() && !Api.token()) {
        Api.signIn("tab"); // changes need the token as a header; the cookie only reads
        return;
      }
      current = JSON.parse(btn.dataset.config);
      current.opener = btn;
      $("#confirm-title").textContent = current.title;
      $("#confirm-effect").textContent = current.effect;
      fieldsBox.replaceChildren(...current.fields.map(fieldEl));
      previewBox.hidden = true;
      clearErrors();
      yes.textContent = current.confirm;
      yes.disabled = false;
      yes.classList.toggle("danger", !!current.danger);
      dlg.showModal();
      if (current.preview) preview();
    });
    fieldsBox.addEventListener("change", (ev) => {
      if (current && current.preview && ev.target.closest(".options")) preview();
    });
    $("#confirm-no").addEventListener("click", () => dlg.close());
    dlg.addEventListener("close", () => {
      if (current && current.opener && current.opener.isConnected) current.opener.focus();
    });

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (!current) return;
      clearErrors();
      const payload = values();
      let missing = false;
      for (const f of current.fields) {
        const v = payload[f.name];
        if (f.required && (v === undefined || (Array.isArray(v) && !v.length))) {
          showFieldError(f.name, f.kind === "checkboxes" ? "Choose at least one." : "Required.");
          missing = true;
        }
      }
      if (missing) return;
      yes.disabled = true;
      try {
        // DELETE takes its few parameters (a reason) in the query, everything else a JSON body.
        const del = current.method === "DELETE";
        const query = del ? new URLSearchParams(payload).toString() : "";
        const result = await Api.json(query ? `${current.url}?${query}` : current.url, {
          method: current.method,
          body: del ? undefined : JSON.stringify(payload),
        });
        dlg.close();
        if (current.then === "open" && result && result.id) {
          location.assign(`/runs/${encodeURIComponent(result.id)}`);
          return;
        }
        bodyChanged();
      } catch (err) {
        const field = err.details && err.details.field;
        if (!(field && showFieldError(field, err.message))) {
          errorBox.textContent = `Refused: ${err.message}`;
          errorBox.hidden = false;
        }
      } finally {
        yes.disabled = false;
      }
    });
  }
  const bodyChanged = () => body.dispatchEvent(new CustomEvent("loopdeck:changed"));

  // ---- Start run: a form per workflow, generated server-side from its input schema. ----------
  function startForm() {
    const dlg = $("#start-dialog");
    if (!dlg) return;
    const form = $("#start-form");
    const select = $("#start-workflow");
    const formError = $("#start-error");
    let key = null;
    const newKey = () =>
      (window.crypto && crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);

    function showWorkflow() {
      for (const fs of $$("fieldset[data-workflow]", form)) {
        const on = fs.dataset.workflow === select.value;
        fs.hidden = !on;
        fs.disabled = !on;
      }
    }
    function clearErrors() {
      formError.hidden = true;
      for (const e of $$(".field-error", form)) {
        e.hidden = true;
        e.textContent = "";
      }
      for (const e of $$("[aria-invalid]", form)) e.removeAttribute("aria-invalid");
    }
    function fieldError(path, message) {
      const scope = $(`fieldset[data-workflow="${CSS.escape(select.value)}"]`, form);
      const el = (scope && $(`[data-field="${CSS.escape(path)}"]`, scope)) ||
        $(`[data-field="${CSS.escape(path)}"]:not(fieldset [data-field])`, form);
      if (!el) return false;
      const err = document.getElementById(`${el.id}-err`) || document.getElementById(`err-${path}`);
      if (!err) return false;
      err.textContent = message;
      err.hidden = false;
      el.setAttribute("aria-invalid", "true");
      if (el.closest("details")) el.closest("details").open = true;
      return el;
    }
    function open() {
      if (Api.needsToken() && !Api.token()) {
        Api.signIn("tab");
        return;
      }
      key = newKey();
      showWorkflow();
      clearErrors();
      dlg.showModal();
    }
    $("#start-open").addEventListener("click", open);
    $("#start-cancel").addEventListener("click", () => dlg.close());
    select.addEventListener("change", () => {
      showWorkflow();
      clearErrors();
      key = newKey();
    });

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors();
      const inputs = {};
      let firstBad = null;
      const scope = $(`fieldset[data-workflow="${CSS.escape(select.value)}"]`, form);
      for (const el of scope ? $$("[data-field]", scope) : []) {
        const name = el.name;
        const type = el.dataset.type;
        if (el.type === "checkbox") {
          inputs[name] = el.checked;
        } else if (el.dataset.widget === "select") {
          if (el.value !== "") inputs[name] = JSON.parse(el.value);
        } else if (el.dataset.widget === "json") {
          if (el.value.trim() === "") continue;
          try {
            inputs[name] = JSON.parse(el.value);
          } catch (err) {
            firstBad = firstBad || fieldError(el.dataset.field, `not valid JSON (${err.message})`);
          }
        } else if (type === "integer" || type === "number") {
          if (el.validity && el.validity.badInput) {
            firstBad = firstBad || fieldError(el.dataset.field, `must be a number`);
          } else if (el.value !== "") {
            inputs[name] = Number(el.value);
          }
        } else if (el.value !== "") {
          inputs[name] = el.value;
        }
      }
      if (firstBad) {
        firstBad.focus();
        return;
      }
      const payload = { workflow: select.value, inputs };
      const queue = $("#start-queue").value.trim();
      const priority = $("#start-priority").value.trim();
      if (queue) payload.queue = queue;
      if (priority) payload.priority = Number(priority);
      const submit = $("#start-submit");
      submit.disabled = true;
      try {
        const run = await Api.json("/api/runs", {
          method: "POST",
          body: JSON.stringify(payload),
          headers: { "Idempotency-Key": key },
        });
        location.assign(`/runs/${encodeURIComponent(run.id)}`);
      } catch (err) {
        const problems = (err.details && err.details.problems) ||
          (err.details && err.details.field ? [{ field: err.details.field, message: err.message }] : []);
        let focused = null;
        for (const p of problems) {
          const el = fieldError(p.field, p.message);
          focused = focused || el;
        }
        if (focused) {
          focused.focus();
        } else {
          formError.textContent = `The run was not started: ${err.message}`;
          formError.hidden = false;
        }
        if (err.status === 409) key = newKey();
      } finally {
        submit.disabled = false;
      }
    });
    if (body.dataset.start && !$("#start-open").disabled) {
      select.value = body.dataset.start;
      open();
    }
  }

  // ---- Signing in and out (only with API tokens configured). -------------------------------
  function signinPage() {
    Api.forget(); // being here means this tab is not signed in (or is switching tokens)
    const form = $("#signin-form");
    if (!form) return;
    const input = $("#signin-token");
    const error = $("#signin-error");
    const submit = $("#signin-submit");
    function fail(message) {
      error.textContent = message;
      error.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      input.select();
    }
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) {
        fail("Enter your API token.");
        return;
      }
      submit.disabled = true;
      try {
        // The token goes in the body of a POST, never in a URL. The server validates it and
        // sets the HttpOnly cookie; this tab keeps it to send changes as a Bearer header.
        const resp = await Api.fetch("/signin", {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify({ token, next: body.dataset.next || "/" }),
          signInOn401: false,
        });
        const data = await resp.json().catch(() => ({}));
        if (!resp.ok) {
          fail((data.error && data.error.message) || `the server answered ${resp.status}`);
          return;
        }
        Api.remember(token);
        input.value = "";
        location.replace(data.next || "/");
      } catch (err) {
        fail(`Could not sign in: ${err.message}`);
      } finally {
        submit.disabled = false;
      }
    });
  }
  function signoutForm() {
    const form = $("#signout-form");
    if (form) form.addEventListener("submit", () => Api.forget());
  }

  // ---- List pages: regions refreshed on the server's schedule. -------------------------------
  function listPage() {
    const first = parseInt(body.dataset.pollMs, 10) || 0;
    if (!first) return;
    const timer = poller(async () => (await refreshRegions()).poll_ms, first);
    body.addEventListener("loopdeck:changed", () => timer.now());
  }

  function init() {
    localizeTimes(document);
    stampAges(document);
    setInterval(tickAges, 1000);
    actions();
    signoutForm();
    if (body.dataset.page === "signin") signinPage();
    if (body.dataset.page === "run") runPage();
    else if (body.dataset.page === "runs" || body.dataset.page === "runners") listPage();
    if (body.dataset.page === "runs") startForm();
    window.loopdeck = { Api, ready: true };
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
