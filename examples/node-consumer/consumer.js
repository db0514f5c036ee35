// Print shardctl bus events as JSON lines: node consumer.js ENDPOINT [TYPE...]
// Frame layout: README.md "Event bus wire format" (one ZeroMQ frame per event).
const zmq = require("zeromq");

async function main() {
  const [endpoint, ...types] = process.argv.slice(2);
  const sock = new zmq.Subscriber();
  sock.connect(endpoint);
  if (types.length === 0) sock.subscribe(); // every type
  for (const t of types) sock.subscribe(t + "\0"); // type + NUL: exact match, not prefix
  for await (const [msg] of sock) {
    const nul = msg.indexOf(0);
    const h = nul + 1; // 36-byte big-endian header after the terminator
    if (nul < 1 || msg[h] !== 1) continue; // unknown version: skip
    const shard = msg.readUInt32BE(h + 1);
    const seq = msg[h + 5] & 1 ? Number(msg.readBigUInt64BE(h + 8)) : null;
    const t = msg.toString("ascii", 0, nul);
    if (t === "BUS_CLOSING") continue; // padding at a supervisor's stop, not an event
    const d = JSON.parse(msg.toString("utf8", h + 36)).d ?? null; // payload: gateway JSON
    process.stdout.write(JSON.stringify({ shard, seq, t, d }) + "\n");
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
