"""Where ``shardctl run`` options come from: command line > environment > TOML file > default.

Every option of ``run`` can be set three ways besides its default:

- on the command line, ``--processes 4``;
- in the environment, ``SHARDCTL_PROCESSES=4`` (the option name, upper case, dashes as
  underscores; the token also reads ``DISCORD_TOKEN``);
- in a TOML file, ``processes = 4`` (the option name without its dashes, ``-`` or ``_``),
  read from ``--config PATH`` (or ``SHARDCTL_CONFIG``), else ``shardctl.toml`` in the working
  directory when there is one.

This is click's own order (command line, environment, ``default_map``, default): the file is
loaded by an eager ``--config`` option into the command's ``default_map``, after checking
that every key names an option and every value is one that option accepts, so a mistake in
the file is reported with the key and the file's path rather than as a bad flag.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import click
from click.core import ParameterSource

from shardctl.cluster import config as cfg
from shardctl.errors import ConfigurationError
from shardctl.stream import settings as stream_settings

#: Looked for in the working directory when neither --config nor SHARDCTL_CONFIG is given.
DEFAULT_CONFIG_FILE: Final = "shardctl.toml"
ENV_PREFIX: Final = "SHARDCTL_"
#: What ``shardctl config`` prints instead of a secret (nothing derived from it).
REDACTED: Final = "***"
#: Options whose value is a secret.
SECRETS: Final = frozenset({"token"})
#: Options that need more than click's type check to be valid (they raise
#: ConfigurationError): checked for file values too, so the error can name the file.
_SEMANTIC: Final[dict[str, Callable[[str], object]]] = {
    "shards": cfg.parse_shards,
    "intents": cfg.parse_intents,
    "compression": cfg.parse_compression,
    "identify_margin_ms": cfg.check_margin_ms,
    "identify_margin_percent": cfg.check_margin_percent,
    "stream": stream_settings.check_servers,
    "stream_name": stream_settings.check_name,
    "stream_prefix": stream_settings.check_prefix,
}
#: The ``[stream]`` table: its keys are the ``stream-*`` options (``url`` is ``stream``).
STREAM_TABLE: Final = "stream"


def env_name(param: click.Parameter) -> str:
    assert param.name is not None
    return ENV_PREFIX + param.name.upper()


def file_key(param: click.Parameter) -> str:
    assert param.name is not None
    return param.name.replace("_", "-")


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params
            if isinstance(p, click.Option) and p.name and p.expose_value
            and p.name != "config"}


def configurable(command: click.Command) -> click.Command:
    """Give every option of ``command`` an environment variable, and add ``--config``."""
    for option in _options(command).values():
        own = env_name(option)
        if option.envvar is None:
            option.envvar = own
        elif isinstance(option.envvar, str) and option.envvar != own:
            option.envvar = [own, option.envvar]  # the historic name keeps working
        option.show_envvar = True
    command.params.insert(0, click.Option(
        ["--config", "config"], type=click.Path(dir_okay=False, path_type=Path),
        envvar="SHARDCTL_CONFIG", show_envvar=True, is_eager=True, expose_value=False,
        callback=_load_config, metavar="PATH",
        help=f"TOML file of option values [default: ./{DEFAULT_CONFIG_FILE} if present]"))
    return command


def _load_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is None:
        candidate = Path(DEFAULT_CONFIG_FILE)
        if not candidate.is_file():
            return
        value = candidate
    ctx.meta["shardctl.config_file"] = value
    try:
        values = load_file(value, ctx.command, ctx)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc), ctx) from None
    ctx.default_map = {**(ctx.default_map or {}), **values}


def load_file(path: Path, command: click.Command, ctx: click.Context) -> dict[str, Any]:
    """The file's values keyed by parameter name, each checked; ConfigurationError names
    the key and the file."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the configuration file: "
                                 f"{exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    data = _flatten_stream_table(path, data)
    options = _options(command)
    known = {file_key(o): o for o in options.values()}
    if any(key.replace("-", "_") in SECRETS for key in data):
        _check_private(path)
    values: dict[str, Any] = {}
    for key, raw in data.items():
        option = known.get(key.replace("_", "-"))
        if option is None:
            raise ConfigurationError(
                f"{path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        assert option.name is not None
        values[option.name] = _check(path, key, option, raw, ctx)
    return values


def _flatten_stream_table(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """``[stream] url = ..., max-age = ...`` → the ``stream``, ``stream-max-age`` keys."""
    table = data.get(STREAM_TABLE)
    if not isinstance(table, dict):
        return data
    flat = {k: v for k, v in data.items() if k != STREAM_TABLE}
    for key, value in table.items():
        name = "stream" if key == "url" else f"stream-{key}"
        if name in flat:
            raise ConfigurationError(f"{path}: {name!r} is set twice (and in [stream])")
        flat[name] = value
    return flat


def _check_private(path: Path) -> None:
    """A file holding the token must be readable by its owner only (as --token-file)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"{path}: holds the token but other users can read or change it (mode "
            f"{mode:04o}): chmod 600 {path}, or move the token to DISCORD_TOKEN or a "
            "token-file")


def _check(path: Path, key: str, option: click.Option, raw: object,
           ctx: click.Context) -> object:
    def bad(why: str) -> ConfigurationError:
        return ConfigurationError(f"{path}: bad value for {key!r}: {why}")

    kind = option.type
    if option.is_flag or isinstance(kind, click.types.BoolParamType):
        if not isinstance(raw, bool):
            raise bad(f"expected true or false, got {raw!r}")
        return raw
    if isinstance(raw, bool | dict | list):
        raise bad(f"expected a single {kind.name} value, got {raw!r}")
    if isinstance(kind, click.types.IntParamType) and not isinstance(raw, int):
        raise bad(f"expected an integer, got {raw!r}")
    if isinstance(kind, click.types.FloatParamType) and not isinstance(raw, int | float):
        raise bad(f"expected a number, got {raw!r}")
    if isinstance(kind, click.types.StringParamType | click.Choice | click.Path):
        raw = str(raw)
    try:
        value = kind.convert(raw, option, ctx)
    except click.BadParameter as exc:
        raise bad(exc.message) from None
    check = _SEMANTIC.get(option.name or "")
    if check is not None:
        try:
            check(str(value))
        except ConfigurationError as exc:
            raise bad(str(exc)) from None
    return raw


def source_of(ctx: click.Context, name: str) -> str:
    """Where the value of ``name`` came from, for ``shardctl config``."""
    source = ctx.get_parameter_source(name)
    if source is ParameterSource.COMMANDLINE:
        return "command line"
    if source is ParameterSource.ENVIRONMENT:
        option = _options(ctx.command)[name]
        envvars = [option.envvar] if isinstance(option.envvar, str) else option.envvar or []
        used = next((e for e in envvars if e in os.environ), None)
        return f"environment {used}" if used else "environment"
    if source is ParameterSource.DEFAULT_MAP:
        return f"file {ctx.meta.get('shardctl.config_file', DEFAULT_CONFIG_FILE)}"
    return "default"


def resolved(ctx: click.Context, values: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """(file key, value with secrets redacted, source) for every option, in flag order."""
    out = []
    for name in _options(ctx.command):
        value = values.get(name)
        if name in SECRETS and value is not None:
            value = REDACTED
        if isinstance(value, Path):
            value = str(value)
        out.append((name.replace("_", "-"), value, source_of(ctx, name)))
    return out


def to_toml_line(key: str, value: Any, source: str) -> str:
    """One ``key = value  # source`` line; unset values are commented out."""
    if value is None:
        return f"# {key} = (not set)  # {source}"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = repr(value)
    else:
        text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{key} = {text}  # {source}"
