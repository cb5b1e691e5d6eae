"""Jobs whose feed and inputs are on object storage, against a real S3 server on loopback.

The server is moto's (``s3_endpoint``, ``s3_bucket`` in conftest.py); the engine reaches it only
through the AWS_* variables a user sets, and the feed is read back with pyarrow's own S3
filesystem, as a data team's reader would. Kills at random moments and at named crash points
are in ``test_s3_kill_resume.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.commands.export import export
from engine.discover import DiscoveryReport, discover
from engine.errors import ConfigError
from engine.feedread import find_run
from engine.jobfile import Inputs, parse_job
from engine.outcome import ExitCode
from engine.runner import run_job
from engine.sandbox import Sandbox
from engine.state import StateStore
from engine.storage import S3Store
from tests.job_kit import creds, image_files, make_job, read_table
from tests.paths import SAMPLES
from tests.s3_kit import SECRET_KEY, S3Bucket

PHOTOS = sorted((SAMPLES / "queries").glob("q00*.jpg"))
"""Nine sample photos: a whole job in a few seconds."""


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS:
        shutil.copy(photo, folder / photo.name)
    return folder


def upload_photos(bucket: S3Bucket, prefix: str) -> list[str]:
    """Put the sample photos under ``prefix``; returns their URLs, sorted."""
    for photo in PHOTOS:
        bucket.put(f"{prefix}/{photo.name}", photo.read_bytes())
    return sorted(f"{bucket.url}/{prefix}/{photo.name}" for photo in PHOTOS)


PARTS_OF_4 = {"part_images": 4}
"""Nine photos make three parts: the feed is written and read as several objects."""


async def test_a_job_writes_its_feed_to_s3_and_publishes_the_manifest_then_success_last(
    s3_bucket: S3Bucket,
    sandbox: Sandbox,
    photos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a local folder named after the URL would appear here
    written: list[str] = []
    upload = S3Store.write_bytes

    def spy(store: S3Store, key: str, data: bytes) -> None:
        written.append(key)
        upload(store, key, data)

    monkeypatch.setattr(S3Store, "write_bytes", spy)
    job = make_job(
        photos, f"{s3_bucket.url}/feeds/nightly", sandbox.url, base=tmp_path, engine=PARTS_OF_4
    )

    outcome = await run_job(job, credentials=creds(sandbox.config))

    assert outcome.exit_code == ExitCode.OK, outcome.message
    images = s3_bucket.feed_rows("feeds/nightly", "images")
    matches = s3_bucket.feed_rows("feeds/nightly", "matches")
    assert Counter(r["query_path"] for r in images) == Counter(str(p) for p in image_files(photos))
    assert len({(r["query_path"], r["item_id"]) for r in matches}) == len(matches) > 0
    manifest = json.loads(s3_bucket.get("feeds/nightly/manifest.json"))
    listed = {f["path"] for f in manifest["files"]}
    parts = {k.removeprefix("feeds/nightly/") for k in s3_bucket.keys("feeds/nightly")}
    assert listed == {p for p in parts if p.endswith(".parquet")}
    assert written[-2:] == ["manifest.json", "_SUCCESS"]
    assert s3_bucket.exists("feeds/nightly/_SUCCESS")
    # The checkpoints stayed on local disk, in the default state folder; nothing else did.
    state_dir = tmp_path / "state-home" / "img1688" / "s3" / s3_bucket.name / "feeds" / "nightly"
    assert (state_dir / "state.sqlite").is_file() and job.out == state_dir
    assert not list(tmp_path.glob("s3*")) and not (tmp_path / "out").exists()
    # The commands given that folder find the feed on S3.
    assert find_run(state_dir).store.url == f"{s3_bucket.url}/feeds/nightly"
    run, sheet = export(state_dir, "csv")
    assert run.run_id == manifest["run_id"] and sheet.rows >= len(images)


async def test_photos_on_s3_are_walked_and_searched_and_only_a_changed_one_again(
    s3_bucket: S3Bucket, sandbox: Sandbox, tmp_path: Path
) -> None:
    urls = upload_photos(s3_bucket, "catalogue/photos")
    s3_bucket.put("catalogue/photos/notes.txt", b"not a photo")
    s3_bucket.put("catalogue/photos/thumbs/small.jpg", PHOTOS[0].read_bytes())
    out = tmp_path / "out"
    job = make_job(
        f"{s3_bucket.url}/catalogue",
        out,
        sandbox.url,
        inputs={"exclude": ["**/thumbs/*"]},
        engine=PARTS_OF_4,
    )

    first = await run_job(job, credentials=creds(sandbox.config))
    searched_first = dict(sandbox.stats()["searches"])
    s3_bucket.put("catalogue/photos/q001.jpg", (SAMPLES / "queries" / "q010.jpg").read_bytes())
    second = await run_job(job, credentials=creds(sandbox.config))

    assert first.exit_code == second.exit_code == ExitCode.OK, (first.message, second.message)
    assert len(searched_first) == len({p.read_bytes() for p in PHOTOS})
    searched = sandbox.stats()["searches"]
    new = {sha: n for sha, n in searched.items() if sha not in searched_first}
    assert list(new.values()) == [1]  # the changed object only; the others were reused
    assert all(searched[sha] == n for sha, n in searched_first.items())
    images = {
        r["query_path"]: r
        for r in read_table(out, "images").to_table().to_pylist()
        if r["run_id"] == second.run_id
    }
    assert sorted(images) == urls
    assert images[f"{s3_bucket.url}/catalogue/photos/q001.jpg"]["reused"] is False
    assert all(r["reused"] for url, r in images.items() if not url.endswith("q001.jpg"))
    with StateStore(out) as state:
        record = state.image(second.run_id, urls[0])
    assert (
        record is not None
        and record.etag
        and record.size == len((SAMPLES / "queries" / "q010.jpg").read_bytes())
    )


async def test_a_missing_input_prefix_is_a_configuration_error_before_any_call(
    s3_bucket: S3Bucket, sandbox: Sandbox, tmp_path: Path
) -> None:
    job = make_job(f"{s3_bucket.url}/nothing-here", tmp_path / "out", sandbox.url)
    outcome = await run_job(job, credentials=creds(sandbox.config))
    assert outcome.exit_code == ExitCode.CONFIG
    assert f"{s3_bucket.url}/nothing-here does not exist" in outcome.message
    assert sandbox.stats()["total_calls"] == 0 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("gs://feeds/nightly", "has the scheme 'gs:'"),
        ("file:///srv/feeds", "has the scheme 'file:'"),
        ("https://bucket.example.com/feeds", "has the scheme 'https:'"),
        ("s3:feeds/nightly", "has the scheme 's3:'"),
        ("C:\\feeds", "is a Windows drive path"),
        ("s3://feeds/nightly", "no AWS credentials are configured"),
    ],
)
def test_a_bad_scheme_or_missing_credentials_is_exit_2_and_creates_nothing(
    output: str,
    expected: str,
    tmp_path: Path,
    write_job: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.aws/credentials there
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))
    monkeypatch.chdir(tmp_path)
    job = write_job(
        inputs={"paths": [str(tmp_path)]},
        output={"dir": output},
        gateway={"endpoint": "sandbox"},
    )
    before = sorted(tmp_path.rglob("*"))

    code = main(["run", str(job)])

    assert code == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "output.dir" in err and expected in err
    assert sorted(tmp_path.rglob("*")) == before  # no folder named after the URL, no state


def test_the_flag_out_is_checked_like_the_file(
    tmp_path: Path,
    write_job: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    job = write_job(
        inputs={"paths": [str(tmp_path)]},
        output={"dir": str(tmp_path / "out")},
        gateway={"endpoint": "sandbox"},
    )
    assert main(["run", str(job), "--out", "gs://elsewhere/x"]) == ExitCode.CONFIG
    assert "output.dir" in capsys.readouterr().err and not list(tmp_path.glob("gs*"))


def test_missing_credentials_say_what_to_set_and_a_secret_is_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {"HOME": str(tmp_path), "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    data = {"inputs": {"paths": ["s3://photos/in"]}, "output": {"dir": str(tmp_path)}}
    with pytest.raises(ConfigError) as only_secret:
        parse_job(data | {"gateway": {"endpoint": "sandbox"}}, base=tmp_path, environ=environ)
    assert "inputs.paths[0]" in str(only_secret.value)
    assert "AWS_ACCESS_KEY_ID is not set" in str(only_secret.value)
    url = f"s3://user:{SECRET_KEY}@feeds/x"
    with pytest.raises(ConfigError) as in_url:
        parse_job(
            {"inputs": {"paths": [str(tmp_path)]}, "output": {"dir": url}}
            | {"gateway": {"endpoint": "sandbox"}},
            base=tmp_path,
            environ={"HOME": str(tmp_path)},
        )
    assert SECRET_KEY not in str(only_secret.value) + str(in_url.value)
    assert "must not carry credentials" in str(in_url.value)


async def test_one_state_folder_serves_one_feed(
    s3_bucket: S3Bucket, sandbox: Sandbox, photos: Path, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    first = make_job(
        photos,
        f"{s3_bucket.url}/a",
        sandbox.url,
        base=tmp_path,
        output={"state_dir": str(state_dir)},
        engine=PARTS_OF_4,
    )
    done = await run_job(first, credentials=creds(sandbox.config))
    other = first.with_overrides(out=f"{s3_bucket.url}/b")
    refused = await run_job(other, credentials=creds(sandbox.config))
    local = await run_job(
        first.with_overrides(out=tmp_path / "local"), credentials=creds(sandbox.config)
    )

    assert done.exit_code == ExitCode.OK and other.out == state_dir
    assert refused.exit_code == local.exit_code == ExitCode.CONFIG
    assert "two feeds must not share one state directory" in refused.message
    assert f"{s3_bucket.url}/a" in refused.message and f"{s3_bucket.url}/b" in refused.message
    assert s3_bucket.keys("b") == [] and not (tmp_path / "local").exists()


async def test_an_s3_walk_takes_named_objects_first_and_a_nested_prefix_once(
    s3_bucket: S3Bucket,
) -> None:
    for key in ("in/b.jpg", "in/a.PNG", "in/notes.txt", "in/sub/c.jpg", "in/sub/skip/d.jpg"):
        s3_bucket.put(key, key.encode())
    url = s3_bucket.url
    inputs = Inputs(
        paths=(),
        urls=(f"{url}/in/sub", f"{url}/in", f"{url}/in/notes.txt", f"{url}/gone"),
        exclude=("**/skip/*",),
    )
    report = DiscoveryReport()
    found = [c async for c in discover(inputs, report)]
    flat = [
        str(c.path)
        async for c in discover(Inputs(paths=(), urls=(f"{url}/in",), recursive=False), report)
    ]

    assert [str(c.path) for c in found] == [
        f"{url}/in/notes.txt",  # named: taken whatever its extension, and first
        f"{url}/in/sub/c.jpg",
        f"{url}/in/a.PNG",
        f"{url}/in/b.jpg",
    ]
    assert flat == [f"{url}/in/a.PNG", f"{url}/in/b.jpg"]
    assert report.missing_inputs == [f"{url}/gone"]
    assert all(c.etag and c.size == len(c.key.encode()) for c in found)
    assert found[1].key == "in/sub/c.jpg" and found[1].store is not None
