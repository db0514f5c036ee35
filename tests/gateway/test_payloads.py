"""Command builders: valid frames out, PayloadError for anything Discord would close on."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.errors import ConfigurationError, PayloadError
from shardctl.gateway import payloads
from shardctl.gateway.payloads import (
    MAX_PAYLOAD_BYTES,
    STATUSES,
    channel_info_frame,
    encode_command,
    heartbeat_frame,
    identify_frame,
    presence,
    presence_frame,
    request_guild_members_frame,
    resume_frame,
    soundboard_sounds_frame,
    validate_presence,
    voice_state_frame,
)

TOKEN = "MTA1.SECRET-TOKEN.value"
GUILD = 41771983423143937


def decode(frame: bytes) -> dict[str, Any]:
    obj = orjson.loads(frame)
    assert set(obj) == {"op", "d"}
    assert len(frame) <= MAX_PAYLOAD_BYTES
    return obj  # type: ignore[no-any-return]


def test_public_names_exist() -> None:
    for name in payloads.__all__:
        assert hasattr(payloads, name)
    assert MAX_PAYLOAD_BYTES == 4096
    assert frozenset({"online", "dnd", "idle", "invisible", "offline"}) == STATUSES


def test_payload_error_is_a_configuration_error() -> None:
    assert issubclass(PayloadError, ConfigurationError)


# -- IDENTIFY -------------------------------------------------------------------------------


def test_identify_has_the_documented_shape_and_defaults() -> None:
    obj = decode(identify_frame(token=TOKEN, intents=33281, shard=(3, 8)))
    assert obj["op"] == 2
    assert obj["d"] == {
        "token": TOKEN,
        "properties": {"os": sys.platform, "browser": "shardctl", "device": "shardctl"},
        "intents": 33281,
        "compress": False,
        "large_threshold": 50,
        "shard": [3, 8],
    }


def test_identify_without_shard_or_presence_omits_them() -> None:
    d = decode(identify_frame(token=TOKEN, intents=0, shard=None))["d"]
    assert "shard" not in d
    assert "presence" not in d


def test_identify_carries_presence_properties_and_options() -> None:
    p = presence("idle", [{"name": "Custom Status", "type": 4, "state": "shard 3/8"}])
    d = decode(identify_frame(
        token=TOKEN, intents=1, shard=[0, 1],  # type: ignore[arg-type]
        properties={"$os": "linux", "$browser": "x", "$device": "x"},
        large_threshold=250, presence=p, compress=True,
    ))["d"]
    assert d["presence"] == p
    assert d["properties"] == {"$os": "linux", "$browser": "x", "$device": "x"}
    assert (d["large_threshold"], d["compress"], d["shard"]) == (250, True, [0, 1])


@pytest.mark.parametrize("threshold", [49, 251, 0, True, 50.0, "50"])
def test_identify_refuses_large_threshold_outside_50_to_250(threshold: object) -> None:
    with pytest.raises(PayloadError, match="large_threshold"):
        identify_frame(token=TOKEN, intents=1, shard=None,
                       large_threshold=threshold)  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [50, 250])
def test_identify_accepts_the_large_threshold_bounds(threshold: int) -> None:
    d = decode(identify_frame(token=TOKEN, intents=1, shard=None, large_threshold=threshold))
    assert d["d"]["large_threshold"] == threshold


@pytest.mark.parametrize("intents", [-1, 1 << 17, True, "513", 1.0])
def test_identify_refuses_intents_discord_closes_4013_for(intents: object) -> None:
    with pytest.raises(PayloadError, match="intents"):
        identify_frame(token=TOKEN, intents=intents, shard=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("shard", [(1, 1), (-1, 2), (0, 0), (2, 2), ("0", 2), (0,), (0, 1, 2),
                                   (True, 2), "01", {0: 1, 1: 2}])
def test_identify_refuses_bad_shard_pairs(shard: object) -> None:
    with pytest.raises(PayloadError, match="shard"):
        identify_frame(token=TOKEN, intents=1, shard=shard)  # type: ignore[arg-type]


@pytest.mark.parametrize("properties", [{"os": "linux", "browser": "x"}, {"os": 1, "browser": "x",
                                        "device": "x"}, ["os", "browser", "device"]])
def test_identify_refuses_incomplete_properties(properties: object) -> None:
    with pytest.raises(PayloadError, match="properties"):
        identify_frame(token=TOKEN, intents=1, shard=None,
                       properties=properties)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["", f"{TOKEN}\n", f" {TOKEN}", None, b"tok"])
def test_identify_refuses_empty_or_padded_tokens(token: object) -> None:
    with pytest.raises(PayloadError, match="token"):
        identify_frame(token=token, intents=1, shard=None)  # type: ignore[arg-type]


def test_identify_compress_must_be_a_bool() -> None:
    with pytest.raises(PayloadError, match="compress"):
        identify_frame(token=TOKEN, intents=1, shard=None, compress=1)  # type: ignore[arg-type]


# -- token hygiene --------------------------------------------------------------------------

_FAILING_BUILDS: list[Callable[[], bytes]] = [
    lambda: identify_frame(token=TOKEN, intents=-1, shard=None),
    lambda: identify_frame(token=TOKEN, intents=1, shard=(5, 2)),
    lambda: identify_frame(token=TOKEN, intents=1, shard=None, large_threshold=10),
    lambda: identify_frame(token=TOKEN, intents=1, shard=None,
                           properties={"os": "x" * 5000, "browser": "b", "device": "d"}),
    lambda: identify_frame(token=TOKEN, intents=1, shard=None,
                           presence={"status": "online"}),
    lambda: identify_frame(token=TOKEN + " ", intents=1, shard=None),
    lambda: identify_frame(token=TOKEN * 200, intents=1, shard=None),
    lambda: resume_frame(token=TOKEN, session_id="", seq=1),
    lambda: resume_frame(token=TOKEN, session_id="abc", seq=-1),
    lambda: resume_frame(token=TOKEN * 200, session_id="abc", seq=1),
    lambda: resume_frame(token="\n" + TOKEN, session_id="abc", seq=1),
]


@pytest.mark.parametrize("build", _FAILING_BUILDS)
def test_payload_errors_never_contain_the_token(build: Callable[[], bytes]) -> None:
    with pytest.raises(PayloadError) as info:
        build()
    text = f"{info.value!s} {info.value!r}"
    assert "SECRET-TOKEN" not in text
    assert TOKEN not in text


# -- RESUME and HEARTBEAT -------------------------------------------------------------------


def test_resume_has_the_documented_shape() -> None:
    obj = decode(resume_frame(token=TOKEN, session_id="9f1c0e7a2b4d", seq=1337))
    assert obj == {"op": 6, "d": {"token": TOKEN, "session_id": "9f1c0e7a2b4d", "seq": 1337}}
    assert decode(resume_frame(token=TOKEN, session_id="x", seq=None))["d"]["seq"] is None


@pytest.mark.parametrize("seq", [-1, True, 1.0, "1"])
def test_resume_refuses_bad_seq(seq: object) -> None:
    with pytest.raises(PayloadError, match="seq"):
        resume_frame(token=TOKEN, session_id="x", seq=seq)  # type: ignore[arg-type]


def test_resume_refuses_a_missing_session_id() -> None:
    with pytest.raises(PayloadError, match="session_id"):
        resume_frame(token=TOKEN, session_id=None, seq=1)  # type: ignore[arg-type]


def test_heartbeat_carries_the_last_sequence_or_null() -> None:
    assert heartbeat_frame(None) == b'{"op":1,"d":null}'
    assert decode(heartbeat_frame(0)) == {"op": 1, "d": 0}


@given(st.integers(0, 2**63 - 1))
def test_heartbeat_is_the_same_json_orjson_would_write(seq: int) -> None:
    assert heartbeat_frame(seq) == orjson.dumps({"op": 1, "d": seq})


@pytest.mark.parametrize("seq", [-1, True, 2.0, "3"])
def test_heartbeat_refuses_non_sequence_values(seq: object) -> None:
    with pytest.raises(PayloadError, match="seq"):
        heartbeat_frame(seq)  # type: ignore[arg-type]


# -- presence -------------------------------------------------------------------------------


def test_presence_default_and_documented_example() -> None:
    assert presence() == {"since": None, "activities": [], "status": "online", "afk": False}
    example = {"since": None, "activities": [{"name": "Custom Status", "type": 4,
                                              "state": "shard 3/8"}],
               "status": "online", "afk": False}
    assert decode(presence_frame(example)) == {"op": 3, "d": example}


@pytest.mark.parametrize("status", sorted(STATUSES))
def test_every_documented_status_is_accepted(status: str) -> None:
    assert decode(presence_frame(presence(status)))["d"]["status"] == status


@pytest.mark.parametrize("status", ["away", "ONLINE", "", None, ["online"]])
def test_unknown_status_is_refused(status: object) -> None:
    with pytest.raises(PayloadError, match="status"):
        presence(status)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", range(6))
def test_activity_types_0_to_5_are_accepted(kind: int) -> None:
    activity = {"name": "n", "type": kind, "url": "https://www.twitch.tv/someone"}
    assert presence(activities=[activity])["activities"] == [activity]


@pytest.mark.parametrize("kind", [-1, 6, True, "0", 1.0, None])
def test_activity_type_outside_0_to_5_is_refused(kind: object) -> None:
    with pytest.raises(PayloadError, match="type"):
        presence(activities=[{"name": "n", "type": kind}])


@pytest.mark.parametrize("url", ["https://twitch.tv/x", "https://www.youtube.com/watch?v=1",
                                 "http://m.youtube.com/x", "https://youtu.be/x"])
def test_streaming_accepts_twitch_and_youtube_links(url: str) -> None:
    activities = presence(activities=[{"name": "n", "type": 1, "url": url}])["activities"]
    assert activities[0]["url"] == url


@pytest.mark.parametrize("url", [None, "", "https://example.com/", "https://evil.com/twitch.tv",
                                 "https://twitch.tv.evil.com/x", "ftp://twitch.tv/x",
                                 "https://nottwitch.tv/x", "twitch.tv/x"])
def test_streaming_refuses_other_urls(url: str | None) -> None:
    activity: dict[str, Any] = {"name": "n", "type": 1}
    if url is not None:
        activity["url"] = url
    with pytest.raises(PayloadError, match="Twitch or YouTube"):
        presence(activities=[activity])


@pytest.mark.parametrize("activities", ["Playing", {"name": "n", "type": 0}, None, 3, b"x"])
def test_activities_must_be_an_array(activities: object) -> None:
    with pytest.raises(PayloadError, match="activities must be an array"):
        presence(activities=activities)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("activity", "match"),
    [({"type": 0}, "name"), ({"name": "n"}, "type"), ({"name": 1, "type": 0}, "name"),
     ({"name": "n", "type": 0, "details": "x"}, "may not set"),
     ({"name": "n", "type": 0, "state": 5}, "state"), ("n", "must be an object")],
)
def test_bad_activities_are_refused(activity: object, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        presence(activities=[activity])  # type: ignore[list-item]


@pytest.mark.parametrize("missing", ["since", "activities", "status", "afk"])
def test_presence_needs_all_four_keys(missing: str) -> None:
    obj: dict[str, Any] = {"since": None, "activities": [], "status": "online", "afk": False}
    del obj[missing]
    with pytest.raises(PayloadError, match=f"missing \\['{missing}'\\]"):
        validate_presence(obj)


def test_presence_refuses_unknown_keys_and_bad_since_afk() -> None:
    base: dict[str, Any] = {"since": None, "activities": [], "status": "online", "afk": False}
    with pytest.raises(PayloadError, match="unknown"):
        validate_presence({**base, "game": None})
    with pytest.raises(PayloadError, match="since"):
        validate_presence({**base, "since": -5})
    with pytest.raises(PayloadError, match="since"):
        validate_presence({**base, "since": 1.5})
    with pytest.raises(PayloadError, match="afk"):
        validate_presence({**base, "afk": 0})
    with pytest.raises(PayloadError, match="presence must be an object"):
        validate_presence([])  # type: ignore[arg-type]


def test_validate_presence_normalises_to_plain_json_types() -> None:
    out = validate_presence({"since": 1700000000000, "activities": ({"name": "n", "type": 0},),
                             "status": "dnd", "afk": True})
    assert out == {"since": 1700000000000, "activities": [{"name": "n", "type": 0}],
                   "status": "dnd", "afk": True}


# -- the 4096-byte limit --------------------------------------------------------------------


def _presence_of_size(total: int) -> dict[str, Any]:
    """A presence whose op 3 frame is exactly ``total`` bytes."""
    base = len(presence_frame(presence(activities=[{"name": "n", "type": 4, "state": ""}])))
    return presence(activities=[{"name": "n", "type": 4, "state": "s" * (total - base)}])


def test_a_frame_of_exactly_4096_bytes_passes() -> None:
    frame = presence_frame(_presence_of_size(4096))
    assert len(frame) == 4096


def test_a_frame_of_4097_bytes_is_refused() -> None:
    with pytest.raises(PayloadError, match="4097 bytes"):
        presence_frame(_presence_of_size(4097))


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    base = len(presence_frame(presence(activities=[{"name": "n", "type": 4, "state": ""}])))
    room = 4096 - base
    fits = presence(activities=[{"name": "n", "type": 4, "state": "\u00e9" * (room // 2)}])
    assert len(presence_frame(fits)) <= 4096
    over = presence(activities=[{"name": "n", "type": 4, "state": "\u00e9" * (room // 2 + 1)}])
    with pytest.raises(PayloadError, match="4002"):
        presence_frame(over)


def test_identify_boundary_at_4096_bytes() -> None:
    def build(n: int) -> bytes:
        return identify_frame(token=TOKEN, intents=1, shard=None,
                              properties={"os": "o" * n, "browser": "b", "device": "d"})
    base = len(build(0))
    assert len(build(4096 - base)) == 4096
    with pytest.raises(PayloadError, match="4097 bytes"):
        build(4097 - base)


def test_encode_command_refuses_unserialisable_values() -> None:
    with pytest.raises(PayloadError, match="cannot be encoded"):
        encode_command(3, {"x": {1, 2}})
    assert encode_command(1, None) == b'{"op":1,"d":null}'


# -- op 4 -----------------------------------------------------------------------------------


def test_voice_state_sends_all_fields_with_snowflakes_as_strings() -> None:
    obj = decode(voice_state_frame(GUILD, "123", self_deaf=True))
    assert obj == {"op": 4, "d": {"guild_id": str(GUILD), "channel_id": "123",
                                  "self_mute": False, "self_deaf": True}}


def test_voice_state_leave_sends_a_null_channel() -> None:
    assert decode(voice_state_frame(str(GUILD), None))["d"]["channel_id"] is None


@pytest.mark.parametrize(("guild", "channel", "match"),
                         [("12a", 1, "guild_id"), (-1, 1, "guild_id"), (1.0, 1, "guild_id"),
                          (True, 1, "guild_id"), (1, "x", "channel_id"), (1, 2**64, "channel_id")])
def test_voice_state_refuses_bad_snowflakes(guild: object, channel: object, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        voice_state_frame(guild, channel)  # type: ignore[arg-type]


def test_voice_state_flags_must_be_bools() -> None:
    with pytest.raises(PayloadError, match="self_mute"):
        voice_state_frame(1, 2, self_mute=1)  # type: ignore[arg-type]


# -- op 8 -----------------------------------------------------------------------------------


def test_request_members_defaults_to_all_members() -> None:
    obj = decode(request_guild_members_frame(GUILD))
    assert obj == {"op": 8, "d": {"guild_id": str(GUILD), "query": "", "limit": 0,
                                  "presences": False}}


def test_request_members_by_prefix_needs_a_limit() -> None:
    d = decode(request_guild_members_frame(GUILD, query="ab", limit=10, nonce="m-7"))["d"]
    assert (d["query"], d["limit"], d["nonce"]) == ("ab", 10, "m-7")
    assert "user_ids" not in d
    with pytest.raises(PayloadError, match="limit is required"):
        request_guild_members_frame(GUILD, query="ab")


def test_request_members_by_user_ids_sends_an_array_of_strings() -> None:
    assert decode(request_guild_members_frame(GUILD, user_ids=5))["d"]["user_ids"] == ["5"]
    d = decode(request_guild_members_frame(GUILD, user_ids=[1, "2"], presences=True))["d"]
    assert d["user_ids"] == ["1", "2"]
    assert d["presences"] is True
    assert "query" not in d


def test_request_members_refuses_query_and_user_ids_together() -> None:
    with pytest.raises(PayloadError, match="not both"):
        request_guild_members_frame(GUILD, query="", limit=0, user_ids=[1])


@pytest.mark.parametrize("user_ids", [[], list(range(1, 102)), [1, "x"], [True], b"12"])
def test_request_members_refuses_bad_user_ids(user_ids: object) -> None:
    with pytest.raises(PayloadError, match="user_ids"):
        request_guild_members_frame(GUILD, user_ids=user_ids)  # type: ignore[arg-type]


def test_request_members_accepts_100_user_ids() -> None:
    ids = [str(GUILD + i) for i in range(100)]
    assert decode(request_guild_members_frame(1, user_ids=ids))["d"]["user_ids"] == ids


def test_nonce_is_limited_to_32_bytes_of_utf8() -> None:
    assert decode(request_guild_members_frame(GUILD, nonce="n" * 32))["d"]["nonce"] == "n" * 32
    with pytest.raises(PayloadError, match="32 bytes"):
        request_guild_members_frame(GUILD, nonce="n" * 33)
    with pytest.raises(PayloadError, match="32 bytes"):
        request_guild_members_frame(GUILD, nonce="\u20ac" * 11)  # 33 bytes, 11 characters


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"limit": -1}, "limit"), ({"query": "a", "limit": True}, "limit"),
     ({"presences": "yes"}, "presences"), ({"nonce": 7}, "nonce"),
     ({"query": 5, "limit": 1}, "query")],
)
def test_request_members_refuses_bad_fields(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        request_guild_members_frame(GUILD, **kwargs)


def test_request_members_needs_a_guild_snowflake() -> None:
    with pytest.raises(PayloadError, match="guild_id"):
        request_guild_members_frame(None)  # type: ignore[arg-type]


# -- op 31 and op 43 ------------------------------------------------------------------------


def test_soundboard_and_channel_info_frames() -> None:
    assert decode(soundboard_sounds_frame([1, "2"])) == {"op": 31, "d": {"guild_ids": ["1", "2"]}}
    assert decode(channel_info_frame(3, ["status"])) == {
        "op": 43, "d": {"guild_id": "3", "fields": ["status"]}}
    with pytest.raises(PayloadError, match="guild_ids"):
        soundboard_sounds_frame([])
    with pytest.raises(PayloadError, match="fields"):
        channel_info_frame(3, ["topic"])
    with pytest.raises(PayloadError, match="fields"):
        channel_info_frame(3, "status")
