// The miaws console: polls the operators' API and drives one WebSocket connection.
"use strict";

const $ = (id) => document.getElementById(id);
const WS_PATH = document.body.dataset.wsPath || "/ws";
const POLL_MS = 1000;
let apiKey = sessionStorage.getItem("miaws-api-key") || "";
let socket = null;
let nextId = 1;
let presenceRoom = null; // the room key whose presence is shown, or null

// ------------------------------------------------------------------ registry (polling)
async function api(path) {
  const headers = apiKey ? { Authorization: "Bearer " + apiKey } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    // miaws's own refusal is JSON with an "error"; anything else came from a proxy in front
    // (nginx's "deny", say), and no API key will change that.
    if (await fromMiaws(response)) {
      $("api-refused").hidden = true;
      $("apikey-form").hidden = false;
      $("apikey-error").textContent = response.status === 403 ? "key not accepted" : "";
    } else {
      $("apikey-form").hidden = true;
      $("api-refused").hidden = false;
      $("api-refused").textContent = path + ": HTTP " + response.status +
        " from a proxy in front of miaws, not from miaws (its API may be reachable only " +
        "from an internal network)";
    }
    throw new Error("unauthorised");
  }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  $("api-refused").hidden = true;
  return response.json();
}

async function fromMiaws(response) {
  if (!(response.headers.get("Content-Type") || "").startsWith("application/json")) return false;
  try {
    const body = await response.json();
    return typeof body.error === "string";
  } catch (e) {
    return false;
  }
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

function fillTable(tbody, rows, empty) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 6;
    td.className = "empty";
    td.textContent = empty;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
  for (const values of rows) {
    const tr = document.createElement("tr");
    values.forEach((v) => cell(tr, v));
    tbody.appendChild(tr);
  }
}

function formatUptime(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

async function refresh() {
  try {
    const health = await (await fetch("/health", { cache: "no-store" })).json();
    $("conn-count").textContent = health.connections;
    $("room-count").textContent = health.rooms;
    $("uptime").textContent = formatUptime(health.uptime);
    $("server-status").textContent = health.status;
    $("server-status").className = health.status === "ok" ? "good" : "bad";
  } catch (e) {
    $("server-status").textContent = "down";
    $("server-status").className = "bad";
    return;
  }
  try {
    const clients = await api("/api/clients");
    const myId = socket && socket.clientId;
    fillTable($("clients"), clients.map((c) => [
      c.clientId + (c.clientId === myId ? " (this page)" : ""),
      c.transport, c.remoteAddress, c.rooms.join(", "), c.messagesIn, c.messagesOut,
    ]), "no clients connected");
    const rooms = await api("/api/rooms");
    fillTable($("rooms"), Object.entries(rooms).map(([name, n]) => [name, n]), "no rooms");
    for (const row of $("rooms").querySelectorAll("tr")) {
      const name = row.firstChild && row.firstChild.className !== "empty" && row.firstChild.textContent;
      if (!name) continue;
      const button = document.createElement("button");
      button.className = "quiet show-presence";
      button.textContent = "show";
      button.dataset.room = name;
      const td = document.createElement("td");
      td.appendChild(button);
      row.appendChild(td);
    }
    if (presenceRoom) await showPresence(presenceRoom);
    $("apikey-form").hidden = true;
  } catch (e) {
    /* shown in the key form or on the next poll */
  }
}

// ------------------------------------------------------------------ presence of one room
async function showPresence(key) {
  presenceRoom = key;
  const body = await api("/api/presence?room=" + encodeURIComponent(key));
  $("presence").hidden = false;
  $("presence-room").textContent = key;
  let summary = body.count + (body.count === 1 ? " user" : " users") +
    (body.scope === "cluster" ? " on every node" : " on this node (no presence rule)");
  if (body.truncated) summary += ", first " + body.limit + " listed";
  if (body.partial) summary += ", this node only: the broker is unreachable";
  $("presence-summary").textContent = summary;
  fillTable($("presence-members"), body.members.map((m) => [
    m.clientId, m.user === null ? "–" : m.user,
    m.since === null ? "–" : new Date(m.since).toISOString().slice(11, 19),
  ]), "nobody");
}

$("rooms").addEventListener("click", (event) => {
  const button = event.target.closest("button.show-presence");
  if (button) showPresence(button.dataset.room).catch(() => {});
});
$("presence-close").addEventListener("click", () => {
  presenceRoom = null;
  $("presence").hidden = true;
});

$("apikey-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("apikey").value.trim();
  sessionStorage.setItem("miaws-api-key", apiKey);
  refresh();
});

// ------------------------------------------------------------------ WebSocket panel
function logLine(direction, data) {
  const li = document.createElement("li");
  li.className = direction;
  let type = "";
  try { type = JSON.parse(data).type || ""; } catch (e) { /* not JSON */ }
  li.dataset.type = type;
  const time = document.createElement("time");
  time.textContent = new Date().toISOString().slice(11, 23);
  const arrow = document.createElement("span");
  arrow.className = "dir";
  arrow.textContent = { in: "←", out: "→", sys: "•" }[direction];
  const body = document.createElement("code");
  body.textContent = data;
  li.append(time, arrow, body);
  const log = $("log");
  log.appendChild(li);
  log.scrollTop = log.scrollHeight;
}

function setConnected(connected) {
  for (const id of ["ping", "echo", "broadcast", "join", "leave", "raw"]) $(id).disabled = !connected;
  $("connect").textContent = connected ? "Disconnect" : "Connect";
}

function connect() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + WS_PATH;
  const ws = new WebSocket(url);
  socket = ws;
  $("ws-status").textContent = "connecting to " + url;
  ws.onopen = () => { setConnected(true); logLine("sys", "connected to " + url); };
  ws.onmessage = (event) => {
    logLine("in", event.data);
    try {
      const msg = JSON.parse(event.data);
      if (msg.type === "welcome") {
        ws.clientId = msg.clientId;
        $("ws-status").textContent = "connected as " + msg.clientId;
      }
    } catch (e) { /* shown as received */ }
  };
  ws.onclose = (event) => {
    if (socket === ws) socket = null;
    setConnected(false);
    $("ws-status").textContent = "disconnected";
    logLine("sys", "closed: code " + event.code + (event.reason ? " (" + event.reason + ")" : ""));
  };
}

// A field's text as JSON when it parses, else as a string.
function value(id) {
  const text = $(id).value;
  try { return JSON.parse(text); } catch (e) { return text; }
}

function send(message) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  message.id = nextId++;
  const text = JSON.stringify(message);
  socket.send(text);
  logLine("out", text);
}

$("connect").addEventListener("click", () => (socket ? socket.close(1000) : connect()));
$("ping").addEventListener("click", () => send({ type: "ping" }));
$("echo").addEventListener("click", () => send({ type: "echo", message: value("echo-text") }));
$("broadcast").addEventListener("click", () => {
  const message = { type: "broadcast", message: value("bc-text") };
  const room = $("bc-room").value.trim();
  if (room) message.room = room;
  send(message);
});
$("join").addEventListener("click", () => send({ type: "join-room", room: $("room").value.trim() }));
$("leave").addEventListener("click", () => send({ type: "leave-room", room: $("room").value.trim() }));
$("clear").addEventListener("click", () => $("log").replaceChildren());
// Any text, as typed (a plugin's own type, or what the server answers to a bad message).
$("raw").addEventListener("click", () => {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  const text = $("raw-text").value;
  socket.send(text);
  logLine("out", text);
});

refresh();
setInterval(refresh, POLL_MS);
