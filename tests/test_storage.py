"""Where bytes live: URL checks before any call, and the same operations on a local folder and
on a real S3 server on loopback (moto's, through the AWS_* variables a user sets)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import ConfigError, StorageError
from engine.feed import MANIFEST_FILE, SUCCESS_FILE, Feed
from engine.shard import Shard
from engine.state import StateStore
from engine.storage import (
    LocalStore,
    S3Store,
    S3Url,
    check_credentials,
    default_state_dir,
    open_store,
    parse_location,
)
from tests.s3_kit import ACCESS_KEY, SECRET_KEY, S3Bucket, aws_environment

# -- URLs and credentials, checked before any call ----------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("out", Path("out")),
        ("/srv/feeds/nightly", Path("/srv/feeds/nightly")),
        ("./odd:name", Path("./odd:name")),
        ("s3://feeds", S3Url("feeds", "")),
        ("s3://feeds/", S3Url("feeds", "")),
        ("S3://feeds//img1688/nightly/", S3Url("feeds", "img1688/nightly")),
    ],
)
def test_local_paths_and_s3_urls_are_told_apart(text: str, expected: object) -> None:
    assert parse_location(text, "output.dir") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gs://feeds/x", "has the scheme 'gs:'"),
        ("s3a://feeds/x", "has the scheme 's3a:'"),
        ("file:/srv/feeds", "has the scheme 'file:'"),
        ("http://minio:9000/feeds", "has the scheme 'http:'"),
        ("s3:feeds", "has the scheme 's3:'"),
        ("odd:name", "write ./odd:name"),
        ("C:\\feeds", "Windows drive path"),
        ("c:/feeds", "Windows drive path"),
        ("s3://", "names no valid bucket"),
        ("s3://Feeds/x", "names no valid bucket"),
        ("s3://feeds:9000/x", "no port, query or fragment"),
        ("s3://feeds/x?versionId=3", "no port, query or fragment"),
        ("s3://feeds/a/../b", "'.' and '..' are not allowed"),
    ],
)
def test_other_schemes_and_malformed_urls_are_configuration_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^output\.dir: ") as caught:
        parse_location(text, "output.dir")
    assert message in str(caught.value)


def test_credentials_in_a_url_are_refused_without_being_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_location(f"s3://{ACCESS_KEY}:{SECRET_KEY}@feeds/x", "output.dir")
    assert "must not carry credentials" in str(caught.value)
    assert SECRET_KEY not in str(caught.value) and ACCESS_KEY not in str(caught.value)
    with pytest.raises(ConfigError) as other:
        parse_location(f"gs://me:{SECRET_KEY}@feeds/x", "output.dir")
    assert SECRET_KEY not in str(other.value) and "gs://feeds/x" in str(other.value)


URL = S3Url("feeds", "nightly")


@pytest.mark.parametrize(
    "environ",
    [
        {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        {"AWS_PROFILE": "buyers"},
        {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/x"},
        {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"},
    ],
)
def test_any_credential_source_the_aws_sdk_reads_is_accepted(environ: dict[str, str]) -> None:
    check_credentials(environ, "output.dir", URL)


def test_a_shared_credentials_or_config_file_is_a_credential_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        check_credentials({"HOME": str(tmp_path)}, "output.dir", URL)
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "config").write_text("[default]\nregion = us-east-1\n")
    check_credentials({"HOME": str(tmp_path)}, "output.dir", URL)
    elsewhere = tmp_path / "creds"
    elsewhere.write_text("[default]\n")
    check_credentials({"AWS_SHARED_CREDENTIALS_FILE": str(elsewhere)}, "output.dir", URL)


def test_no_credentials_or_half_of_them_name_the_setting_and_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as none:
        check_credentials({"HOME": str(tmp_path)}, "inputs.paths[1]", URL)
    assert str(none.value).startswith("inputs.paths[1]: s3://feeds/nightly is on S3 but no AWS")
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(none.value)
    assert "AWS_PROFILE" in str(none.value)
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID is not set") as half:
        check_credentials({"AWS_SECRET_ACCESS_KEY": SECRET_KEY}, "output.dir", URL)
    assert SECRET_KEY not in str(half.value)


def test_a_bad_endpoint_is_named_without_its_value_being_trusted() -> None:
    environ = {"AWS_PROFILE": "x", "AWS_ENDPOINT_URL": "minio:9000"}
    with pytest.raises(ConfigError, match=r"^AWS_ENDPOINT_URL: not an http"):
        check_credentials(environ, "output.dir", URL)


def test_the_default_state_folder_follows_xdg_and_names_bucket_and_prefix(tmp_path: Path) -> None:
    xdg = {"XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    assert default_state_dir(URL, xdg) == tmp_path / "xdg/img1688/s3/feeds/nightly"
    home = {"HOME": str(tmp_path / "home")}
    assert default_state_dir(S3Url("feeds", ""), home) == (
        tmp_path / "home/.local/state/img1688/s3/feeds"
    )
    with pytest.raises(ConfigError, match=r"set output\.state_dir"):
        default_state_dir(URL, {})


# -- the same operations on both stores -----------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalStore | S3Store]:
    if request.param == "local":
        root = tmp_path / "feed"
        root.mkdir()
        yield LocalStore(root)
        return
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    opened = open_store(f"{bucket.url}/feed", aws_environment(bucket.endpoint))
    assert isinstance(opened, S3Store)
    yield opened


def test_files_are_written_read_listed_and_deleted_alike(store: LocalStore | S3Store) -> None:
    store.write_bytes("a/b/c.json", b"{}")
    store.write_bytes("top.txt", b"hello")
    store.write_bytes("top.txt", b"again")  # replaced whole
    assert store.read_bytes("top.txt") == b"again" and store.read_text("a/b/c.json") == "{}"
    assert store.read_bytes("top.txt", limit=3) == b"aga"
    assert store.read_bytes("nothing") is None and not store.exists("nothing")
    assert [(f.key, f.size) for f in store.list_files("")] == [("a/b/c.json", 2), ("top.txt", 5)]
    assert store.list_files("a") == store.list_files("a/b") != []
    assert store.list_files("nowhere") == []
    store.delete("a/b/c.json")
    store.delete("a/b/c.json")  # a missing file is no error: a crash may have removed it
    assert [f.key for f in store.list_files("")] == ["top.txt"]


def test_a_parquet_file_reads_back_with_pyarrow_as_written(store: LocalStore | S3Store) -> None:
    table = pa.table({"x": [1, 2, 3]})
    store.write_parquet("t/run_date=2026-12-02/p.parquet", table, compression="zstd")
    rows = store.write_parquet_stream(
        "t/run_date=2026-12-03/q.parquet", table.schema, iter([table, table]), compression="zstd"
    )
    filesystem, root = store.filesystem()
    assert pq.read_table(f"{root}/t/run_date=2026-12-02/p.parquet", filesystem=filesystem) == table
    streamed = pq.read_table(f"{root}/t/run_date=2026-12-03/q.parquet", filesystem=filesystem)
    assert rows == streamed.num_rows == 6


def test_a_file_that_fails_while_it_is_written_leaves_nothing(store: LocalStore | S3Store) -> None:
    table = pa.table({"x": [1]})

    def failing() -> Iterator[pa.Table]:
        yield table
        raise StorageError("the source part is unreadable")

    with pytest.raises(StorageError, match="source part is unreadable"):
        store.write_parquet_stream("t/bad.parquet", table.schema, failing())
    with pytest.raises((TypeError, ValueError, pa.ArrowException)):
        store.write_parquet("t/bad2.parquet", table, compression="no-such-codec")
    assert store.list_files("") == []  # no object, no temporary


def test_a_local_marker_is_not_written_into_a_folder_that_is_gone(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"cannot write .*_SUCCESS: No such file"):
        LocalStore(tmp_path / "gone").write_bytes("_SUCCESS", b"")
    assert not (tmp_path / "gone").exists()


def test_an_objects_version_changes_with_its_bytes(s3_bucket: S3Bucket) -> None:
    store = open_store(s3_bucket.url, aws_environment(s3_bucket.endpoint))
    assert isinstance(store, S3Store)
    s3_bucket.put("photos/a.jpg", b"first")
    first = store.version("photos/a.jpg")
    s3_bucket.put("photos/a.jpg", b"other")  # same size, same second, new bytes
    second = store.version("photos/a.jpg")
    assert first is not None and second is not None and first.etag and second.etag
    assert (first.size, second.size) == (5, 5) and first.etag != second.etag
    assert store.version("photos/none.jpg") is None
    assert (store.kind("photos"), store.kind("photos/a.jpg"), store.kind("x")) == (
        "folder",
        "file",
        "missing",
    )


def test_deltalake_options_carry_what_it_needs_and_the_repr_no_secret(s3_bucket: S3Bucket) -> None:
    store = open_store(f"{s3_bucket.url}/t", aws_environment(s3_bucket.endpoint))
    options = store.storage_options()
    assert options["AWS_ALLOW_HTTP"] == "true"
    assert options["AWS_S3_ALLOW_UNSAFE_RENAME"] == "true"
    assert options["AWS_ENDPOINT_URL"] == s3_bucket.endpoint
    assert options["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY  # deltalake needs it: never logged
    assert SECRET_KEY not in repr(store) and SECRET_KEY not in str(store.url)
    assert LocalStore(Path("/x")).storage_options() == {}


def test_an_unreachable_endpoint_is_a_storage_error_naming_the_object(
    refusing_url: str,
) -> None:
    environ = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    store = open_store("s3://feeds/x", environ | {"AWS_ENDPOINT_URL": refusing_url})
    with pytest.raises(StorageError, match=r"^cannot write s3://feeds/x/_SUCCESS: ") as caught:
        store.write_bytes("_SUCCESS", b"")
    assert SECRET_KEY not in str(caught.value)


# -- the feed on S3 -------------------------------------------------------------------------


def s3_feed(bucket: S3Bucket, **options: object) -> Feed:
    return Feed(open_store(f"{bucket.url}/feed", aws_environment(bucket.endpoint)), **options)  # type: ignore[arg-type]


def test_lost_checkpoints_never_empty_the_feed(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    feed = s3_feed(s3_bucket)
    table = pa.table({"x": [1]})
    earlier = feed.write_part("images", "r-lost", "2026-12-01", 1, table)
    with StateStore(tmp_path / "state") as state:  # new checkpoints: the old ones are lost
        run = state.start_run("r-new", "2026-12-02", "{}")
        mine = feed.write_part("images", run.run_id, run.run_date, 1, table)
        state.exported([mine], [])
        crashed = feed.write_part("images", run.run_id, run.run_date, 2, table)  # unregistered
        removed = feed.remove_orphans(state.parts(), state.known_runs())
    key = f"{s3_bucket.url}/feed/images/run_date=2026-12-02/{crashed.name}"
    assert removed == [key]
    assert s3_bucket.exists(f"feed/images/run_date=2026-12-01/{earlier.name}")
    assert s3_bucket.exists(f"feed/images/run_date=2026-12-02/{mine.name}")


def test_a_staging_feed_keeps_its_parts_apart_and_its_markers_at_the_root(
    s3_bucket: S3Bucket,
) -> None:
    feed = s3_feed(s3_bucket, staging=True)
    table = pa.table({"x": [1, 2]})
    part = feed.write_part("matches", "r1", "2026-12-02", 1, table)
    feed.mark_complete({"run_id": "r1"})
    assert s3_bucket.keys("feed") == sorted(
        [
            f"feed/_staging/matches/run_date=2026-12-02/{part.name}",
            f"feed/{SUCCESS_FILE}",
            f"feed/{MANIFEST_FILE}",
        ]
    )
    with feed.open_part("matches", "2026-12-02", part.name) as written:
        assert written.read() == table
    assert feed.read_manifest() == {"run_id": "r1"}
    feed.clear()
    assert s3_bucket.keys("feed") == [f"feed/{MANIFEST_FILE}"]


def test_shards_of_an_s3_feed_lock_in_a_local_folder(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a local lock_dir"):
        s3_feed(s3_bucket, shard=Shard(0, 2))
    shards = [s3_feed(s3_bucket, shard=Shard(i, 2), lock_dir=tmp_path) for i in range(2)]
    for i, shard in enumerate(shards):
        shard.mark_complete({"run_id": f"r{i}", "run_date": "2026-12-02", "files": []})
    assert s3_bucket.exists(f"feed/{SUCCESS_FILE}")
    shards[0].mark_incomplete()
    assert not s3_bucket.exists(f"feed/{SUCCESS_FILE}")
    assert s3_bucket.exists("feed/_SUCCESS-shard-1-of-2")
