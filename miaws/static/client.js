// miaws browser client: an ES module, no build step.  Served by every miaws server at /client.js.
//
//   import { MiawsClient } from "/client.js";
//   const client = new MiawsClient("ws://" + location.host + "/ws", {
//     onMessage: (msg) => console.log(msg),
//     onRecoveryFailed: (room, reply) => reloadState(room),
//   });
//   await client.connect();
//   await client.join("prices");
//
// It behaves like the Python client (miaws.client): replies are matched to requests by id;
// when the connection drops it reconnects with exponential backoff and jitter and re-joins its
// rooms with `since` set to the last (epoch, seq) it saw, so the server replays what it missed;
// room messages are deduplicated by (room, epoch, seq); onRecoveryFailed(room, reply) is called
// when the server can no longer fill the gap.  See docs/clients.md.

/** Milliseconds before reconnect `attempt` (0, 1, ...): exponential, capped, equal jitter. */
export function backoffDelay(attempt, initial, maximum, rand = Math.random) {
  const capped = Math.min(maximum, initial * 2 ** Math.min(attempt, 32));
  return capped / 2 + (capped / 2) * rand();
}

export class ConnectionLost extends Error {}

export class MiawsClient extends EventTarget {
  /**
   * @param {string} url  ws:// or wss:// URL of the server's WebSocket endpoint
   * @param {object} [options]
   * @param {(msg: object) => void} [options.onMessage]  every message that is not a reply
   * @param {(room: string, reply: object) => void} [options.onRecoveryFailed]
   * @param {number} [options.backoffInitial=100]  first reconnect delay, ms
   * @param {number} [options.backoffMax=10000]  longest reconnect delay, ms
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.onMessage = options.onMessage || null;
    this.onRecoveryFailed = options.onRecoveryFailed || null;
    this.backoffInitial = options.backoffInitial ?? 100;
    this.backoffMax = options.backoffMax ?? 10000;
    this.clientId = null;
    this.connects = 0; // successful connections so far
    this.duplicates = 0; // room messages dropped as already seen
    this.positions = new Map(); // room -> {epoch, seq} last seen
    this.socket = null; // the current WebSocket, open and welcomed, or null
    this._rooms = new Set();
    this._pending = new Map(); // id -> {resolve, reject, timer}
    this._internalIds = new Set();
    this._nextId = 1;
    this._attempt = 0;
    this._closed = false;
    this._started = false;
    this._waiters = []; // resolvers waiting for a connection
    this._timer = null;
  }

  /** Start connecting; resolves at the first welcome. */
  connect() {
    if (!this._started) {
      this._started = true;
      this._open();
    }
    return this._whenConnected();
  }

  /** Stop reconnecting and close. */
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    if (this.socket) this.socket.close(1000, "client closed");
    this._failPending(new ConnectionLost("client closed"));
  }

  get rooms() {
    return [...this._rooms];
  }

  /** Send one message once connected. */
  async send(message) {
    const ws = await this._whenConnected();
    ws.send(JSON.stringify(message));
  }

  /** Send message with an id and resolve with the reply carrying that id. */
  async request(message, { timeout = 10000 } = {}) {
    const msg = { ...message };
    if (msg.id === undefined) msg.id = `js-${this._nextId++}`;
    const reply = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(msg.id);
        reject(new Error(`no reply to ${msg.type} within ${timeout} ms`));
      }, timeout);
      this._pending.set(msg.id, { resolve, reject, timer });
    });
    try {
      await this.send(msg);
    } catch (err) {
      this._settle(msg.id, null, err);
    }
    return reply;
  }

  /** Join room; it is re-joined, with recovery, after every reconnect. */
  async join(room, options) {
    this._rooms.add(room);
    const reply = await this.request(this._joinMessage(room), options);
    if (reply.type === "error") this._rooms.delete(room);
    return reply;
  }

  async leave(room, options) {
    this._rooms.delete(room);
    this.positions.delete(room);
    return this.request({ type: "leave-room", room }, options);
  }

  // ---------------------------------------------------------------- internals
  _joinMessage(room) {
    const msg = { type: "join-room", room };
    const last = this.positions.get(room);
    if (last) msg.since = { epoch: last.epoch, seq: last.seq };
    return msg;
  }

  _whenConnected() {
    if (this._closed) return Promise.reject(new ConnectionLost("client closed"));
    if (this.socket) return Promise.resolve(this.socket);
    return new Promise((resolve) => this._waiters.push(resolve));
  }

  _open() {
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this._scheduleReconnect();
      return;
    }
    let welcomed = false;
    ws.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!welcomed) {
        if (msg.type !== "welcome") return;
        welcomed = true;
        this._welcomed(ws, msg);
        return;
      }
      this._handle(msg);
    };
    ws.onclose = () => {
      if (this.socket === ws) this.socket = null;
      this._failPending(new ConnectionLost("connection lost before the reply"));
      this.dispatchEvent(new CustomEvent("close"));
      if (!this._closed) this._scheduleReconnect();
    };
  }

  _welcomed(ws, welcome) {
    this.clientId = welcome.clientId;
    this.connects += 1;
    this._attempt = 0;
    for (const room of this._rooms) {
      const msg = this._joinMessage(room);
      msg.id = `js-rejoin-${this._nextId++}`;
      this._internalIds.add(msg.id);
      ws.send(JSON.stringify(msg));
    }
    this.socket = ws;
    for (const resolve of this._waiters.splice(0)) resolve(ws);
    this.dispatchEvent(new CustomEvent("open", { detail: welcome }));
  }

  _scheduleReconnect() {
    const delay = backoffDelay(this._attempt++, this.backoffInitial, this.backoffMax);
    this._timer = setTimeout(() => this._open(), delay);
  }

  _handle(msg) {
    if (msg.type === "room-joined") {
      this._joined(msg);
    } else if (typeof msg.room === "string" && msg.epoch !== undefined && msg.seq !== undefined) {
      if (!this._advance(msg.room, msg.epoch, msg.seq)) {
        this.duplicates += 1;
        return;
      }
    }
    if (msg.id !== undefined) {
      if (this._pending.has(msg.id)) {
        this._settle(msg.id, msg, null);
        return;
      }
      if (this._internalIds.delete(msg.id)) return;
    }
    if (this.onMessage) this.onMessage(msg);
    this.dispatchEvent(new CustomEvent("message", { detail: msg }));
  }

  _joined(reply) {
    const room = reply.room;
    const current = reply.epoch !== undefined ? { epoch: reply.epoch, seq: reply.seq } : null;
    if (reply.recovered === false) {
      if (current) this.positions.set(room, current);
      else this.positions.delete(room);
      if (this.onRecoveryFailed) this.onRecoveryFailed(room, reply);
      this.dispatchEvent(new CustomEvent("recovery-failed", { detail: { room, reply } }));
    } else if (reply.recovered === undefined && current && !this.positions.has(room)) {
      this.positions.set(room, current); // a first join: track from here
    }
    // recovered true: the missed messages follow and advance the position themselves.
  }

  _advance(room, epoch, seq) {
    const last = this.positions.get(room);
    if (last && last.epoch === epoch && seq <= last.seq) return false;
    this.positions.set(room, { epoch, seq });
    return true;
  }

  _settle(id, reply, error) {
    const entry = this._pending.get(id);
    if (!entry) return;
    this._pending.delete(id);
    clearTimeout(entry.timer);
    if (error) entry.reject(error);
    else entry.resolve(reply);
  }

  _failPending(error) {
    for (const id of [...this._pending.keys()]) this._settle(id, null, error);
    this._internalIds.clear();
  }
}
