// Socket.IO room broadcast load: N members join room "bench" on the websocket transport, one
// sender (also on Socket.IO, not a member) keeps K `broadcast` events to that room in flight,
// each answered through its ack. Prints one JSON line: deliveries/s (broadcast events received by
// the members), broadcasts/s (acks at the sender) and ack latency p50/p99.
// URL=http://127.0.0.1:PORT N=1000 K=4 DUR=5 node broadcast.js
const { io } = require('socket.io-client');
const URL = process.env.URL, N = +process.env.N || 1000, K = +process.env.K || 4, DUR = +process.env.DUR || 5;
const opts = { transports: ['websocket'], reconnection: false, forceNew: true };
let delivered = 0, acked = 0, started = false, stop = false, t0 = 0, joined = 0;
const lat = [];
function fail(e) { console.log(JSON.stringify({ error: String(e) })); process.exit(2); }
function fire(s) {
  const t = process.hrtime.bigint();
  s.emit('broadcast', { type: 'broadcast', message: 'hello', room: 'bench' }, () => {
    if (started) { acked++; if (lat.length < 500000) lat.push(Number(process.hrtime.bigint() - t) / 1e6); }
    if (!stop) fire(s);
  });
}
function member(i) {
  if (i === N) return go();
  const s = io(URL, opts);
  s.on('connect_error', fail);
  s.on('broadcast', () => { if (started) delivered++; });
  s.on('connect', () => s.emit('join-room', { type: 'join-room', room: 'bench' }, () => { joined++; }));
  // connect a few at a time, so that the connects are not what is measured
  if (i % 50 === 49) { const wait = () => (joined > i ? member(i + 1) : setTimeout(wait, 5)); wait(); }
  else member(i + 1);
}
function go() {
  const sender = io(URL, opts);
  sender.on('connect_error', fail);
  sender.on('connect', () => {
    for (let k = 0; k < K; k++) fire(sender);
    setTimeout(() => { started = true; t0 = Date.now(); }, 1000);
    setTimeout(() => {
      stop = true;
      const secs = (Date.now() - t0) / 1000;
      lat.sort((a, b) => a - b);
      const q = (p) => +(lat[Math.floor(lat.length * p)] || 0).toFixed(2);
      console.log(JSON.stringify({ deliveries_per_s: Math.round(delivered / secs), broadcasts_per_s: Math.round(acked / secs), p50_ms: q(0.5), p99_ms: q(0.99) }));
      process.exit(0);
    }, 1000 + DUR * 1000);
  });
}
member(0);
