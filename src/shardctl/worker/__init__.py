"""Workers: the websocket/anyio driver around ``gateway`` (the Shard) and the worker process."""
