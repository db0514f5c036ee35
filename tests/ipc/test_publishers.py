"""Who may publish on events-in: the per-assignment keys (ipc/publishers.py), pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.ipc.publishers import PUBLISH_KEY_SIZE, PublishGrants, new_publish_key


def test_only_the_current_key_of_a_worker_opens_its_shards() -> None:
    grants = PublishGrants()
    key = new_publish_key()
    grants.authorize(2, key, [4, 5])
    assert grants.check(2, key) == {4, 5}
    assert grants.check(2, bytes(PUBLISH_KEY_SIZE)) is None
    assert grants.check(3, key) is None  # the key is the slot's, not anyone's


def test_a_respawned_worker_s_new_key_shuts_the_old_one_out() -> None:
    grants = PublishGrants()
    old, new = new_publish_key(), new_publish_key()
    grants.authorize(0, old, [0])
    grants.authorize(0, new, [0])
    assert grants.check(0, old) is None
    assert grants.check(0, new) == {0}


def test_the_same_process_keeps_its_old_key_until_it_uses_the_new_one() -> None:
    grants = PublishGrants()
    old, new = new_publish_key(), new_publish_key()
    grants.authorize(0, old, [0])
    grants.authorize(0, new, [0, 1], same_process=True)
    assert grants.check(0, old) == {0}  # batches it sealed before: its old shards only
    assert grants.check(0, new) == {0, 1}
    assert grants.check(0, old) is None  # switched: nothing older can follow


def test_two_adoptions_before_the_switch_keep_both_old_keys() -> None:
    grants = PublishGrants()
    k1, k2, k3 = new_publish_key(), new_publish_key(), new_publish_key()
    grants.authorize(0, k1, [0])
    grants.authorize(0, k2, [0, 1], same_process=True)
    grants.authorize(0, k3, [0, 1, 2], same_process=True)
    assert grants.check(0, k1) == {0}  # sealed before the first adoption, still in flight
    assert grants.check(0, k2) == {0, 1}
    assert grants.check(0, k3) == {0, 1, 2}
    assert grants.check(0, k1) is None and grants.check(0, k2) is None


def test_a_revoked_worker_publishes_nothing() -> None:
    grants = PublishGrants()
    key = new_publish_key()
    grants.authorize(1, key, [1])
    grants.revoke(1)
    assert grants.check(1, key) is None
    assert not grants.known(1)


def test_keys_have_one_size() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PublishGrants().authorize(0, b"short", [0])
    assert len({new_publish_key() for _ in range(100)}) == 100


_ops = st.lists(st.tuples(st.sampled_from(["authorize", "same", "revoke", "check"]),
                          st.integers(0, 2), st.integers(0, 3)), max_size=40)


@given(_ops)
def test_a_key_opens_exactly_what_its_latest_assignments_allow(
        ops: list[tuple[str, int, int]]) -> None:
    """Against a model: every check answers what the rules in the module docstring say."""
    grants = PublishGrants()
    keys = [new_publish_key() for _ in range(4)]
    current: dict[int, tuple[int, frozenset[int]]] = {}
    previous: dict[int, list[tuple[int, frozenset[int]]]] = {}
    for n, (op, worker, k) in enumerate(ops):
        shards = frozenset({worker, n})
        if op in ("authorize", "same"):
            grants.authorize(worker, keys[k], shards, same_process=op == "same")
            if op == "same" and worker in current:
                previous[worker] = [*previous.get(worker, []), current[worker]][-8:]
            else:
                previous.pop(worker, None)
            current[worker] = (k, shards)
        elif op == "revoke":
            grants.revoke(worker)
            current.pop(worker, None)
            previous.pop(worker, None)
        else:
            expected: frozenset[int] | None = None
            if worker in current and keys[current[worker][0]] == keys[k]:
                expected = current[worker][1]
                previous.pop(worker, None)
            elif worker in current:
                expected = next((shards for key, shards in previous.get(worker, [])
                                 if key == k), None)
            assert grants.check(worker, keys[k]) == expected
