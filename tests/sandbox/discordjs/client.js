'use strict';
// @discordjs/ws (the gateway layer of discord.js) against `shardctl sandbox`.
//
//   node client.js <api base, e.g. http://127.0.0.1:8765/api> <intents>
//   token: $SANDBOX_TOKEN
//
// Prints one JSON line per event the test waits on: ready, resumed, dispatch (t and s),
// closed, error. SIGTERM closes every shard with 1000 and exits; the process gives up on
// its own after 60 s so a lost test never leaves it running.
const { REST } = require('@discordjs/rest');
const { WebSocketManager, WebSocketShardEvents } = require('@discordjs/ws');

const [apiBase, intents] = process.argv.slice(2);
const token = process.env.SANDBOX_TOKEN;
const say = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

// No shardCount: the manager asks GET /gateway/bot for the count, the URL and
// max_concurrency (its identify throttler's bucket count), as a real bot does.
const rest = new REST({ api: apiBase, version: '10' }).setToken(token);
const manager = new WebSocketManager({ token, intents: Number(intents), rest });

manager.on(WebSocketShardEvents.Ready, (data, shard) => say({ event: 'ready', shard, session: data.session_id }));
manager.on(WebSocketShardEvents.Resumed, (shard) => say({ event: 'resumed', shard }));
manager.on(WebSocketShardEvents.Dispatch, (payload, shard) => say({ event: 'dispatch', shard, t: payload.t, s: payload.s }));
manager.on(WebSocketShardEvents.Closed, (code, shard) => say({ event: 'closed', shard, code }));
manager.on(WebSocketShardEvents.Error, (error, shard) => say({ event: 'error', shard, message: String(error) }));

process.on('SIGTERM', () => {
  manager.destroy({ code: 1000, reason: 'test over' }).finally(() => process.exit(0));
});
setTimeout(() => {
  say({ event: 'timeout' });
  process.exit(3);
}, 60_000).unref();

manager.connect().catch((error) => {
  say({ event: 'error', shard: null, message: String(error) });
  process.exit(2);
});
