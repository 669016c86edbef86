// Socket.IO room broadcast load: N members join room "bench" on the websocket transport; one of
// them, the sender, keeps K `broadcast` events to that room in flight, each answered through its
// ack (a room broadcast needs a member as its sender). Prints one JSON line: deliveries/s
// (broadcast events received by the N members, the sender included), broadcasts/s (acks at the
// sender) and ack latency p50/p99; with SERVER_PID, also the server's CPU time per delivery (µs).
// URL=http://127.0.0.1:PORT N=1000 K=4 DUR=5 [SERVER_PID=pid] node broadcast.js
const { io } = require('socket.io-client');
// SERVER_PID: the server's CPU time (user + system, from /proc) over the measured window.
const fs = require('fs');
const TICK_US = 1e6 / 100; // USER_HZ
function cpuUs() {
  if (!process.env.SERVER_PID) return NaN;
  const f = fs.readFileSync(`/proc/${process.env.SERVER_PID}/stat`, 'utf8').split(') ')[1].split(' ');
  return (+f[11] + +f[12]) * TICK_US;
}
const URL = process.env.URL, N = +process.env.N || 1000, K = +process.env.K || 4, DUR = +process.env.DUR || 5;
const opts = { transports: ['websocket'], reconnection: false, forceNew: true };
let delivered = 0, acked = 0, started = false, stop = false, t0 = 0, joined = 0, c0 = 0;
const lat = [];
function fail(e) { console.log(JSON.stringify({ error: String(e) })); process.exit(2); }
function fire(s) {
  const t = process.hrtime.bigint();
  s.emit('broadcast', { type: 'broadcast', message: 'hello', room: 'bench' }, () => {
    if (started) { acked++; if (lat.length < 500000) lat.push(Number(process.hrtime.bigint() - t) / 1e6); }
    if (!stop) fire(s);
  });
}
const members = [];
function member(i) {
  if (i === N) return go(members[0]);
  const s = io(URL, opts);
  members.push(s);
  s.on('connect_error', fail);
  s.on('broadcast', () => { if (started) delivered++; });
  s.on('connect', () => s.emit('join-room', { type: 'join-room', room: 'bench' }, () => { joined++; }));
  // connect a few at a time, so that the connects are not what is measured
  if (i % 50 === 49 || i === N - 1) { const wait = () => (joined > i ? member(i + 1) : setTimeout(wait, 5)); wait(); }
  else member(i + 1);
}
function go(sender) {
  for (let k = 0; k < K; k++) fire(sender);
  setTimeout(() => { started = true; t0 = Date.now(); c0 = cpuUs(); }, 1000);
  setTimeout(() => {
    stop = true;
    const cpu = cpuUs() - c0;
    const secs = (Date.now() - t0) / 1000;
    lat.sort((a, b) => a - b);
    const q = (p) => +(lat[Math.floor(lat.length * p)] || 0).toFixed(2);
    console.log(JSON.stringify({ deliveries_per_s: Math.round(delivered / secs), broadcasts_per_s: Math.round(acked / secs), p50_ms: q(0.5), p99_ms: q(0.99), server_cpu_us_per_delivery: +(cpu / delivered).toFixed(2) }));
    process.exit(0);
  }, 1000 + DUR * 1000);
}
member(0);
