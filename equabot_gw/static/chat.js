// equabot chat page: speaks the gateway's WebSocket control protocol (v3)
// from the page's own origin. No build step, no third-party code.
//
// Safety rules this file keeps:
// - model and server text only ever reaches the page as text nodes or
//   attribute values checked here, never parsed as HTML;
// - the token lives in sessionStorage and in the `connect` frame, nowhere
//   else (not in the URL, not in any log);
// - every wait has a deadline and every retry a growing delay.
"use strict";
(() => {
  const PROTOCOL = 3;
  const CHALLENGE_WAIT_MS = 750;      // the original's clients wait this long for connect.challenge
  const REQUEST_TIMEOUT_MS = 30000;
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
  const HISTORY_LIMIT = 200;
  const MAX_JSON_CHARS = 20000;       // a tool block shows at most this much
  const TOKEN_KEY = "equabot.token";
  const SESSION_KEY = "equabot.session";
  const VERSION = "0.1.0";

  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $("state"), auth: $("auth"), token: $("token"), authError: $("auth-error"),
    agent: $("agent"), newChat: $("new"), sessions: $("sessions"), log: $("log"),
    composer: $("composer"), msg: $("msg"), send: $("send"), stop: $("stop"),
  };

  const store = {
    get(key) { try { return sessionStorage.getItem(key) || ""; } catch (e) { return ""; } },
    set(key, value) { try { sessionStorage.setItem(key, value); } catch (e) { /* storage off */ } },
  };

  function h(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ---- markdown: a small subset, built as DOM nodes --------------------------

  // A line's rest is taken with [^] (anything), never "." before "$": "." stops at
  // U+2028, and the matcher would then try every split of the whitespace before it
  // (quadratic in the line); a heading's closing #s are cut by headingText, not by
  // the pattern (a lazy text, \s* #* \s* $ is cubic: 8,000 spaces held the page for minutes).
  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
  const HEADING = /^ {0,3}(#{1,6})\s+([^]*)$/;
  const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  const ITEM = /^ {0,3}([-*+]|\d{1,9}[.)])\s+([^]*)$/;
  const QUOTE = /^ {0,3}>\s?([^]*)$/;

  // A heading's text without its closing sequence: trailing #s preceded by a space (or alone).
  function headingText(raw) {
    const text = raw.trimEnd();
    let start = text.length;
    while (start > 0 && text[start - 1] === "#") start--;
    if (start === text.length || (start > 0 && !/\s/.test(text[start - 1]))) return text;
    return text.slice(0, start).trimEnd();
  }

  // Spans stay on one line and have bounded length, so a hostile reply
  // cannot make the matcher backtrack over the whole text.
  const INLINE = new RegExp([
    "(`{1,3})([^`\\n]{1,1000}?)\\1(?!`)",                         // 1, 2 code
    "\\*\\*(?=\\S)([^\\n]{0,300}?\\S)\\*\\*",                       // 3 strong
    "(?<![\\w])__(?=\\S)([^\\n]{0,300}?\\S)__(?![\\w])",           // 4 strong
    "\\*(?=[^\\s*])([^*\\n]{0,300}?[^\\s*])?\\*",                   // 5 em (may be one char)
    "(?<![\\w])_(?=[^\\s_])([^_\\n]{0,300}?[^\\s_])?_(?![\\w])",  // 6 em
    "\\[([^\\]\\n]{1,300})\\]\\(\\s*<?([^\\s()<>]{1,2000})>?\\s*\\)", // 7, 8 link
    "<((?:https?|mailto):[^\\s<>]{1,2000})>",                      // 9 autolink
    "\\b(https?:\\/\\/[^\\s<>]{0,2000}[^\\s<>.,;:!?'\")\\]])",     // 10 bare URL
  ].join("|"), "g");

  function safeHref(raw) {
    let url;
    try { url = new URL(raw); } catch (e) { return null; }
    return ["http:", "https:", "mailto:"].includes(url.protocol) ? url.href : null;
  }

  // A link whose target is not http, https or mailto stays its source text.
  function link(label, raw, source) {
    const href = safeHref(raw);
    if (href === null) return document.createTextNode(source);
    const a = h("a", "", label);
    a.href = href;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    return a;
  }

  function inline(parent, text) {
    let last = 0;
    INLINE.lastIndex = 0;
    for (let m = INLINE.exec(text); m !== null; m = INLINE.exec(text)) {
      if (m.index > last) parent.append(text.slice(last, m.index));
      if (m[1] !== undefined) parent.append(h("code", "", m[2]));
      else if (m[3] !== undefined || m[4] !== undefined) parent.append(h("strong", "", m[3] || m[4]));
      else if (m[0][0] === "*" || m[0][0] === "_") {
        const inner = m[0].slice(1, -1);
        parent.append(inner ? h("em", "", inner) : m[0]);
      }
      else if (m[7] !== undefined) parent.append(link(m[7], m[8], m[0]));
      else if (m[9] !== undefined) parent.append(link(m[9], m[9], m[0]));
      else parent.append(link(m[10], m[10], m[0]));
      last = INLINE.lastIndex;
    }
    if (last < text.length) parent.append(text.slice(last));
  }

  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || ITEM.test(line) || QUOTE.test(line);
  }

  // Renders `src` into `parent`; one pass over the lines, nothing nests, so
  // depth never depends on the text.
  function markdown(parent, src) {
    const lines = String(src).replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (!line.trim()) { i++; continue; }
      if ((m = FENCE.exec(line))) {
        const marker = m[1];
        const body = [];
        for (i++; i < lines.length && !isFenceEnd(lines[i], marker); i++) body.push(lines[i]);
        i++;
        const pre = h("pre");
        const code = h("code", "", body.join("\n"));
        if (m[2]) code.dataset.lang = m[2];
        pre.append(code);
        parent.append(pre);
      } else if ((m = HEADING.exec(line))) {
        const p = h("p", "md-h md-h" + m[1].length);
        inline(p, headingText(m[2]));
        parent.append(p);
        i++;
      } else if (RULE.test(line)) {
        parent.append(h("hr"));
        i++;
      } else if ((m = ITEM.exec(line))) {
        i = list(parent, lines, i, /\d/.test(m[1]));
      } else if (QUOTE.test(line)) {
        const body = [];
        for (; i < lines.length && (m = QUOTE.exec(lines[i])); i++) body.push(m[1]);
        const quote = h("blockquote");
        const p = h("p");
        inline(p, body.join("\n"));
        quote.append(p);
        parent.append(quote);
      } else {
        const body = [line];
        for (i++; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i++) body.push(lines[i]);
        const p = h("p");
        inline(p, body.join("\n"));
        parent.append(p);
      }
    }
  }

  function isFenceEnd(line, marker) {
    const trimmed = line.trim();
    return trimmed.length >= marker.length && trimmed === marker[0].repeat(trimmed.length);
  }

  function list(parent, lines, i, ordered) {
    const node = h(ordered ? "ol" : "ul");
    let m;
    for (; i < lines.length && (m = ITEM.exec(lines[i])) && /\d/.test(m[1]) === ordered; ) {
      if (ordered && !node.childElementCount) {
        const start = parseInt(m[1], 10);
        if (start !== 1) node.start = start;
      }
      const body = [m[2]];
      // indented lines continue the item
      for (i++; i < lines.length && /^\s{2,}\S/.test(lines[i]) && !ITEM.test(lines[i]); i++) body.push(lines[i].trim());
      const li = h("li");
      inline(li, body.join("\n"));
      node.append(li);
    }
    parent.append(node);
    return i;
  }

  // ---- content parts ----------------------------------------------------------

  function jsonText(value) {
    let text;
    try { text = JSON.stringify(value, null, 2); } catch (e) { text = String(value); }
    if (text === undefined) text = String(value);
    return text.length > MAX_JSON_CHARS ? text.slice(0, MAX_JSON_CHARS) + "\n…" : text;
  }

  function block(className, title, body) {
    const details = h("details", "part " + className);
    details.append(h("summary", "", title), h("pre", "", body));
    return details;
  }

  const IMAGE_TYPES = /^image\/(png|jpeg|gif|webp)$/;
  const BASE64 = /^[A-Za-z0-9+/=\s]+$/;

  function imageSource(part) {
    const url = part.image_url && typeof part.image_url === "object" ? part.image_url.url : part.image_url || part.url;
    const source = part.source && typeof part.source === "object" ? part.source : part;
    const data = typeof source.data === "string" ? source.data : null;
    const type = source.media_type || source.mimeType || source.mime_type;
    if (data !== null && IMAGE_TYPES.test(type || "") && BASE64.test(data)) {
      return "data:" + type + ";base64," + data.replace(/\s/g, "");
    }
    if (typeof url !== "string") return null;
    if (/^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+$/.test(url)) return url;
    const href = safeHref(url);
    return href && href.startsWith("http") ? href : null;
  }

  function image(part) {
    const src = imageSource(part);
    if (src === null) return block("unknown", "Image (unsupported source)", jsonText(part));
    const img = h("img", "part image");
    img.alt = typeof part.alt === "string" ? part.alt : "Image";
    img.referrerPolicy = "no-referrer";
    img.loading = "lazy";
    img.src = src;
    return img;
  }

  function partsText(content) {
    if (typeof content === "string") return content;
    if (!Array.isArray(content)) return "";
    return content.filter((p) => p && p.type === "text" && typeof p.text === "string").map((p) => p.text).join("");
  }

  function renderPart(parent, part) {
    if (typeof part === "string") { markdown(parent, part); return; }
    if (!part || typeof part !== "object") return;
    const name = typeof part.name === "string" ? part.name : "";
    switch (part.type) {
      case "text":
        if (typeof part.text === "string") markdown(parent, part.text);
        return;
      case "image": case "image_url": case "input_image":
        parent.append(image(part));
        return;
      case "toolCall": case "tool_use": case "function_call": case "tool_call":
        parent.append(block("tool-call", "Tool call: " + (name || "(unnamed)"),
          jsonText(part.arguments !== undefined ? part.arguments : part.input)));
        return;
      case "toolResult": case "tool_result": case "function_call_output": {
        const body = partsText(part.content) || (typeof part.output === "string" ? part.output : jsonText(part.content));
        parent.append(block("tool-result" + (part.isError || part.is_error ? " failed" : ""),
          "Tool result" + (name ? ": " + name : ""), body));
        return;
      }
      case "thinking":
        parent.append(block("thinking", "Thinking", typeof part.thinking === "string" ? part.thinking : jsonText(part)));
        return;
      default:
        parent.append(block("unknown", "Part: " + String(part.type || "unknown").slice(0, 60), jsonText(part)));
    }
  }

  function renderContent(parent, content) {
    parent.replaceChildren();
    if (Array.isArray(content)) content.forEach((part) => renderPart(parent, part));
    else if (typeof content === "string") markdown(parent, content);
  }

  function usageText(usage) {
    if (!usage || typeof usage !== "object") return "";
    const num = (...values) => values.find((v) => typeof v === "number" && isFinite(v));
    const input = num(usage.input, usage.prompt_tokens, usage.inputTokens, usage.input_tokens);
    const output = num(usage.output, usage.completion_tokens, usage.outputTokens, usage.output_tokens);
    let total = num(usage.totalTokens, usage.total, usage.total_tokens);
    if (total === undefined && input !== undefined && output !== undefined) total = input + output;
    // Nothing counted (a reply stopped before its first word): nothing to say, as live.
    if (!input && !output && !total) return "";
    const bits = [];
    if (input !== undefined) bits.push(input + " in");
    if (output !== undefined) bits.push(output + " out");
    if (total !== undefined) bits.push(total + " tokens");
    return bits.join(" · ");
  }

  // ---- the conversation view ----------------------------------------------------

  const runs = new Map();   // runId -> {node, body, seq, state}

  function nearBottom() {
    return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 48;
  }

  function keepScrolled(stick) {
    if (stick) ui.log.scrollTop = ui.log.scrollHeight;
  }

  function message(role, label) {
    const node = h("article", "msg " + role);
    const body = h("div", "body");
    node.append(h("p", "who", label), body);
    return { node, body };
  }

  function appendMessage(m) {
    const role = m && typeof m.role === "string" ? m.role : "unknown";
    const stick = nearBottom();
    let view;
    if (role === "user") view = message("user", "You");
    else if (role === "assistant") view = message("assistant", agentLabel());
    else if (role === "toolResult" || role === "tool") view = message("tool", "Tool");
    else view = message("other", role.slice(0, 40));
    if (role === "toolResult" || role === "tool") {
      renderPart(view.body, { type: "toolResult", name: m.toolName || m.name, content: m.content, isError: m.isError });
    } else {
      renderContent(view.body, m.content);
    }
    if (role === "assistant") {
      const aborted = m.aborted === true || m.stopReason === "aborted";
      setRunState(view, aborted ? "aborted" : m.stopReason === "error" ? "error" : "final",
        aborted ? "" : typeof m.errorMessage === "string" ? m.errorMessage : "");
      showUsage(view, m.usage);
    }
    ui.log.append(view.node);
    keepScrolled(stick);
    return view;
  }

  function showUsage(view, usage) {
    const text = usageText(usage);
    if (!text) return;
    let meta = view.node.querySelector(".usage");
    if (!meta) {
      meta = h("p", "usage");
      view.node.append(meta);
    }
    meta.textContent = text;
  }

  const STATE_LABELS = { streaming: "", final: "", aborted: "Stopped", error: "Failed" };

  function setRunState(view, state, detail) {
    view.state = state;
    view.node.dataset.state = state;
    view.body.setAttribute("aria-busy", state === "streaming" ? "true" : "false");
    let note = view.node.querySelector(".note");
    const text = STATE_LABELS[state] + (detail ? ": " + detail : "");
    if (!text) { if (note) note.remove(); return; }
    if (!note) {
      note = h("p", "note");
      view.node.append(note);
    }
    note.textContent = text;
  }

  function startReply(runId) {
    const stick = nearBottom();
    const view = message("assistant", agentLabel());
    view.seq = -1;
    view.sessionKey = current.sessionKey;
    view.node.dataset.run = runId;
    view.body.append(h("p", "typing", "…"));
    setRunState(view, "streaming", "");
    runs.set(runId, view);
    ui.log.append(view.node);
    keepScrolled(stick);
    updateControls();
    return view;
  }

  function finishRun(runId, state, detail) {
    const view = runs.get(runId);
    if (!view || view.state !== "streaming") return;
    if (state !== "final") view.body.querySelectorAll(".typing").forEach((n) => n.remove());
    setRunState(view, state, detail);
    updateControls();
  }

  function activeRunId() {
    for (const [runId, view] of runs) if (view.state === "streaming") return runId;
    return null;
  }

  function clearLog() {
    runs.clear();
    ui.log.replaceChildren();
    updateControls();
  }

  // ---- the connection ------------------------------------------------------------

  let token = store.get(TOKEN_KEY);
  // Connect on load only with a stored token; an empty field on Connect tries
  // without one (a gateway with auth mode "none" needs none).
  let wanted = token !== "";
  let ws = null;
  let connected = false;
  let stopped = false;          // a refused connect: wait for the user, never retry by ourselves
  let attempt = 0;
  let retryTimer = 0;
  let nextId = 1;
  const pending = new Map();    // request id -> {resolve, reject, timer}

  function setState(state, text) {
    ui.state.dataset.state = state;
    ui.state.textContent = text;
  }

  function showAuthError(text) {
    ui.authError.textContent = text;
    ui.authError.hidden = !text;
  }

  function request(method, params, sock) {
    const target = sock || ws;
    return new Promise((resolve, reject) => {
      if (!target || target.readyState !== WebSocket.OPEN) { reject(new Error("not connected")); return; }
      const id = "w" + nextId++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(method + " timed out"));
      }, REQUEST_TIMEOUT_MS);
      pending.set(id, { resolve, reject, timer });
      target.send(JSON.stringify({ type: "req", id, method, params: params || {} }));
    });
  }

  function failPending(reason) {
    for (const entry of pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(new Error(reason));
    }
    pending.clear();
  }

  function onResponse(frame) {
    const entry = pending.get(frame.id);
    if (!entry) return;
    pending.delete(frame.id);
    clearTimeout(entry.timer);
    if (frame.ok) { entry.resolve(frame.payload); return; }
    const error = frame.error && typeof frame.error === "object" ? frame.error : {};
    const err = new Error(typeof error.message === "string" ? error.message : "request failed");
    err.code = typeof error.code === "string" ? error.code : "";
    entry.reject(err);
  }

  function connect() {
    clearTimeout(retryTimer);
    if (!wanted) {
      setState("offline", "Not connected: enter the gateway token");
      return;
    }
    if (ws) {     // a new token: the old socket's close must not schedule a retry
      const old = ws;
      ws = null;
      connected = false;
      failPending("connection replaced");
      old.close(1000);
    }
    stopped = false;
    setState("connecting", attempt ? "Reconnecting…" : "Connecting…");
    const sock = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/");
    ws = sock;
    let helloSent = false;
    let challengeTimer = 0;
    const hello = () => {
      if (helloSent || ws !== sock) return;
      helloSent = true;
      clearTimeout(challengeTimer);
      handshake(sock);
    };
    sock.onopen = () => { challengeTimer = setTimeout(hello, CHALLENGE_WAIT_MS); };
    sock.onmessage = (event) => {
      if (ws !== sock || typeof event.data !== "string") return;
      let frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (!frame || typeof frame !== "object") return;
      if (frame.type === "res") onResponse(frame);
      else if (frame.type === "event") onEvent(frame.event, frame.payload || {}, hello);
    };
    sock.onclose = (event) => {
      clearTimeout(challengeTimer);
      if (ws !== sock) return;
      ws = null;
      // 1008 before hello-ok: the gateway's policy refused us (without a
      // response frame); the same attempt would be refused again.
      if (!connected && !stopped && event.code === 1008) refused("", event.reason);
      connected = false;
      failPending("connection closed");
      for (const [runId, view] of runs) if (view.state === "streaming") finishRun(runId, "error", "connection lost");
      updateControls();
      if (!stopped) scheduleReconnect();
    };
  }

  async function handshake(sock) {
    const params = {
      minProtocol: PROTOCOL, maxProtocol: PROTOCOL,
      client: { id: "webchat", version: VERSION, platform: "web", mode: "webchat" },
      auth: token ? { token } : {}, role: "operator", scopes: ["operator.admin"],
    };
    try {
      await request("connect", params, sock);
    } catch (err) {
      if (ws !== sock || err.message === "connection closed") return;   // onclose decides
      refused(err.code, err.message);
      sock.close(1000);
      return;
    }
    if (ws !== sock) return;
    connected = true;
    attempt = 0;
    showAuthError("");
    setState("connected", "Connected");
    updateControls();
    await Promise.all([loadAgents(), loadSessions()]);
    await loadHistory();
  }

  // A refused connect is never retried by the page: a wrong token would only
  // feed the gateway's failure limiter. The user fixes it and connects again.
  function refused(code, message) {
    stopped = true;
    const unauthorized = code === "UNAUTHORIZED" || /^unauthorized/i.test(message);
    showAuthError(unauthorized && token ? "The gateway refused the token. Check it and connect again."
      : unauthorized ? "This gateway needs its token: enter it and connect."
      : code === "RATE_LIMITED" ? "Too many failed attempts: " + message
      : "The gateway refused the connection" + (message ? ": " + message : "."));
    setState("error", "Not connected");
    ui.token.focus();
  }

  function scheduleReconnect() {
    const base = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
    attempt++;
    setState("reconnecting", "Disconnected: retrying in " + Math.max(1, Math.round(delay / 1000)) + " s");
    retryTimer = setTimeout(connect, delay);
  }

  function onEvent(name, payload, hello) {
    if (name === "connect.challenge") hello();
    else if (name === "chat") onChat(payload);
    else if (name === "shutdown") setState("reconnecting", "The gateway is restarting…");
  }

  // ---- agents, sessions, history -------------------------------------------------

  let current = { agentId: "", sessionKey: store.get(SESSION_KEY) };
  let agents = [];

  function agentOfKey(key) {
    const m = /^agent:([^:]+):/.exec(key || "");
    return m ? m[1] : "";
  }

  function agentLabel() {
    const agent = agents.find((a) => a.id === current.agentId);
    return agent ? agent.name || agent.id : current.agentId || "Assistant";
  }

  function newSessionKey(agentId) {
    return "agent:" + agentId + ":web-" + Date.now().toString(36) + "-" + randomId().slice(0, 6);
  }

  function selectSession(key, agentId) {
    current = { agentId: agentId || agentOfKey(key) || current.agentId, sessionKey: key };
    store.set(SESSION_KEY, key);
    if (ui.agent.value !== current.agentId && agents.some((a) => a.id === current.agentId)) ui.agent.value = current.agentId;
    for (const button of ui.sessions.querySelectorAll("button")) {
      if (button.dataset.key === key) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  async function loadAgents() {
    let payload;
    try { payload = await request("agents.list", {}); } catch (e) { return; }
    agents = Array.isArray(payload && payload.agents)
      ? payload.agents.filter((a) => a && typeof a.id === "string") : [];
    ui.agent.replaceChildren(...agents.map((a) => {
      const option = h("option", "", typeof a.name === "string" && a.name ? a.name : a.id);
      option.value = a.id;
      return option;
    }));
    const fromKey = agentOfKey(current.sessionKey);
    const known = (id) => agents.some((a) => a.id === id);
    const defaultId = payload && payload.defaultId;
    const agentId = known(fromKey) ? fromKey : known(defaultId) ? defaultId : agents.length ? agents[0].id : "main";
    if (!current.sessionKey || !known(fromKey)) selectSession(newSessionKey(agentId), agentId);
    else selectSession(current.sessionKey, agentId);
    updateControls();
  }

  async function loadSessions() {
    let payload;
    try { payload = await request("sessions.list", {}); } catch (e) { return; }
    const sessions = Array.isArray(payload && payload.sessions)
      ? payload.sessions.filter((s) => s && typeof s.key === "string") : [];
    ui.sessions.replaceChildren(...sessions.map((s) => {
      const li = h("li");
      const button = h("button", "session");
      button.type = "button";
      button.dataset.key = s.key;
      const agentId = agentOfKey(s.key);
      button.append(h("span", "key", agentId ? s.key.slice(agentId.length + 7) : s.key));
      if (agentId) button.append(h("span", "agent", agentId));
      if (s.key === current.sessionKey) button.setAttribute("aria-current", "true");
      li.append(button);
      return li;
    }));
    if (!sessions.length) ui.sessions.append(h("li", "empty", "No sessions yet"));
  }

  async function loadHistory() {
    const key = current.sessionKey;
    let payload;
    try { payload = await request("chat.history", { sessionKey: key, limit: HISTORY_LIMIT }); } catch (e) { return; }
    if (key !== current.sessionKey) return;
    const streaming = [...runs.values()].filter((view) => view.state === "streaming" && view.sessionKey === key);
    clearLog();
    const messages = Array.isArray(payload && payload.messages) ? payload.messages : [];
    messages.forEach(appendMessage);
    // a reply still streaming stays below the history
    for (const view of streaming) {
      runs.set(view.node.dataset.run, view);
      ui.log.append(view.node);
    }
    keepScrolled(true);
    updateControls();
  }

  let sessionsTimer = 0;
  function refreshSessionsSoon() {
    clearTimeout(sessionsTimer);
    sessionsTimer = setTimeout(() => { if (connected) loadSessions(); }, 300);
  }

  // ---- chat ----------------------------------------------------------------------------

  function onChat(p) {
    if (typeof p.runId !== "string" || typeof p.state !== "string") return;
    if (p.state !== "delta") refreshSessionsSoon();
    if (p.sessionKey !== current.sessionKey) return;
    const stick = nearBottom();
    const view = runs.get(p.runId) || startReply(p.runId);
    if (view.state !== "streaming") return;
    if (typeof p.seq === "number") {
      if (p.seq <= view.seq && p.state === "delta") return;   // a stale or repeated delta
      view.seq = p.seq;
    }
    const content = p.message && typeof p.message === "object" ? p.message.content : undefined;
    if (p.state === "delta") {
      // The text of a delta is the whole reply so far: replace, never append.
      if (content !== undefined) renderContent(view.body, content);
    } else if (p.state === "final") {
      if (content !== undefined) renderContent(view.body, content);
      view.body.querySelectorAll(".typing").forEach((n) => n.remove());
      finishRun(p.runId, "final", "");
      if (p.usage) showUsage(view, p.usage);
      else fetchUsage(view, p.sessionKey);
    } else if (p.state === "aborted") {
      if (content !== undefined) renderContent(view.body, content);
      finishRun(p.runId, "aborted", "");
    } else if (p.state === "error") {
      finishRun(p.runId, "error", typeof p.errorMessage === "string" ? p.errorMessage : "the run failed");
    }
    keepScrolled(stick);
  }

  // The original's final event carries no usage; its history does.
  async function fetchUsage(view, key) {
    let payload;
    try { payload = await request("chat.history", { sessionKey: key, limit: 1 }); } catch (e) { return; }
    const last = Array.isArray(payload && payload.messages) ? payload.messages[payload.messages.length - 1] : null;
    if (last && last.role === "assistant") showUsage(view, last.usage);
  }

  async function send() {
    const text = ui.msg.value;
    if (!text.trim() || !connected || activeRunId() !== null) return;
    const key = current.sessionKey;
    const idempotencyKey = randomId();
    appendMessage({ role: "user", content: text });
    ui.msg.value = "";
    const view = startReply(idempotencyKey);
    try {
      const payload = await request("chat.send", { sessionKey: key, message: text, idempotencyKey });
      const runId = payload && typeof payload.runId === "string" ? payload.runId : idempotencyKey;
      if (runId !== idempotencyKey) {
        const other = runs.get(runId);   // its events came first
        runs.delete(idempotencyKey);
        if (other) view.node.remove();
        else { runs.set(runId, view); view.node.dataset.run = runId; }
      }
    } catch (err) {
      finishRun(idempotencyKey, "error", err.message);
    }
    updateControls();
  }

  let stopping = false;

  async function stop() {
    const runId = activeRunId();
    if (runId === null || !connected || stopping) return;
    stopping = true;
    updateControls();
    try {
      await request("chat.abort", { sessionKey: current.sessionKey, runId });
    } catch (err) {
      setState("connected", "Connected (stopping failed: " + err.message + ")");
    }
    stopping = false;
    updateControls();
  }

  function updateControls() {
    const busy = activeRunId() !== null;
    ui.send.disabled = !connected || busy;
    const hadFocus = document.activeElement === ui.stop;
    ui.stop.disabled = !connected || !busy || stopping;
    if (hadFocus && ui.stop.disabled) ui.msg.focus();
    ui.agent.disabled = !connected || !agents.length;
    ui.newChat.disabled = !connected;
  }

  // ---- wiring --------------------------------------------------------------------------

  ui.auth.addEventListener("submit", (event) => {
    event.preventDefault();
    token = ui.token.value.trim();
    wanted = true;
    store.set(TOKEN_KEY, token);
    showAuthError("");
    attempt = 0;
    connect();
    ui.msg.focus();
  });

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });

  ui.msg.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    } else if (event.key === "Escape" && activeRunId() !== null) {
      event.preventDefault();
      stop();
    }
  });

  ui.stop.addEventListener("click", stop);

  ui.newChat.addEventListener("click", () => {
    selectSession(newSessionKey(current.agentId || ui.agent.value || "main"));
    clearLog();
    ui.msg.focus();
  });

  ui.agent.addEventListener("change", () => {
    selectSession(newSessionKey(ui.agent.value), ui.agent.value);
    clearLog();
  });

  ui.sessions.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-key]");
    if (!button) return;
    selectSession(button.dataset.key);
    loadHistory();
  });

  window.addEventListener("online", () => { if (!ws && !stopped) connect(); });

  ui.token.value = token;
  updateControls();
  connect();
})();
