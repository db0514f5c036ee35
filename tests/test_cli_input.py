"""Bad input at the CLI (issue 12): one line naming the option, a documented exit code, no
traceback, and nothing started before the configuration is known good.

Most cases run in-process with click's CliRunner (a wrong value must be refused before any
command body starts a server, so nothing is left running); a few run the real console entry
as a subprocess, the way an operator meets them.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardctl.cli import main

#: Variables that would feed `run` values from this test's environment.
CLEAN_ENV: dict[str, str | None] = {
    "DISCORD_TOKEN": None, "SHARDCTL_TOKEN": None, "SHARDCTL_TOKEN_FILE": None,
    "SHARDCTL_CONFIG": None, "SHARDCTL_API_URL": None, "SHARDCTL_KEYS": None,
    "SHARDCTL_LOG_FORMAT": None, "SHARDCTL_LOG_LEVEL": None,
    "SHARDCTL_EVENTS_ENDPOINT": None, "SHARDCTL_CONTROL_ENDPOINT": None,
    "SHARDCTL_LIMITER_BIND": None, "SHARDCTL_SUPERVISOR": None,
}


def invoke(args: list[str], tmp: Path, **env: str | None) -> Result:
    """Run ``shardctl ARGS`` in-process with a private runtime directory."""
    environment = {**CLEAN_ENV, "SHARDCTL_RUNTIME_DIR": str(tmp / "run"), **env}
    return CliRunner().invoke(main, args, env=environment)


def assert_usage_error(result: Result, option: str) -> None:
    """Exit 2, a message naming ``option``, and no exception escaping the command."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert option in result.output, result.output


