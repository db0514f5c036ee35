'use strict';
// @discordjs/ws (discord.js's gateway layer) against the sandbox, for `scripts/bench --peers`.
//
//   node peer_discordjs.js <api base, e.g. http://127.0.0.1:8765/api> <intents> <expect>
//   token: $SANDBOX_TOKEN
//
// Prints {"ready": n} once every shard is READY, then {"count", "first_ns", "last_ns"}
// (CLOCK_MONOTONIC, like Python's time.monotonic_ns) after <expect> MESSAGE_CREATE.
// zlib-stream with node's own zlib (the library's only transport compression besides
// zlib-sync). SIGTERM closes every shard; it gives up on its own after 15 minutes.
const { REST } = require('@discordjs/rest');
const { WebSocketManager, WebSocketShardEvents, CompressionMethod } = require('@discordjs/ws');

const [apiBase, intents, expectArg] = process.argv.slice(2);
let expect = Number(expectArg);
const token = process.env.SANDBOX_TOKEN;
const say = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const now = () => Number(process.hrtime.bigint());

const rest = new REST({ api: apiBase, version: '10' }).setToken(token);
const manager = new WebSocketManager({
  token, intents: Number(intents), rest, compression: CompressionMethod.ZlibNative,
});

const ready = new Set();
let count = 0;
let firstNs = 0;
manager.on(WebSocketShardEvents.Ready, async (data, shard) => {
  ready.add(shard);
  if (ready.size === await manager.getShardCount()) say({ ready: ready.size });
});
manager.on(WebSocketShardEvents.Dispatch, (payload) => {
  if (payload.t !== 'MESSAGE_CREATE') return;
  const t = now();
  if (!count) firstNs = t;
  count += 1;
  if (expect && count >= expect) {
    say({ count, first_ns: firstNs, last_ns: t });
    expect = 0;
  }
});
manager.on(WebSocketShardEvents.Error, (error, shard) => say({ error: String(error), shard }));

process.on('SIGTERM', () => {
  manager.destroy({ code: 1000, reason: 'bench over' }).finally(() => process.exit(0));
});
setTimeout(() => process.exit(3), 900_000).unref();
manager.connect().catch((error) => {
  say({ error: String(error) });
  process.exit(2);
});
