"use strict";
// The web chat page: events from the chat arrive over a WebSocket as the
// chat's --json lines do; lines typed here go back as {"line": ...}, handled
// exactly as lines typed into the terminal chat.
(function () {
  const token = new URLSearchParams(location.search).get("token") || "";
  const $ = (id) => document.getElementById(id);
  const state = { me: "", topic: "", socket: null, files: new Map(), network: null, who: [] };

  // Peer colours: the terminal's (FNV-1a of the peer id's bytes into its palette of ANSI colours).
  const ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
  const PALETTE = ["#c62828", "#2e7d32", "#a66f00", "#1f4fbf", "#9c27b0", "#00838f",
                   "#e53935", "#43a047", "#b8860b", "#3d7be0", "#c04fd6", "#0097a7"];
  function base58(text) {
    const bytes = [0];
    for (const ch of text) {
      let carry = ALPHABET.indexOf(ch);
      if (carry < 0) return null;
      for (let i = 0; i < bytes.length; i++) { carry += bytes[i] * 58; bytes[i] = carry & 0xff; carry >>= 8; }
      while (carry > 0) { bytes.push(carry & 0xff); carry >>= 8; }
    }
    for (const ch of text) { if (ch !== "1") break; bytes.push(0); }
    return bytes.reverse();
  }
  function colour(peer) {
    const bytes = base58(peer) || Array.from(new TextEncoder().encode(peer));
    let hash = 2166136261;
    for (const b of bytes) hash = Math.imul(hash ^ b, 16777619) >>> 0;
    return PALETTE[hash % PALETTE.length];
  }
  const short = (peer) => (peer || "").slice(-8);
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
    }
    for (const c of children) if (c != null) node.append(c instanceof Node ? c : String(c));
    return node;
  }
  function peerName(peer) {
    if (peer === state.me) return el("span", { class: "peer", title: peer, style: "color:" + colour(peer) }, "you");
    return el("span", { class: "peer", title: peer, style: "color:" + colour(peer) }, short(peer));
  }
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Number(n), u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return u === 0 ? n + " B" : v.toFixed(1) + " " + units[u];
  }

  // ---- the conversation ----
  const messages = $("messages");
  function append(node) {
    const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
    messages.append(node);
    if (atBottom) messages.scrollTop = messages.scrollHeight;
  }
  function system(parts, cls) { append(el("div", { class: "sys " + (cls || "") }, ...parts)); }
  // A line from a peer's history shows its send time as its author signed it; an old one says so.
  function message(from, text, history, sent, old) {
    const row = el("div", { class: "msg" + (history ? " history" : ""), "data-from": from });
    if (history) {
      const when = sent ? new Date(sent) : null;
      const label = !when ? "history · time unknown" : old ? "old · " + when.toLocaleString() : "history · " + when.toLocaleTimeString();
      const title = "from a peer's history: sent while we were away" +
        (when ? ", at " + when.toISOString() + " (signed by its author)" : "; when is unknown");
      row.append(el("span", { class: "badge", title: title }, label));
    }
    const name = el("span", { class: "from", title: from, style: "color:" + colour(from) }, from === state.me ? "you" : short(from));
    row.append(name, el("span", { class: "text" }, text));
    append(row);
  }

  function fileCard(ev) {
    let card = state.files.get(ev.n);
    if (!card) {
      card = el("div", { class: "file", "data-n": String(ev.n) });
      state.files.set(ev.n, card);
      append(card);
    }
    card.replaceChildren();
    const get = el("button", { type: "button", class: "get" }, "Fetch");
    get.addEventListener("click", () => { send("/get " + ev.n); get.disabled = true; });
    card.append(
      el("div", {}, peerName(ev.from), " offers ", el("span", { class: "name" }, ev.name)),
      el("div", { class: "meta" }, ev.size != null ? bytes(ev.size) : "size unknown (universal-connectivity)", " · #" + ev.n),
      get, el("progress", { max: "1", value: "0", hidden: "" }), el("div", { class: "state" }));
  }
  function fileState(n, text, fraction, failed) {
    const card = state.files.get(n);
    if (!card) return;
    const bar = card.querySelector("progress");
    if (fraction != null) { bar.hidden = false; bar.value = fraction; }
    const label = card.querySelector(".state");
    label.textContent = text;
    label.classList.toggle("failed", !!failed);
    card.querySelector(".get").disabled = fraction != null && !failed;
  }

  function setTopic(topic) {
    state.topic = topic;
    $("topic").value = topic;
    $("side-topic").textContent = topic;
    document.title = "p2pchat · " + topic;
  }
  function showWho(peers) {
    state.who = peers;
    $("peers").replaceChildren(...(peers.length ? peers.map((p) => el("li", {}, peerName(p))) : [el("li", { class: "hint" }, "nobody yet")]));
  }

  const handlers = {
    hello(ev) { state.me = ev.peer; $("me").textContent = short(ev.peer); $("me").title = ev.peer; setTopic(ev.topic); },
    message(ev) { message(ev.from, ev.text, ev.history, ev.sent, ev.old); },
    sent(ev) { message(state.me, ev.text, false); },
    joined(ev) {
      system([peerName(ev.peer), " joined " + ev.topic]);
      if (ev.topic === state.topic && !state.who.includes(ev.peer)) showWho(state.who.concat([ev.peer]).sort());
    },
    left(ev) {
      system([peerName(ev.peer), " left " + ev.topic]);
      if (ev.topic === state.topic) showWho(state.who.filter((p) => p !== ev.peer));
    },
    who(ev) {
      if (ev.topic === state.topic) showWho(ev.peers);
      system(ev.peers.length ? ["On " + ev.topic + ": ", ...ev.peers.flatMap((p) => [peerName(p), " "])] : ["Nobody else on " + ev.topic + "."]);
    },
    topic(ev) { setTopic(ev.topic); showWho([]); system(["Now on topic " + ev.topic]); },
    connected(ev) { system([peerName(ev.peer), " connected at " + ev.addr], "dim"); },
    disconnected(ev) { system([peerName(ev.peer), " disconnected"], "dim"); },
    file_offer(ev) { fileCard(ev); },
    file_offered(ev) { system(["offering " + ev.name + " (" + bytes(ev.size) + ") on " + state.topic]); },
    file_progress(ev) {
      fileState(ev.n, bytes(ev.bytes) + " of " + bytes(ev.size) + (ev.rate ? " · " + bytes(Math.round(ev.rate)) + "/s" : ""),
        ev.size > 0 ? ev.bytes / ev.size : 1);
    },
    file_done(ev) { fileState(ev.n, "saved as " + ev.path, 1); },
    file_failed(ev) { fileState(ev.n, "failed: " + ev.error, 0, true); },
    file_not_accepted(ev) { fileState(ev.n, "not fetched without asking: " + ev.reason); },
    not_delivered(ev) { system([ev.reason + ": not delivered"], "error"); },
    error(ev) { system(["error: " + ev.message], "error"); },
    status(ev) { system(["Reachability: " + ev.reachability + " · " + ev.connections.length + " connection(s) · DHT " + ev.dht]); },
    peer(ev) { system([peerName(ev.peer), " " + ev.addr]); },
    reachability(ev) { system(["Reachability: " + ev.reachability], "dim"); },
    connection_upgraded(ev) { system(["Direct connection to ", peerName(ev.peer), " (" + ev.method + ")"]); },
    network(ev) { state.network = ev.network; drawNetwork(); },
  };

  // ---- the WebSocket ----
  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(scheme + "//" + location.host + "/ws?token=" + encodeURIComponent(token));
    state.socket = socket;
    socket.onopen = () => {
      $("link").textContent = "online"; $("link").className = "up";
      // The chat sends everything again: start from a clean page.
      messages.replaceChildren(); state.files.clear();
    };
    socket.onmessage = (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch { return; }
      const handler = handlers[ev.event];
      if (handler) handler(ev);
    };
    socket.onclose = (e) => {
      $("link").textContent = "offline"; $("link").className = "down";
      if (e.reason) system(["the chat closed the connection: " + e.reason], "error");
      state.socket = null;
      setTimeout(connect, 2000);
    };
  }
  function send(line) {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) { system(["not connected to the chat"], "error"); return false; }
    state.socket.send(JSON.stringify({ line: line }));
    return true;
  }

  $("send").addEventListener("submit", (e) => {
    e.preventDefault();
    const line = $("line").value;
    if (line.trim() && send(line)) $("line").value = "";
  });
  $("topic-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const topic = $("topic").value.trim();
    if (topic && topic !== state.topic) send("/topic " + topic);
  });
  $("who").addEventListener("click", () => send("/who"));

  // ---- files: the picker and drag and drop ----
  async function upload(file) {
    system(["uploading " + file.name + " (" + bytes(file.size) + ")…"]);
    try {
      const response = await fetch("/upload?token=" + encodeURIComponent(token) + "&name=" + encodeURIComponent(file.name),
        { method: "POST", body: file });
      if (!response.ok) system(["cannot offer " + file.name + ": " + (await response.text())], "error");
    } catch (error) {
      system(["cannot offer " + file.name + ": " + error], "error");
    }
  }
  $("file").addEventListener("change", (e) => { for (const file of e.target.files) upload(file); e.target.value = ""; });
  let dragDepth = 0;
  document.addEventListener("dragenter", (e) => { if (hasFiles(e)) { dragDepth++; $("drop").hidden = false; } });
  document.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop").hidden = true; } });
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    dragDepth = 0; $("drop").hidden = true;
    for (const file of e.dataTransfer.files) upload(file);
  });
  function hasFiles(e) { return e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files"); }

  // ---- views ----
  function show(view) {
    $("chat-view").hidden = view !== "chat";
    $("network-view").hidden = view !== "network";
    $("tab-chat").classList.toggle("active", view === "chat");
    $("tab-network").classList.toggle("active", view === "network");
    if (view === "network") drawNetwork();
    history.replaceState(null, "", location.search + (view === "network" ? "#network" : ""));
  }
  $("tab-chat").addEventListener("click", () => show("chat"));
  $("tab-network").addEventListener("click", () => show("network"));

  // ---- the network, drawn ----
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text != null) node.textContent = text;
    return node;
  }
  const KIND = { direct: { colour: "var(--direct)", dash: "" }, relayed: { colour: "var(--relayed)", dash: "7 5" },
                 "hole punched": { colour: "var(--punched)", dash: "" } };
  function relayOf(address) {
    // /.../p2p/RELAY/p2p-circuit/...: the relay's peer id.
    const parts = address.split("/");
    const circuit = parts.indexOf("p2p-circuit");
    return circuit >= 2 && parts[circuit - 2] === "p2p" ? parts[circuit - 1] : null;
  }
  function drawNetwork() {
    const net = state.network;
    const graph = $("graph");
    if (!net || $("network-view").hidden) return;
    graph.replaceChildren();
    const reserved = new Map(net.reservations.map((r) => [r.relay, r.expires]));
    const mesh = new Set(net.mesh), onTopic = new Set(net.topicPeers);
    const peers = new Set([...net.connections.map((c) => c.peer), ...net.topicPeers, ...reserved.keys()]);
    for (const c of net.connections) { const relay = relayOf(c.address); if (relay) peers.add(relay); }
    const sorted = Array.from(peers).filter((p) => p !== net.peer).sort();
    const position = new Map([[net.peer, { x: 0, y: 0 }]]);
    const radius = sorted.length > 8 ? 270 : 230;
    sorted.forEach((p, i) => {
      const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(sorted.length, 1);
      position.set(p, { x: Math.round(radius * Math.cos(angle) * 1.45), y: Math.round(radius * Math.sin(angle)) });
    });
    const links = svg("g", { class: "links" }), nodes = svg("g", { class: "nodes" }), labels = svg("g", {});
    // Several connections to one peer fan out a little so each stays visible.
    const seen = new Map();
    for (const c of net.connections) {
      const to = position.get(c.peer);
      if (!to) continue;
      const index = seen.get(c.peer) || 0; seen.set(c.peer, index + 1);
      const style = KIND[c.kind] || KIND.direct;
      const relay = c.kind === "relayed" ? relayOf(c.address) : null;
      const via = relay && position.get(relay);
      const bend = index * 28;
      const mid = via || { x: to.x / 2 - (to.y / 230) * bend, y: to.y / 2 + (to.x / 330) * bend };
      const path = svg("path", {
        d: `M 0 0 Q ${via ? `${via.x} ${via.y}` : `${mid.x} ${mid.y}`} ${to.x} ${to.y}`,
        fill: "none", stroke: style.colour, "stroke-width": c.kind === "hole punched" ? 4 : 2.5,
        "stroke-dasharray": style.dash, class: "link", "data-peer": c.peer, "data-kind": c.kind, "data-transport": c.transport,
      });
      path.append(svg("title", {}, `${c.kind} ${c.transport} ${c.direction}\n${c.address}\n${c.security} · ${c.muxer}`));
      links.append(path);
      const lx = via ? (via.x + to.x) / 2 : (mid.x + (to.x / 2)) / 2, ly = via ? (via.y + to.y) / 2 : (mid.y + (to.y / 2)) / 2;
      labels.append(svg("text", { x: lx + 8, y: ly - 6, "text-anchor": "start", class: "small" }, `${c.transport} · ${c.kind}`));
    }
    function node(peer, p, me) {
      const g = svg("g", { class: "node", "data-peer": peer, transform: `translate(${p.x} ${p.y})` });
      const r = me ? 40 : 34;
      if (mesh.has(peer)) g.append(svg("circle", { class: "mesh", r: r + 7, fill: "none", stroke: "var(--mesh)", "stroke-width": 3 }));
      else if (onTopic.has(peer)) g.append(svg("circle", { class: "topic", r: r + 7, fill: "none", stroke: "var(--mesh)", "stroke-width": 1.5, "stroke-dasharray": "4 3" }));
      g.append(svg("circle", { r, fill: me ? "#20232a" : "#fff", stroke: colour(peer), "stroke-width": 3 }));
      g.append(svg("text", { y: 4, "text-anchor": "middle", class: "mono",
                             style: (me ? "fill:#fff" : "fill:" + colour(peer)) + ";font-size:10.5px" }, me ? "you" : short(peer)));
      const lines = me ? [short(peer), "reachability: " + net.reachability, "DHT: " + net.dht]
                       : [reserved.has(peer) ? "relay · reserved until " + reserved.get(peer).slice(11, 16) : null,
                          mesh.has(peer) ? "in mesh of " + net.topic : onTopic.has(peer) ? "on " + net.topic : null].filter(Boolean);
      // Our node's notes go to its right, clear of the links that leave it up and down.
      lines.forEach((line, i) => g.append(me
        ? svg("text", { x: r + 12, y: -10 + i * 14, class: "small" }, line)
        : svg("text", { y: r + 18 + i * 14, "text-anchor": "middle", class: "small" }, line)));
      g.append(svg("title", {}, peer));
      nodes.append(g);
    }
    node(net.peer, { x: 0, y: 0 }, true);
    for (const p of sorted) node(p, position.get(p), false);
    const legend = svg("g", { transform: "translate(-465 -312)" });
    [["direct", KIND.direct], ["relayed", KIND.relayed], ["hole punched", KIND["hole punched"]]].forEach(([name, s], i) => {
      legend.append(svg("line", { x1: 0, y1: i * 18, x2: 34, y2: i * 18, stroke: s.colour, "stroke-width": name === "hole punched" ? 4 : 2.5, "stroke-dasharray": s.dash }));
      legend.append(svg("text", { x: 42, y: i * 18 + 4 }, name));
    });
    legend.append(svg("circle", { cx: 17, cy: 54, r: 8, fill: "none", stroke: "var(--mesh)", "stroke-width": 3 }));
    legend.append(svg("text", { x: 42, y: 58 }, "gossipsub mesh of " + net.topic));
    legend.append(svg("circle", { cx: 17, cy: 74, r: 8, fill: "none", stroke: "var(--mesh)", "stroke-width": 1.5, "stroke-dasharray": "4 3" }));
    legend.append(svg("text", { x: 42, y: 78 }, "on the topic, not in the mesh"));
    graph.append(links, labels, nodes, legend);
    if (!sorted.length) graph.append(svg("text", { y: 90, "text-anchor": "middle", class: "small" }, "no peers yet"));

    const rows = net.connections.map((c) => el("tr", {},
      el("td", {}, peerName(c.peer)), el("td", {}, c.kind + " · " + c.transport + " · " + c.direction, el("br"), el("code", {}, c.address))));
    const list = (title, items) => [el("h2", {}, title), ...(items.length ? items.map((a) => el("div", {}, el("code", {}, a))) : [el("div", { class: "hint" }, "none")])];
    $("details").replaceChildren(
      el("h2", {}, "This node"), el("div", {}, el("code", {}, net.peer)),
      el("div", {}, "Reachability: " + net.reachability + " · DHT: " + net.dht),
      el("h2", {}, "Connections (" + net.connections.length + ")"), el("table", {}, ...rows),
      ...list("Relay reservations", net.reservations.map((r) => r.relay + " until " + r.expires)),
      ...list("Listening on", net.listen), ...list("Observed at", net.observed), ...list("Advertised", net.advertised));
  }

  show(location.hash === "#network" ? "network" : "chat");
  connect();
})();