@contextmanager
def idle_listener() -> Iterator[socket.socket]:
    """A TCP listener nobody serves: a connection would sit in its backlog, so a
    non-blocking accept() tells whether anything tried to reach it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def api_url(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}/api/v10"


# -- the cases issue 12 lists -------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "-inf"])
def test_identify_interval_out_of_range_is_a_usage_error_without_a_token(
        tmp_path: Path, value: str) -> None:
    result = invoke(["run", f"--identify-interval={value}"], tmp_path)
    assert_usage_error(result, "--identify-interval")


def test_status_with_a_junk_control_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["status", "--control-endpoint", "junk"], tmp_path)
    assert_usage_error(result, "--control-endpoint")
    assert "tcp://HOST:PORT" in result.output  # says what is accepted


def test_events_with_a_junk_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["events", "--endpoint", "junk"], tmp_path)
    assert_usage_error(result, "--endpoint")


def test_a_metrics_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with idle_listener() as api, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke(["run", "--api-url", api_url(api), "--metrics-port", str(port)],
                        tmp_path, DISCORD_TOKEN="t0ken-abc")
        assert_usage_error(result, "--metrics-port")
        assert str(port) in result.output
        assert nobody_connected(api), "GET /gateway/bot was sent before the check"


def test_an_unresolvable_metrics_host_is_refused_before_anything_starts(
        tmp_path: Path) -> None:
    with idle_listener() as api:
        result = invoke(["run", "--api-url", api_url(api), "--metrics-port", "0",
                         "--metrics-host", "no-such-host.invalid"],
                        tmp_path, DISCORD_TOKEN="t0ken-abc")
        assert_usage_error(result, "--metrics-host")
        assert nobody_connected(api)


@pytest.mark.parametrize("url", ["http://[x", "ftp://discord.com/api", "discord.com",
                                 "https://", "http://127.0.0.1:99999/api", ""])
def test_a_malformed_api_url_is_a_usage_error(tmp_path: Path, url: str) -> None:
    result = invoke(["run", "--api-url", url], tmp_path, DISCORD_TOKEN="t0ken-abc")
    assert_usage_error(result, "--api-url")
    assert "t0ken-abc" not in result.output


def test_an_api_url_without_a_token_is_refused_not_replaced_by_the_sandbox(
        tmp_path: Path) -> None:
    result = invoke(["run", "--api-url", "https://discord.com/api/v10"], tmp_path)
    assert_usage_error(result, "--api-url")
    assert "needs a token" in result.output
    assert "sandbox API at" not in result.output


def test_a_second_run_in_the_same_runtime_directory_is_refused_before_anything_starts(
        tmp_path: Path) -> None:
    import zmq

    from shardctl.ipc import endpoints

    run_dir = endpoints.runtime_dir(tmp_path / "run")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    holder = context.socket(zmq.ROUTER)
    try:
        with idle_listener() as api, \
                endpoints.bind(holder, endpoints.ipc_endpoint("control.sock", run_dir)):
            result = invoke(["run", "--api-url", api_url(api)], tmp_path,
                            DISCORD_TOKEN="t0ken-abc")
            assert_usage_error(result, "SHARDCTL_RUNTIME_DIR")
            assert "control.sock" in result.output and "another" in result.output
            assert nobody_connected(api)
    finally:
        holder.close(0)
        context.term()


def test_an_ipc_endpoint_in_a_missing_directory_is_refused_before_anything_starts(
        tmp_path: Path) -> None:
    with idle_listener() as api:
        result = invoke(["run", "--api-url", api_url(api), "--events-endpoint",
                         f"ipc://{tmp_path}/no-such-dir/events.sock"], tmp_path,
                        DISCORD_TOKEN="t0ken-abc")
        assert_usage_error(result, "--events-endpoint")
        assert "does not exist" in result.output
        assert nobody_connected(api)


def test_a_runtime_directory_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (["status"], ["run"]):
        result = invoke(args, tmp_path, SHARDCTL_RUNTIME_DIR=str(blocker / "run"))
        assert_usage_error(result, "SHARDCTL_RUNTIME_DIR")
        assert str(blocker / "run") in result.output


def test_keys_generate_into_an_unwritable_directory_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = invoke(["keys", "generate", "--dir", str(blocker / "keys")], tmp_path)
    assert_usage_error(result, "--dir")


@pytest.mark.parametrize("name", ["../x", "", ".hidden", "server", "a/b"])
def test_keys_generate_with_a_bad_client_name_is_a_usage_error(
        tmp_path: Path, name: str) -> None:
    result = invoke(["keys", "generate", "--dir", str(tmp_path / "keys"), "--client", name],
                    tmp_path)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"invalid client key name {name!r}" in result.output
    assert not (tmp_path / "keys").exists()  # refused before anything was written


# -- the same cases as an operator meets them: the console entry in a subprocess ----------


@pytest.mark.slow
@pytest.mark.parametrize(("args", "option"), [
    (["run", "--identify-interval", "-1"], "--identify-interval"),
    (["run", "--identify-interval", "nan"], "--identify-interval"),
    (["status", "--control-endpoint", "junk"], "--control-endpoint"),
    (["events", "--endpoint", "junk"], "--endpoint"),
    (["run", "--token", "t0ken-abc", "--api-url", "http://[x"], "--api-url"),
])
def test_the_console_entry_prints_one_error_line_and_exits_2(
        tmp_path: Path, args: list[str], option: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "SHARDCTL_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "shardctl.cli", *args], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1, result.stderr
    assert option in errors[0]
    assert "t0ken-abc" not in result.stderr


# -- every command, every option: wrong values drawn by hypothesis ------------------------
#
# Each strategy draws only values the option must refuse.  A command that accepted one
# would go on to start something: the base arguments make that end fast and visibly (run
# asks an API on a closed port and exits 8, status times out and exits 3), never silently.

_SETTINGS = settings(max_examples=12, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])
_BLANKS = st.sampled_from(["", " ", "\t"])
_JUNK = st.text(max_size=24).filter(lambda s: "://" not in s)
_NUMBER_JUNK = st.sampled_from(["x", "1.5.2", "5s", "--1", "0x10", "1_0_", "½"]) | _BLANKS


def _floats_not_in(low: float, high: float | None) -> st.SearchStrategy[str]:
    """Text of numbers outside ``(low, high]``, non-finite ones, and junk."""
    outside = st.floats(max_value=low) | (
        st.floats(min_value=high, exclude_min=True) if high is not None else st.nothing())
    return (st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999"])
            | outside.map(repr) | _NUMBER_JUNK)


def _ints_outside(low: int, high: int | None = None) -> st.SearchStrategy[str]:
    outside = st.integers(max_value=low - 1) | (
        st.integers(min_value=high + 1) if high is not None else st.nothing())
    return outside.map(str) | st.sampled_from(["1.5", "nan", "1e3"]) | _NUMBER_JUNK


def _endpoints(*, bind: bool) -> st.SearchStrategy[str]:
    bad_port = (st.integers(max_value=0) | st.integers(min_value=65536)).map(str) | st.text(
        alphabet="abc-+ .#", min_size=1, max_size=6)
    bad_host = st.text(alphabet=" @!#$[]{}/\\\"'", min_size=1, max_size=6)
    cases = [
        _JUNK,
        st.builds("{}://{}".format, st.sampled_from(["udp", "http", "ws", "zmq", "TCP",
                                                      "IPC", "", "tcp:"]),
                  st.text(max_size=16)),
        st.builds("tcp://127.0.0.1:{}".format, bad_port),
        st.builds("tcp://{}:5555".format, bad_host),
        st.sampled_from(["tcp://127.0.0.1", "tcp://:5555", "ipc://", "inproc://bus",
                         "ipc://a\x00b", " ipc:///tmp/x.sock", "ipc://" + "p" * 120]),
    ]
    if not bind:
        cases.append(st.sampled_from(["tcp://*:5555", "tcp://127.0.0.1:*"]))
    return st.one_of(cases)


_API_URLS = st.one_of(
    _JUNK,
    st.sampled_from(["http://[x", "https://", "https:///api", "ftp://discord.com/api",
                     "ws://discord.com", "https://a:99999/api", "https://a:0/api",
                     "https://exa mple.com/api", "https://a:port/api",
                     # plain http to another host with a token: would send it in clear
                     "http://example.com/api/v10", "http://10.0.0.5/api"]),
    st.builds("{}://{}".format, st.sampled_from(["file", "gopher", "HTTPS:"]),
              st.text(max_size=12)),
)


def _not_one_of(*valid: str) -> st.SearchStrategy[str]:
    return st.text(max_size=12).filter(lambda s: s not in valid)


_INTERVAL = _floats_not_in(0.0, 3600.0)


def _case(base: list[str], option: str, values: st.SearchStrategy[str]
          ) -> tuple[list[str], str, st.SearchStrategy[str]]:
    return base, option, values


_RUN = ["run", "--api-url", "http://127.0.0.1:9/api/v10", "--processes", "1"]
_SANDBOX = ["sandbox", "--port", "0"]
_CASES: dict[str, tuple[list[str], str, st.SearchStrategy[str]]] = {
    "run --identify-interval": _case(_RUN, "--identify-interval", _INTERVAL),
    "run --api-url": _case(_RUN, "--api-url", _API_URLS),
    "run --processes": _case(_RUN, "--processes", _ints_outside(0)),
    "run --remote-workers": _case(_RUN, "--remote-workers", _ints_outside(0)),
    "run --shards": _case(_RUN, "--shards", _ints_outside(1, 1_000_000).filter(
        lambda s: s != "auto")),
    "run --shard-ids": _case(_RUN, "--shard-ids", st.sampled_from(
        ["", "x", "3-1", "-1", "1-", "0-1000000", "a,b", " , "]) | st.integers(
        min_value=1_000_000).map(str)),
    "run --intents": _case(_RUN, "--intents", st.sampled_from(
        ["NOT_AN_INTENT", "GUILDS,NOPE", "-1", "0x10", "1e3"]) | st.integers(
        min_value=1 << 26).filter(lambda n: n & ~0x331FFFF).map(str)),
    "run --compression": _case(_RUN, "--compression",
                               _not_one_of("zlib-stream", "zstd-stream", "none")),
    "run --events-endpoint": _case(_RUN, "--events-endpoint", _endpoints(bind=True)),
    "run --events-batch-endpoint": _case(_RUN, "--events-batch-endpoint",
                                         _endpoints(bind=True)),
    "run --events-batch-window-ms": _case(_RUN, "--events-batch-window-ms", st.sampled_from(
        ["-1", "101", "nan", "inf", "1ms"])),
    "run --publish-window-ms": _case(_RUN, "--publish-window-ms", st.sampled_from(
        ["-1", "101", "nan", "inf", "1ms"])),
    "run --control-endpoint": _case(_RUN, "--control-endpoint", _endpoints(bind=True)),
    "run --limiter": _case(_RUN, "--limiter", _endpoints(bind=False)),
    "run --log-level": _case(_RUN, "--log-level",
                             _not_one_of("DEBUG", "INFO", "WARNING", "ERROR")),
    "run --log-format": _case(_RUN, "--log-format", _not_one_of("text", "json")),
    "run --metrics-port": _case(_RUN, "--metrics-port", _ints_outside(0, 65535)),
    "run --metrics-host": _case([*_RUN, "--metrics-port", "0"], "--metrics-host",
                                st.from_regex(r"[a-z]{1,12}\.invalid", fullmatch=True)),
    "run --token": _case(_RUN, "--token", _BLANKS),
    "run --identify-margin-ms": _case(_RUN, "--identify-margin-ms",
                                      _floats_not_in(-1e-9, None)),
    "run --identify-margin-percent": _case(_RUN, "--identify-margin-percent",
                                           _floats_not_in(-1e-9, 100.0)),
    "run --limiter-timeout": _case(_RUN, "--limiter-timeout", _floats_not_in(0.0, None)),
    "run --reshard-check-interval": _case(_RUN, "--reshard-check-interval",
                                          _floats_not_in(0.0, 86400.0)),
    "reshard --shards": _case(["reshard", "--timeout", "0.5"], "--shards", st.sampled_from(
        ["", "x", "-1", "0", "1.5", "auto ", "AUTO", "٣", "1000001"])),
    "reshard --control-endpoint": _case(["reshard", "--timeout", "0.5"], "--control-endpoint",
                                        _endpoints(bind=False)),
    "reshard --timeout": _case(["reshard"], "--timeout", _floats_not_in(0.0, None)),
    "run --drain-timeout": _case(_RUN, "--drain-timeout", _floats_not_in(-1e-9, 3600.0)),
    "config --identify-interval": _case(["config"], "--identify-interval", _INTERVAL),
    "config --control-endpoint": _case(["config"], "--control-endpoint",
                                       _endpoints(bind=True)),
    "status --control-endpoint": _case(["status", "--timeout", "0.5"], "--control-endpoint",
                                       _endpoints(bind=False)),
    "status --timeout": _case(["status"], "--timeout", _floats_not_in(0.0, None)),
    "events --endpoint": _case(["events", "-n", "1"], "--endpoint", _endpoints(bind=False)),
    "events --shard": _case(["events", "-e", "ipc:///tmp/none.sock"], "--shard",
                            _ints_outside(0)),
    "events --count": _case(["events", "-e", "ipc:///tmp/none.sock"], "--count",
                            _ints_outside(1)),
    "events --type": _case(["events", "-e", "ipc:///tmp/none.sock"], "--type",
                           st.sampled_from(["", "x" * 65, "A\x00B"])),
    "limiter --bind": _case(["limiter"], "--bind", _endpoints(bind=True)),
    "limiter --identify-interval": _case(["limiter", "--sandbox"], "--identify-interval",
                                         _INTERVAL),
    "limiter --identify-margin-ms": _case(["limiter"], "--identify-margin-ms",
                                          _floats_not_in(-1e-9, None)),
    "limiter --identify-margin-percent": _case(["limiter"], "--identify-margin-percent",
                                               _floats_not_in(-1e-9, 100.0)),
    "limiter --max-concurrency": _case(["limiter"], "--max-concurrency", _ints_outside(1)),
    "limiter --remaining": _case(["limiter"], "--remaining", _ints_outside(0)),
    "limiter --reset-after": _case(["limiter", "--remaining", "5"], "--reset-after",
                                   _ints_outside(0)),
    "sandbox --port": _case(["sandbox"], "--port", _ints_outside(0, 65535)),
    "sandbox --host": _case(_SANDBOX, "--host",
                            st.from_regex(r"[a-z]{1,12}\.invalid", fullmatch=True)),
    "sandbox --identify-interval": _case(_SANDBOX, "--identify-interval",
                                         _floats_not_in(-1e-9, None)),
    "sandbox --heartbeat-tolerance": _case(_SANDBOX, "--heartbeat-tolerance",
                                           _floats_not_in(-1e-9, None)),
    "sandbox --shard-count": _case(_SANDBOX, "--shard-count", _ints_outside(0)),
    "sandbox --zlib-split": _case(_SANDBOX, "--zlib-split", _ints_outside(0)),
    "sandbox --routing": _case(_SANDBOX, "--routing", _not_one_of("every", "newest")),
    "worker --supervisor": _case(["worker"], "--supervisor", _endpoints(bind=False)),
}
_SNOWFLAKES = _ints_outside(0, 2**64 - 1) | st.sampled_from(["12a", "1 2", "+1", "٣"])
_NATS_URLS = st.sampled_from(
    ["junk", "http://127.0.0.1:4222", "nats://", "nats://127.0.0.1", "nats://h:0",
     "nats://h:99999", "nats://h:4222,", ",", "nats://h:4222/path", "nats://h:port",
     "tls://:4222", " "])
_STREAM_NAMES = st.sampled_from(["", "a.b", "a b", "x" * 65, "a*", "a>", "a/b"])
_PREFIXES = st.sampled_from(["", "a..b", ".a", "a.", "a.*", "a b", "a.>", "p" * 129])
_EVENTS_STREAM = ["events", "--stream", "nats://127.0.0.1:9", "-n", "1"]
_CASES.update({
    "run --stream": _case(_RUN, "--stream", _NATS_URLS),
    "run --stream-name": _case(_RUN, "--stream-name", _STREAM_NAMES),
    "run --stream-prefix": _case(_RUN, "--stream-prefix", _PREFIXES),
    "run --stream-max-age": _case(_RUN, "--stream-max-age", _floats_not_in(1 - 1e-9, None)),
    "run --stream-max-bytes": _case(_RUN, "--stream-max-bytes", _ints_outside(1 << 20)),
    "run --stream-replicas": _case(_RUN, "--stream-replicas", _ints_outside(1, 5)),
    "run --stream-buffer": _case(_RUN, "--stream-buffer", _ints_outside(100)),
    "events --stream": _case(["events", "-n", "1"], "--stream", _NATS_URLS),
    "events --durable": _case(_EVENTS_STREAM, "--durable", _STREAM_NAMES),
    "events --stream-name": _case(_EVENTS_STREAM, "--stream-name", _STREAM_NAMES),
    "events --stream-prefix": _case(_EVENTS_STREAM, "--stream-prefix", _PREFIXES),
    "events --ack-wait": _case(_EVENTS_STREAM, "--ack-wait", _floats_not_in(0.5 - 1e-9, None)),
    "nats --port": _case(["nats"], "--port", _ints_outside(1, 65535)),
    "nats --store-dir": _case(["nats", "--port", "1"], "--store-dir",
                              st.sampled_from(["/dev/null/x"])),
})
_SEND = {"send status": ["send", "status", "--status", "idle"],
         "send voice": ["send", "voice", "--guild", "1", "--leave"],
         "send members": ["send", "members", "--guild", "1"]}
for _name, _base in _SEND.items():
    _CASES[f"{_name} --control-endpoint"] = _case([*_base, "--timeout", "0.5"],
                                                  "--control-endpoint", _endpoints(bind=False))
    _CASES[f"{_name} --timeout"] = _case(_base, "--timeout", _floats_not_in(0.0, None))
    _CASES[f"{_name} --stream"] = _case([*_base, "--timeout", "0.5"], "--stream", _NATS_URLS)
_CASES.update({
    "send status --status": _case(["send", "status"], "--status",
                                  _not_one_of("online", "idle", "dnd", "invisible")),
    "send status --shard": _case(_SEND["send status"], "--shard", _ints_outside(0)),
    "send voice --guild": _case(["send", "voice", "--leave"], "--guild", _SNOWFLAKES),
    "send voice --channel": _case(["send", "voice", "--guild", "1"], "--channel", _SNOWFLAKES),
    "send members --guild": _case(["send", "members"], "--guild", _SNOWFLAKES),
    "send members --limit": _case(_SEND["send members"], "--limit", _ints_outside(0, 100_000)),
    "send members --wait": _case(_SEND["send members"], "--wait", _floats_not_in(0.0, 120.0)),
})
_OPERATIONS = {"drain": ["drain", "--worker", "1"], "restart-workers": ["restart-workers"]}
for _name, _base in _OPERATIONS.items():
    _CASES[f"{_name} --control-endpoint"] = _case([*_base, "--timeout", "0.5"],
                                                  "--control-endpoint", _endpoints(bind=False))
    _CASES[f"{_name} --timeout"] = _case(_base, "--timeout", _floats_not_in(0.0, None))
    _CASES[f"{_name} --ready-timeout"] = _case(_base, "--ready-timeout",
                                               _floats_not_in(0.0, 3600.0))
_CASES["drain --worker"] = _case(["drain"], "--worker", _ints_outside(0))


@pytest.fixture
def root_logging() -> Iterator[None]:
    """`run` and `sandbox` configure the root logger when they start: put it back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# A value wrongly accepted would block inside a server's C call, where the default
