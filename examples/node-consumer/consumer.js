// Print shardctl bus events as JSON lines: node consumer.js [--batched] ENDPOINT [TYPE...]
// Frame layout: README.md "Event bus wire format" (one ZeroMQ frame per event), or with
// --batched the events-batch endpoint's (README "Batched consumers": one frame per batch).
const zmq = require("zeromq");

// One version-1 event frame (msg[start, end)) as a JSON line, or null to skip it.
function line(msg, start, end, types) {
  const nul = msg.indexOf(0, start);
  const h = nul + 1; // 36-byte big-endian header after the terminator
  if (nul <= start || nul >= end || msg[h] !== 1) return null; // unknown version: skip
  const t = msg.toString("ascii", start, nul);
  if (t === "BUS_CLOSING") return null; // padding at a supervisor's stop, not an event
  if (types !== null && !types.has(t)) return null;
  const shard = msg.readUInt32BE(h + 1);
  const seq = msg[h + 5] & 1 ? Number(msg.readBigUInt64BE(h + 8)) : null;
  const d = JSON.parse(msg.toString("utf8", h + 36, end)).d ?? null; // payload: gateway JSON
  return JSON.stringify({ shard, seq, t, d }) + "\n";
}

// A batch: 40-byte header (version 2, reserved, u16 count, ...), then per event
// u32 length, u8 type length, u32 session tag, and the version-1 frame.
function* batchLines(msg, types) {
  if (msg.length < 40 || msg[0] !== 2) return; // unknown version: skip
  let off = 40;
  for (let i = msg.readUInt16BE(2); i > 0 && off + 9 <= msg.length; i--) {
    const start = off + 9;
    off = start + msg.readUInt32BE(off);
    const out = line(msg, start, Math.min(off, msg.length), types);
    if (out !== null) yield out;
  }
}

async function main() {
  let args = process.argv.slice(2);
  const batched = args[0] === "--batched";
  if (batched) args = args.slice(1);
  const [endpoint, ...names] = args;
  const sock = new zmq.Subscriber();
  sock.connect(endpoint);
  if (batched || names.length === 0) sock.subscribe(); // every event (batches: filter here)
  else for (const t of names) sock.subscribe(t + "\0"); // type + NUL: exact, not prefix
  const types = batched && names.length ? new Set(names) : null;
  for await (const [msg] of sock) {
    if (batched) {
      for (const out of batchLines(msg, types)) process.stdout.write(out);
    } else {
      const out = line(msg, 0, msg.length, null);
      if (out !== null) process.stdout.write(out);
    }
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
