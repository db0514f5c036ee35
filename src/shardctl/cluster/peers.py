"""How often a peer that is not a worker may ask the supervisor anything (issue 12).

Anyone who can reach the control endpoint can send requests (``status``); each costs the
supervisor a reply it may never get rid of.  Registered workers are not limited -- their
beats and reports are the cluster's own traffic -- and neither are registrations, which are
answered only when they prove themselves (a refusal costs nothing).  Every other peer gets
a token bucket by its ZeroMQ identity: a burst, then a steady rate.  Requests beyond it
are dropped unanswered, counted, and logged once per peer.  Peers without any credential
(an ``--insecure-loopback`` endpoint: any local user, as many connections as they like)
also share one bucket between them, so opening connections buys no more replies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final

log = logging.getLogger(__name__)

#: Requests per second a non-worker peer may keep up (``shardctl status`` asks once) ...
RATE: Final = 10.0
#: ... after a burst of this many.
BURST: Final = 20.0
#: What all peers without credentials may ask together.
ANONYMOUS_RATE: Final = 20.0
ANONYMOUS_BURST: Final = 40.0
#: Peers remembered at once; the longest-idle is forgotten first (memory stays bounded
#: however many connections a stranger opens).
MAX_PEERS: Final = 4096


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    #: What was logged about this peer already (each once).
    noted: set[str] = field(default_factory=set)


class PeerBudget:
    """A token bucket per peer; the clock is the caller's (``now`` in seconds)."""

    def __init__(self, *, rate: float = RATE, burst: float = BURST,
                 max_peers: int = MAX_PEERS, anonymous_rate: float = ANONYMOUS_RATE,
                 anonymous_burst: float = ANONYMOUS_BURST) -> None:
        self.rate, self.burst, self.max_peers = rate, burst, max_peers
        self._buckets: dict[bytes, _Bucket] = {}
        self._anonymous_rate = anonymous_rate
        self._anonymous = _Bucket(anonymous_burst, 0.0)
        self._anonymous_burst = anonymous_burst
        #: Requests refused so far, over all peers.
        self.refused = 0

    def allow(self, peer: bytes, now: float, *, anonymous: bool = False) -> bool:
        """Take one request from ``peer``'s budget (and, ``anonymous``, from the one all
        peers without credentials share): False (logged once per peer) if either is empty."""
        # Re-inserted on every request: the dict's order is idleness.
        known = self._buckets.pop(peer, None)
        bucket = self._add(peer, known if known is not None else _Bucket(self.burst, now))
        _refill(bucket, now, self.rate, self.burst)
        shared = self._anonymous
        if anonymous:
            _refill(shared, now, self._anonymous_rate, self._anonymous_burst)
        if bucket.tokens >= 1.0 and (not anonymous or shared.tokens >= 1.0):
            bucket.tokens -= 1.0
            if anonymous:
                shared.tokens -= 1.0
            return True
        self.refused += 1
        if self.first(peer, "rate"):
            log.warning("control: dropping requests of peer %s beyond its budget (%g/s per "
                        "peer, %g/s for all peers without credentials; counted, not logged "
                        "again)", peer.hex(), self.rate, self._anonymous_rate)
        return False

    def first(self, peer: bytes, topic: str) -> bool:
        """True the first time ``topic`` comes up for ``peer``: log it then, count it after."""
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._add(peer, _Bucket(self.burst, 0.0))
        if topic in bucket.noted:
            return False
        bucket.noted.add(topic)
        return True

    def _add(self, peer: bytes, bucket: _Bucket) -> _Bucket:
        if len(self._buckets) >= self.max_peers:
            del self._buckets[next(iter(self._buckets))]
        self._buckets[peer] = bucket
        return bucket


def _refill(bucket: _Bucket, now: float, rate: float, burst: float) -> None:
    bucket.tokens = min(burst, bucket.tokens + max(0.0, now - bucket.at) * rate)
    bucket.at = max(bucket.at, now)