# signal-based timeout cannot interrupt: the thread method ends the run instead.
@pytest.mark.timeout(60, method="thread")
@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("case", sorted(_CASES))
@_SETTINGS
@given(data=st.data())
def test_every_wrong_value_is_one_usage_line_naming_the_option(
        tmp_path: Path, case: str, data: st.DataObject) -> None:
    base, option, values = _CASES[case]
    value = data.draw(values, label=option)
    result = invoke([*base, option, value], tmp_path, DISCORD_TOKEN="t0ken-xyz")
    assert result.exit_code == 2, (value, result.output)
    assert isinstance(result.exception, SystemExit), (value, result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, (value, result.output)
    assert option in errors[0], (value, result.output)
    assert "t0ken-xyz" not in result.output


@pytest.mark.parametrize(("line", "key"), [
    ("identify-interval = nan", "identify-interval"),
    ("identify-interval = inf", "identify-interval"),
    ("identify-interval = -1.0", "identify-interval"),
    ("identify-interval = 1e300", "identify-interval"),
    ('control-endpoint = "junk"', "control-endpoint"),
    ('limiter = "tcp://127.0.0.1"', "limiter"),
    ("limiter = 5555", "limiter"),
    ('api-url = "http://[x"', "api-url"),
    ('shard-ids = "3-1"', "shard-ids"),
    ("shards = 10000000", "shards"),
    ("metrics-port = 70000", "metrics-port"),
    ("drain-timeout = -1", "drain-timeout"),
    ('drain-timeout = "long"', "drain-timeout"),
    ('token-file = "/nonexistent/token"', "token-file"),
])
def test_a_wrong_value_in_the_config_file_names_the_key_and_the_file(
        tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(line + "\n")
    for command in ("config", "run"):
        result = invoke([command, "--config", str(path)], tmp_path)
        assert_usage_error(result, f"bad value for '{key}'")
        assert str(path) in result.output


def test_each_command_and_option_has_a_wrong_value_case_or_a_reason() -> None:
    # A new option must come with its wrong values here (or be listed as taking anything;
    # an on/off flag has no wrong value).  Paths are checked by tests of their own.
    takes_anything = {
        "run": {"--config", "--token-file", "--state-file", "--keys"},
        "status": {"--keys"},
        "events": {"--keys"},
        "nats": set(),
        "limiter": {"--total", "--keys"},
        "worker": {"--keys", "--name", "--log-level"},
        "send status": {"--keys", "--activity"},
        "send voice": {"--keys"},
        "send members": {"--keys", "--query"},
        "drain": {"--keys"},
        "restart-workers": {"--keys"},
        "reshard": {"--keys"},
    }
    covered = {tuple(name.rsplit(" ", 1)) for name in _CASES}
    for command in ("run", "status", "events", "limiter", "worker", "reshard", "nats", *_SEND,
                    *_OPERATIONS):
        cmd = main
        for word in command.split():
            cmd = cmd.commands[word]  # type: ignore[attr-defined]
        for param in cmd.params:
            if isinstance(param, click.Option) and param.is_flag:
                continue
            flag = max(param.opts, key=len)
            assert (command, flag) in covered or flag in takes_anything[command], \
                f"no wrong-value case for shardctl {command} {flag}"


_ENDPOINTISH = st.one_of(
    st.text(max_size=30),
    st.builds("{}://{}".format, st.sampled_from(["tcp", "ipc", "inproc"]),
              st.text(max_size=30)),
    st.builds("tcp://{}:{}".format,
              st.text(alphabet="ab.-:[]*%19 ", max_size=12), st.text(alphabet="0123456789*-",
                                                                     max_size=6)),
)


@settings(max_examples=300, deadline=None)
@given(_ENDPOINTISH)
def test_an_endpoint_the_cli_accepts_is_one_zmq_accepts(text: str) -> None:
    import click
    import zmq

    from shardctl.cli.params import Endpoint

    for bind in (False, True):
        try:
            value = Endpoint(bind=bind).convert(text, None, None)
        except click.BadParameter:
            continue
        context = zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        try:
            if not bind:  # a bind takes the address; connecting shows libzmq parses it
                sock.connect(value)
        finally:
            sock.close(0)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40),
                 st.builds("{}://{}".format, st.sampled_from(["http", "https"]),
                           st.text(max_size=30))))
def test_an_api_url_the_cli_accepts_is_one_httpx_can_request(text: str) -> None:
    import click
    import httpx

    from shardctl.cli.params import ApiUrl

    try:
        value = ApiUrl().convert(text, None, None)
    except click.BadParameter:
        return
    url = httpx.URL(value.rstrip("/") + "/gateway/bot")
    assert url.scheme in ("http", "https") and url.host


@pytest.mark.parametrize("args", [["--guild", "1"],
                                  ["--guild", "1", "--channel", "2", "--leave"]])
def test_send_voice_needs_exactly_one_of_channel_and_leave(
        tmp_path: Path, args: list[str]) -> None:
    result = invoke(["send", "voice", *args], tmp_path)
    assert_usage_error(result, "--channel")
    assert "--leave" in result.output
