"""The gateway protocol as pure data and state machines: bytes and ``now`` in, actions out.

Imports nothing else of shardctl and performs no I/O, no sleeping, and keeps no global state.
"""
