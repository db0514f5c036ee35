"""The durable event stream on NATS JetStream (README "The durable stream").

Only this package talks to NATS, and only once the stream is used: importing it loads no
``nats`` module (``_nats.require()`` does, with one clear line when the ``nats`` extra is
missing).  It may import ``ipc`` wire codecs and ``gateway``; ``cluster`` and the CLI
import it.
"""
