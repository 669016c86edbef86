// One socket.io-client 4 connection, driven by tests/test_socketio_node.py: commands come in on
// stdin and everything the client sees goes out on stdout, one JSON object per line.
//   node peer.js URL [NAMESPACE] [TRANSPORT]
//   in:  {"op":"emit","event":"ping","args":[{}],"ack":true,"seq":1}   {"op":"disconnect"}
//   out: {"kind":"connect"} {"kind":"event","event":"pong","data":{...}}
//        {"kind":"ack","seq":1,"data":{...}} {"kind":"disconnect","reason":"..."}
"use strict";
const readline = require("node:readline");
const { io } = require("socket.io-client");

const [url, namespace = "/", transport] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const socket = io(namespace === "/" ? url : url + namespace, {
  reconnection: false,
  timeout: 5000,
  ...(transport ? { transports: [transport] } : {}),
});
socket.on("connect", () => out({ kind: "connect" }));
socket.on("connect_error", (err) => out({ kind: "connect_error", message: err.message }));
socket.on("disconnect", (reason) => out({ kind: "disconnect", reason }));
socket.io.on("open", () =>
  socket.io.engine.on("upgrade", (t) => out({ kind: "upgrade", transport: t.name })),
);
socket.onAny((event, ...args) => out({ kind: "event", event, data: args.length === 1 ? args[0] : args }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.op === "emit" && cmd.ack) {
    socket.timeout(5000).emit(cmd.event, ...cmd.args, (err, ...reply) =>
      out({ kind: "ack", seq: cmd.seq, error: err ? err.message : null, data: reply[0] ?? null }),
    );
  } else if (cmd.op === "emit") {
    socket.emit(cmd.event, ...cmd.args);
  } else if (cmd.op === "disconnect") {
    socket.disconnect();
  }
});
process.stdin.on("end", () => {
  socket.disconnect();
  process.exit(0);
});
