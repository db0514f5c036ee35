"""Where ``shardctl run`` gets the bot token, and how each source is kept private.

- ``DISCORD_TOKEN`` (or ``SHARDCTL_TOKEN``) in the environment: private to this user's
  processes (``/proc/PID/environ`` is mode 0400).
- ``--token-file PATH``: read once at start; refused when group or others may read it, as
  ssh refuses a readable private key.  ``-`` reads one line from stdin.
- ``--token``: still accepted, but argv is readable by every local user (``ps``), so it
  warns once.

When two sources give a token, the one click ranks higher wins (command line >
environment > configuration file); two from the same rank are a usage error, since
neither is clearly meant.  The token's text never appears in a message.
"""

from __future__ import annotations

import functools
import os
import stat
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import click
from click.core import ParameterSource

__all__ = ["TokenFile", "TokenFileType", "check_token_option", "token_file_option",
           "with_token_file"]

#: A Discord token is about 72 characters; anything much longer is not one.
MAX_TOKEN_FILE_BYTES: Final = 4096
ARGV_WARNING: Final = (
    "shardctl: warning: --token puts the token in the command line, which every local user "
    "can read (ps, /proc/PID/cmdline); use DISCORD_TOKEN or --token-file instead")
_RANK: Final = {ParameterSource.COMMANDLINE: 0, ParameterSource.ENVIRONMENT: 1,
                ParameterSource.DEFAULT_MAP: 2}


class TokenFile:
    """A token read from a file; shows as its path (``shardctl config`` prints it)."""

    __slots__ = ("path", "token")

    def __init__(self, path: str, token: str) -> None:
        self.path = path
        self.token = token

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"TokenFile({self.path!r})"


if TYPE_CHECKING:  # click >= 8.2 types ParamType by its value; older click is not generic
    _TokenFileParam = click.ParamType["TokenFile", Any]
else:
    _TokenFileParam = click.ParamType


class TokenFileType(_TokenFileParam):
    """``PATH`` or ``-`` (stdin): read the token now, refusing a file others may read."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> TokenFile:
        if isinstance(value, TokenFile):
            return value
        if not isinstance(value, str | os.PathLike) or not str(value):
            self.fail(f"expected a file path or -, got {value!r}", param, ctx)
        path = str(value)
        # Read once per invocation: the configuration file's check converts it too.
        read: dict[str, TokenFile] = {} if ctx is None else ctx.meta.setdefault(
            "shardctl.token_files", {})
        if path in read:
            return read[path]
        try:
            text = _read_stdin() if path == "-" else _read_private_file(path)
            token = _one_token(text, "stdin" if path == "-" else path)
        except ValueError as exc:  # messages name the file, never what it holds
            self.fail(str(exc), param, ctx)
        read[path] = TokenFile(path, token)
        return read[path]


def _read_stdin() -> str:
    line = sys.stdin.readline(MAX_TOKEN_FILE_BYTES + 1)
    if not line.strip():
        raise ValueError("no token on stdin (expected one line)")
    return line


def _read_private_file(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        # Judged on the open file, not the name, so a swap after the check changes nothing;
        # a symlink (a mounted secret) is judged by its target.
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            raise ValueError(f"{path} is a directory; expected the file holding the token")
        if mode & 0o077:
            raise ValueError(
                f"{path} can be read or changed by other users (mode {mode:04o}): "
                f"chmod 600 {path}")
        data = _read_up_to(fd, MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{path} does not hold a token (not text)") from None


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _one_token(text: str, where: str) -> str:
    token = text.strip()
    if len(text) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(f"{where} holds more than {MAX_TOKEN_FILE_BYTES} bytes: not a token")
    if not token:
        raise ValueError(f"{where} is empty")
    if any(c.isspace() or not c.isprintable() for c in token.removeprefix("Bot ")):
        raise ValueError(f"{where} must hold the token alone, on one line")
    return token


def check_token_option(ctx: click.Context, param: click.Parameter, value: str | None
                       ) -> str | None:
    """``--token`` callback: refuse a blank token, and warn once when it came from the
    command line."""
    assert param.name is not None
    if value is not None and not value.strip():
        raise click.BadParameter("the token is empty", ctx, param)
    if value is not None and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        click.echo(ARGV_WARNING, err=True)
    return value


def choose_token(ctx: click.Context, token: str | None, token_file: TokenFile | None
                 ) -> str | None:
    """The token ``run`` uses: the higher-ranked source of ``--token`` and ``--token-file``."""
    if token_file is None:
        return token
    if token is None:
        return token_file.token
    rank_token = _RANK.get(ctx.get_parameter_source("token"), 3)  # type: ignore[arg-type]
    rank_file = _RANK.get(ctx.get_parameter_source("token_file"), 3)  # type: ignore[arg-type]
    if rank_token == rank_file:
        raise click.UsageError(
            "the token is given twice, by --token (or DISCORD_TOKEN) and by --token-file: "
            "give it one way", ctx)
    return token if rank_token < rank_file else token_file.token


def with_token_file(func: Callable[..., None]) -> Callable[..., None]:
    """Wrap a command body taking ``token``: it also gets ``--token-file``'s value as its
    ``token`` (the option itself is declared next to ``--token``)."""

    @functools.wraps(func)
    def wrapper(*args: Any, token_file: TokenFile | None = None, **kwargs: Any) -> None:
        kwargs["token"] = choose_token(click.get_current_context(), kwargs.get("token"),
                                       token_file)
        func(*args, **kwargs)

    return wrapper


def token_file_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--token-file`` option, declared next to ``--token``."""
    return click.option(
        "--token-file", type=TokenFileType(), default=None, metavar="PATH|-",
        help="read the bot token from this file (mode 0600: refused if other users may "
             "read it), or from stdin with -")
