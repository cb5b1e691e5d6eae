"""The sharding rule: every photo belongs to exactly one shard, the same on every machine."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ConfigError
from engine.shard import UNSHARDED, Shard, photo_key, shard_index
from tests.paths import REPO

# Text keys, plus file names whose bytes are not UTF-8 (as ``str(path)`` gives them).
keys = st.text() | st.binary().map(lambda raw: raw.decode("utf-8", "surrogateescape"))
counts = st.integers(min_value=1, max_value=64)


@given(key=keys, count=counts)
def test_every_key_is_owned_by_exactly_one_shard_of_n(key: str, count: int) -> None:
    owners = [i for i in range(count) if Shard(i, count).owns(key)]
    assert owners == [shard_index(key, count)]


@given(key=keys, count=counts)
def test_the_shard_is_the_documented_sha256_rule(key: str, count: int) -> None:
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    assert shard_index(key, count) == int.from_bytes(digest[:8], "big") % count


def test_pinned_assignments_never_change() -> None:
    # Machines running different versions must still agree: these values are part of the rule.
    keys_ = ("/photos/a.jpg", "/photos/b.jpg", "SKU-1001", "")
    assert [shard_index(k, 2) for k in keys_] == [0, 1, 1, 0]
    assert [shard_index(k, 7) for k in keys_] == [1, 4, 4, 1]


def test_another_process_with_another_hash_seed_assigns_the_same_shards() -> None:
    keys_ = [f"/share/catalogue/{i:05d}.jpg" for i in range(200)]
    script = (
        "import sys; from engine.shard import Shard\n"
        "keys = sys.stdin.read().split()\n"
        "print(''.join('01'[Shard(1, 2).owns(k)] for k in keys))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    other = subprocess.run(
        [sys.executable, "-c", script],
        input="\n".join(keys_),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    assert other == "".join("01"[Shard(1, 2).owns(k)] for k in keys_)


def test_keys_spread_evenly_over_the_shards() -> None:
    spread = Counter(shard_index(f"/photos/q{i:05d}.jpg", 4) for i in range(4000))
    assert sorted(spread) == [0, 1, 2, 3]
    assert all(900 <= n <= 1100 for n in spread.values()), spread


@given(key=keys)
def test_one_shard_of_one_is_unsharded_and_owns_everything(key: str) -> None:
    assert Shard(0, 1) == UNSHARDED
    assert UNSHARDED.owns(key) and not UNSHARDED.sharded


def test_the_stable_key_is_the_sku_when_there_is_one_else_the_path() -> None:
    assert photo_key("/photos/a.jpg", "SKU-7") == "SKU-7"
    assert photo_key("/photos/a.jpg") == photo_key("/photos/a.jpg", "") == "/photos/a.jpg"


@pytest.mark.parametrize(("text", "shard"), [("0/2", Shard(0, 2)), (" 3 / 4 ", Shard(3, 4))])
def test_shard_specs_parse(text: str, shard: Shard) -> None:
    assert Shard.parse(text) == shard
    assert str(shard) == text.replace(" ", "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2/2", "out of range"),
        ("5/3", "out of range"),
        ("0/0", "out of range"),
        ("-1/2", "is not I/N"),
        ("1", "is not I/N"),
        ("a/b", "is not I/N"),
        ("0/2/3", "is not I/N"),
        ("", "is not I/N"),
    ],
)
def test_bad_shard_specs_are_configuration_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Shard.parse(text)


def test_per_shard_file_names_and_the_unsharded_ones_unchanged() -> None:
    shard = Shard(0, 2)
    assert shard.suffix == "-shard-0-of-2"
    assert [shard.file_name(n) for n in ("state.sqlite", ".lock", "_SUCCESS", "manifest.json")] == [
        "state-shard-0-of-2.sqlite",
        ".lock-shard-0-of-2",
        "_SUCCESS-shard-0-of-2",
        "manifest-shard-0-of-2.json",
    ]
    assert [UNSHARDED.file_name(n) for n in ("state.sqlite", ".lock", "_SUCCESS")] == [
        "state.sqlite",
        ".lock",
        "_SUCCESS",
    ]


@given(count=st.integers(min_value=1, max_value=500), data=st.data())
def test_a_file_name_tells_its_shard_back(count: int, data: st.DataObject) -> None:
    shard = Shard(data.draw(st.integers(min_value=0, max_value=count - 1)), count)
    for base in ("state.sqlite", ".lock", "_SUCCESS", "manifest.json"):
        assert Shard.of_file(shard.file_name(base), base) == shard


@pytest.mark.parametrize(
    "name",
    [
        "state.sqlite-wal",
        "state-shard-0-of-2.sqlite-wal",
        "state-shard-2-of-2.sqlite",
        "state-shard-0-of-1.sqlite",
        "state-shard-x-of-2.sqlite",
        "other.sqlite",
    ],
)
def test_names_of_no_shards_checkpoints_are_none(name: str) -> None:
    assert Shard.of_file(name, "state.sqlite") is None
