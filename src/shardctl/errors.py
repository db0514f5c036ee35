"""The one exception tree of shardctl.

Every error we raise on purpose derives from :class:`ShardctlError`, split by who is at fault
(after h11's Local/RemoteProtocolError):

- :class:`ConfigurationError` -- the operator's settings are wrong (bad intents value, bad
  shard count, a payload we refuse to build).  Fix the configuration.
- :class:`DiscordError` -- Discord (or the sandbox) refused us.  Subclasses name the cause:
  :class:`AuthenticationError` (bad token), :class:`DisallowedIntentsError` (privileged
  intents not enabled), :class:`ShardingError` (4010/4011), :class:`GatewayFatalError` (any
  other close code that forbids reconnecting), :class:`RateLimitedError` (REST 429).
- :class:`ProtocolError` -- the peer sent something that breaks the gateway protocol
  (undecodable frame, bad compression stream).
- :class:`SessionBudgetError` -- the daily session-start budget cannot cover what we must do.

The CLI maps these to exit codes at the edge only.  No message here ever contains a token.
"""

from __future__ import annotations


class ShardctlError(Exception):
    """Base of every deliberate shardctl error."""


class ConfigurationError(ShardctlError, ValueError):
    """The operator's configuration or arguments are invalid."""


class PayloadError(ConfigurationError):
    """A gateway command could not be built: a field is invalid or the frame is too big."""


class ProtocolError(ShardctlError):
    """The remote end broke the gateway protocol (bad frame, corrupt compression)."""


class DiscordError(ShardctlError):
    """Discord refused a request or closed a session for good."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class GatewayFatalError(DiscordError):
    """The gateway closed with a code that forbids reconnecting with the same settings."""


class AuthenticationError(GatewayFatalError):
    """The token was rejected (REST 401 or gateway close 4004)."""


class DisallowedIntentsError(GatewayFatalError):
    """Privileged intents were requested that the application may not use (close 4014)."""

    def __init__(self, message: str, *, code: int | None = None,
                 intents: tuple[str, ...] = ()) -> None:
        super().__init__(message, code=code)
        self.intents = intents


class InvalidIntentsError(GatewayFatalError):
    """The intents value is not a valid bitfield (close 4013)."""


class ShardingError(GatewayFatalError):
    """Invalid shard (4010) or sharding required (4011): re-plan with a fresh /gateway/bot."""


class RateLimitedError(DiscordError):
    """REST answered 429 and retrying would exceed our bounds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, code=429)
        self.retry_after = retry_after


class SessionBudgetError(ShardctlError):
    """session_start_limit.remaining is smaller than the identifies we need."""
