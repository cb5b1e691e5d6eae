"""Crash points: the engine dies at each named point of its commit protocol, then resumes.

Kills at random moments almost never land between a part's rename and its registering commit,
the window the exactly-once design exists for. Here the engine (``python -m engine``, with the
embedded sandbox) runs in a subprocess that ends with ``os._exit(137)`` exactly at a named
point, the nth time it is reached: ``tests/crash_kit/sitecustomize.py`` wraps the function of
that point from outside the engine (``IMG1688_CRASH_AT=<point>:<nth>``). Then the same command
runs again without the variable, and the feed must be exactly the uncrashed reference run's:
every photo once, its offers once, no part file the checkpoints do not list, no temporary,
``manifest.json`` listing exactly the files on disk, then ``_SUCCESS``. See docs/testing.md.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from engine.feed import KINDS, MANIFEST_FILE, SUCCESS_FILE, TABLES
from engine.outcome import ExitCode
from engine.state import run_index, snapshot
from tests.job_kit import CRASH_EXIT, Invocation, invoke
from tests.paths import SAMPLES
from tests.test_delta import DELTA_POINTS
from tests.test_s3_kill_resume import S3_POINTS

KIT_REFUSED = 70
CLEANED = "after-orphan-cleanup"
"""The kit's point right after the start-up clean-up, before anything new is written: where a
copy of a crashed output is stopped to see that the clean-up, not an overwrite, removed the
orphans (a resume may write a part under an orphan's name again)."""
PHOTOS = ["q001.jpg", "q002.jpg", "q003.jpg", "q004.jpg", "q005.jpg", "q006.jpg", "q007.jpg"]
PART_IMAGES = 2
"""Eight photos (the seven and a copy of q005) in parts of two: four parts, so that a crash
at the second part leaves one part registered before it and more to write after it."""


@dataclass(frozen=True)
class Setup:
    """What every case shares: the photos, the job file and the uncrashed reference run."""

    photos: Path
    job: Path
    reference: Path
    """The reference run's output directory (never written to after the fixture)."""
    matches: list[tuple[str, int, int]]
    """The reference feed's matches as (query path, rank, item id), sorted."""
    images: list[tuple[str, str, int]]
    """The reference feed's images as (query path, status, offers kept), sorted."""
    answers: int
    """Gateway answers the reference stored: one per distinct photo."""


@dataclass(frozen=True)
class Case:
    """One crash: where, which command, and what must be on disk at that instant."""

    id: str
    point: str
    """A name of ``POINTS`` in tests/crash_kit/sitecustomize.py."""
    nth: int
    command: Literal["run", "reclean"]
    after_reference: bool
    """Start from a copy of the completed reference output (a second run, a re-clean)."""
    orphans: bool
    """Part files on disk that the checkpoints do not list."""
    temps: bool
    """Temporary files on disk (of parts or of markers)."""
    all_exported: bool
    manifest: bool
    success: bool
    run_state: Literal["unfinished", "complete"]
    """The latest run in the checkpoints, as ``img1688 status`` says."""


CASES = [
    Case("part-written-not-renamed", "written-not-renamed", 3, "run", False,
         orphans=False, temps=True, all_exported=False, manifest=False, success=False,
         run_state="unfinished"),
    Case("part-renamed-not-registered", "renamed-not-registered", 3, "run", False,
         orphans=True, temps=False, all_exported=False, manifest=False, success=False,
         run_state="unfinished"),
    Case("both-parts-renamed-not-registered", "before-register", 2, "run", False,
         orphans=True, temps=False, all_exported=False, manifest=False, success=False,
         run_state="unfinished"),
    Case("registered-no-manifest", "before-manifest", 1, "run", False,
         orphans=False, temps=False, all_exported=True, manifest=False, success=False,
         run_state="unfinished"),
    Case("manifest-temp-not-renamed", "manifest-temp-not-renamed", 1, "run", False,
         orphans=False, temps=True, all_exported=True, manifest=False, success=False,
         run_state="unfinished"),
    Case("manifest-no-success", "manifest-no-success", 1, "run", False,
         orphans=False, temps=False, all_exported=True, manifest=True, success=False,
         run_state="unfinished"),
    Case("success-not-recorded", "success-not-recorded", 1, "run", False,
         orphans=False, temps=False, all_exported=True, manifest=True, success=True,
         run_state="unfinished"),
    Case("second-run-superseded-not-deleted", "superseded-not-deleted", 1, "run", True,
         orphans=True, temps=False, all_exported=True, manifest=True, success=False,
         run_state="unfinished"),
    Case("compacted-part-written-not-renamed", "written-not-renamed", 9, "run", False,
         orphans=False, temps=True, all_exported=True, manifest=False, success=False,
         run_state="unfinished"),
    Case("compacted-not-registered", "compacted-not-registered", 1, "run", False,
         orphans=True, temps=False, all_exported=True, manifest=False, success=False,
         run_state="unfinished"),
    Case("compaction-registered-old-parts-not-deleted", "compaction-registered-not-deleted", 1,
         "run", False, orphans=True, temps=False, all_exported=True, manifest=False,
         success=False, run_state="unfinished"),
    Case("changes-written-not-registered", "before-register", 5, "run", False,
         orphans=True, temps=False, all_exported=True, manifest=False, success=False,
         run_state="unfinished"),
    Case("reclean-new-parts-before-swap", "before-register", 1, "reclean", True,
         orphans=True, temps=False, all_exported=True, manifest=True, success=False,
         run_state="complete"),
    Case("reclean-swapped-old-parts-not-deleted", "after-register", 1, "reclean", True,
         orphans=True, temps=False, all_exported=True, manifest=True, success=False,
         run_state="complete"),
]  # fmt: skip


# -- running the engine ------------------------------------------------------------------------


def command(setup: Setup, name: str, out: Path) -> list[str]:
    return ["run", str(setup.job), "--out", str(out)] if name == "run" else ["reclean", str(out)]


# -- reading what is on disk -------------------------------------------------------------------


def registered(out: Path) -> set[str]:
    """The part files the checkpoint database lists, read-only, relative to ``out``."""
    index = run_index(out)
    assert index is not None, f"no checkpoint database in {out}"
    return {f"{p.kind}/run_date={p.run_date}/{p.name}" for p in index.parts}


def feed_files(out: Path) -> set[str]:
    """Every file under the table folders, temporaries included, relative."""
    return {
        str(p.relative_to(out))
        for kind in TABLES
        if (out / kind).is_dir()
        for p in (out / kind).rglob("*")
        if p.is_file()
    }


def temporaries(out: Path) -> set[str]:
    """Temporary files anywhere in ``out``: of parts, and of the manifest and markers."""
    return {str(p.relative_to(out)) for p in out.rglob("*.inprogress")}


def part_temporaries(out: Path) -> set[str]:
    """Temporary part files: the start-up clean-up's to delete (a marker's temporary is
    replaced when the marker is next written)."""
    return {p for p in temporaries(out) if p.startswith(TABLES)}


def identify(path: Path) -> tuple[int, int]:
    """(inode, mtime_ns): a part written again under the same name is another file."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def orphans(out: Path) -> dict[str, tuple[int, int]]:
    """Part files on disk that the checkpoints do not list, each with its :func:`identify`."""
    unlisted = {p for p in feed_files(out) - registered(out) if p.endswith(".parquet")}
    return {p: identify(out / p) for p in unlisted}


def rows(out: Path, kind: str) -> list[dict[str, object]]:
    return ds.dataset(out / kind, format="parquet", partitioning="hive").to_table().to_pylist()


def stable_rows(out: Path) -> tuple[list[tuple], list[tuple]]:
    """The latest run's matches and images on stable columns, sorted; asserts the run's
    partition holds no other run's rows (an earlier same-day run must have been superseded)."""
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    run_id, run_date = manifest["run_id"], manifest["run_date"]
    tables = {kind: rows(out, kind) for kind in KINDS}
    for kind, table in tables.items():
        others = {r["run_id"] for r in table if str(r["run_date"]) == run_date} - {run_id}
        assert not others, f"{kind} of run_date={run_date} still holds rows of runs {others}"
    matches = sorted(
        (r["query_path"], r["rank"], r["item_id"])
        for r in tables["matches"]
        if r["run_id"] == run_id
    )
    images = sorted(
        (r["query_path"], r["status"], r["offers_kept"])
        for r in tables["images"]
        if r["run_id"] == run_id
    )
    return matches, images


def write_job(path: Path, photos: Path) -> Path:
    """The job of every case: the embedded sandbox, fast, several parts, no offer evidence
    (test_kill_resume runs with it); ``--out`` says where."""
    path.write_text(
        f"""
[inputs]
paths = [{json.dumps(str(photos))}]

[output]
dir = {json.dumps(str(path.parent / "unused"))}

[gateway]
protocol = "ocean"
endpoint = "sandbox"
rate = "1000/1s"

[engine]
searches = 4
part_images = {PART_IMAGES}
flush_seconds = 600

[evidence]
enabled = false
""",
        encoding="utf-8",
    )
    return path


# -- the shared reference ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """The photos, the job, and one uncrashed run of it: every case compares with its feed."""
    root = tmp_path_factory.mktemp("crash-points")
    photos = root / "photos"
    (photos / "dup").mkdir(parents=True)
    for name in PHOTOS:
        shutil.copy2(SAMPLES / "queries" / name, photos / name)
    shutil.copy2(SAMPLES / "queries" / "dup" / "q005-copy.jpg", photos / "dup")
    job = write_job(root / "job.toml", photos)
    reference = root / "reference"
    done = invoke("run", str(job), "--out", str(reference))
    assert done.code == ExitCode.OK, done.stderr[-3000:]
    matches, images = stable_rows(reference)
    every_photo = sorted(str(p) for p in photos.rglob("*.jpg"))
    assert [path for path, _, _ in images] == every_photo
    assert all(status == "ok" for _, status, _ in images)
    assert len(matches) == sum(kept for _, _, kept in images) > 0
    # Four parts of each table, compacted into one each on completion; and the changes table.
    assert {p.split("/")[0] for p in registered(reference)} == set(TABLES)
    assert len(registered(reference)) == len(TABLES)
    state = snapshot(reference)
    assert state is not None
    assert state.stored_answers == len({p.read_bytes() for p in photos.rglob("*.jpg")})
    return Setup(photos, job, reference, matches, images, state.stored_answers)


# -- the checks --------------------------------------------------------------------------------


def assert_crashed_at(done: Invocation, point: str, nth: int) -> None:
    assert done.code == CRASH_EXIT, (
        f"the process ended with {done.code}, not at the crash point:\n{done.stderr[-3000:]}"
    )
    assert f"CRASH AT {point} (#{nth})" in done.stderr, done.stderr[-3000:]


def assert_state_at_crash(case: Case, out: Path, photos: int) -> None:
    """What the crash left is what the point promises (the window really was hit), and what
    holds at any instant: the checkpoints list no file that is missing, and a ``_SUCCESS``
    vouches for a manifest that lists exactly the files on disk."""
    assert registered(out) <= feed_files(out), "the checkpoints list a part that is not on disk"
    if (out / SUCCESS_FILE).exists():
        assert_manifest_lists_the_feed(out)
    assert bool(orphans(out)) == case.orphans, (feed_files(out), registered(out))
    assert bool(temporaries(out)) == case.temps, feed_files(out)
    assert (out / MANIFEST_FILE).exists() == case.manifest
    assert (out / SUCCESS_FILE).exists() == case.success
    state = snapshot(out)
    assert state is not None
    assert state.to_json()["state"] == case.run_state
    exported = state.images.get("exported", 0)
    assert (exported == photos) == case.all_exported, state.images


def assert_manifest_lists_the_feed(out: Path) -> dict[str, Any]:
    """``manifest.json`` lists exactly the part files on disk, each with its row count;
    returns it."""
    manifest: dict[str, Any] = json.loads((out / MANIFEST_FILE).read_text())
    listed = {entry["path"]: entry["rows"] for entry in manifest["files"]}
    assert set(listed) == feed_files(out), "the manifest and the files on disk differ"
    for path, count in listed.items():
        assert pq.ParquetFile(out / path).metadata.num_rows == count, path
    return manifest


def assert_exactly_once(setup: Setup, out: Path) -> None:
    """The resumed feed is the reference feed, whole, published, and nothing else is left."""
    assert (out / SUCCESS_FILE).exists()
    assert (out / MANIFEST_FILE).exists()
    assert not temporaries(out)
    assert feed_files(out) == registered(out), "part files on disk and in the checkpoints differ"
    manifest = assert_manifest_lists_the_feed(out)
    state = snapshot(out)
    assert state is not None and state.run is not None
    assert state.to_json()["state"] == "complete"
    assert manifest["run_id"] == state.run.run_id
    # No answer was paid for twice: a search lost in flight stored nothing the first time.
    assert state.stored_answers == setup.answers
    matches, images = stable_rows(out)
    assert manifest["rows"] == {"matches": len(matches), "images": len(images)}
    counts = Counter(path for path, _, _ in images)
    assert set(counts.values()) == {1}, counts
    assert images == setup.images
    assert matches == setup.matches


def assert_cleanup_removes_what_the_crash_left(
    setup: Setup, case: Case, out: Path, probe: Path
) -> None:
    """On a copy of the crashed output, the same command stopped right after its start-up
    clean-up has deleted every orphan and temporary part, and touched no listed part."""
    left = orphans(out)
    shutil.copytree(out, probe)
    listed = {path: identify(probe / path) for path in registered(probe)}
    done = invoke(*command(setup, case.command, probe), crash_at=f"{CLEANED}:1")
    assert_crashed_at(done, CLEANED, 1)
    assert not any((probe / path).exists() for path in left), orphans(probe)
    assert not part_temporaries(probe)
    assert {path: identify(probe / path) for path in registered(probe)} == listed
    assert feed_files(probe) == registered(probe)


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_crash_at_the_point_then_the_same_command_gives_the_reference_feed(
    case: Case, setup: Setup, tmp_path: Path
) -> None:
    """Crash exactly at the case's point; what is on disk is what the point implies; the same
    command again publishes the reference feed, exactly once, with nothing left over."""
    out = tmp_path / "out"
    if case.after_reference:
        shutil.copytree(setup.reference, out)
    args = command(setup, case.command, out)
    photos = len(setup.images)

    crashed = invoke(*args, crash_at=f"{case.point}:{case.nth}")
    assert_crashed_at(crashed, case.point, case.nth)
    assert_state_at_crash(case, out, photos)
    left = orphans(out)
    left_behind = len(left) + len(part_temporaries(out))
    if left_behind:
        assert_cleanup_removes_what_the_crash_left(setup, case, out, tmp_path / "probe")

    resumed = invoke(*args)
    assert resumed.code == ExitCode.OK, resumed.stderr[-3000:]
    assert "CRASH AT" not in resumed.stderr and "crash kit" not in resumed.stderr
    assert_exactly_once(setup, out)
    # No orphan seen at the crash is still there (one of the same name is a new, listed file).
    for path, identity in left.items():
        assert not (out / path).exists() or identify(out / path) != identity, path
    if case.command == "run" and left_behind:
        cleaned = re.search(r"removed (\d+) part file\(s\) left by an interrupted", resumed.stderr)
        assert cleaned is not None and int(cleaned[1]) == left_behind, resumed.stderr[-3000:]


def test_armed_points_never_reached_leave_the_run_untouched(setup: Setup, tmp_path: Path) -> None:
    """The kit is loaded, every point the cases use is armed, and the wrapped functions behave
    as the engine's own: a broken wrapper fails here instead of passing a case uncrashed."""
    points = sorted({case.point for case in CASES} | {CLEANED})
    out = tmp_path / "out"
    done = invoke(*command(setup, "run", out), crash_at=",".join(f"{p}:1000" for p in points))
    assert done.code == ExitCode.OK, done.stderr[-3000:]
    for point in points:
        assert f"crash kit armed: {point} (#1000)" in done.stderr
    assert "CRASH AT" not in done.stderr
    assert_exactly_once(setup, out)


def test_every_point_of_the_kit_has_a_case() -> None:
    """A point added to the kit without a case here would prove nothing."""
    done = invoke("--help", crash_at="nowhere")
    assert done.code == KIT_REFUSED
    known = re.search(r"unknown point 'nowhere'; known: (.+)", done.stderr)
    assert known is not None, done.stderr
    # S3's in test_s3_kill_resume, Delta's in test_delta.
    cases = {case.point for case in CASES} | {CLEANED} | S3_POINTS | DELTA_POINTS
    assert set(known[1].split(", ")) == cases


@pytest.mark.parametrize("value", ["before-manifest:0", "before-manifest:x", "before-manifest,x"])
def test_the_kit_refuses_what_it_cannot_arm(value: str) -> None:
    """A misspelt point or count must stop the process, not arm nothing."""
    done = invoke("--help", crash_at=value)
    assert done.code == KIT_REFUSED
    assert "crash kit:" in done.stderr


def test_a_resume_that_changes_the_feed_first_withdraws_a_success_marker_left_by_a_crash(
    setup: Setup, tmp_path: Path
) -> None:
    """A crash after ``_SUCCESS`` but before the run is recorded complete leaves the run
    unfinished; if a photo arrives before the next invocation, that invocation resumes the run
    and adds its parts. From the first new part on, ``_SUCCESS`` must not stand beside a
    manifest that does not list them."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    shutil.copytree(setup.photos, photos)
    args = ["run", str(write_job(tmp_path / "job.toml", photos)), "--out", str(out)]
    assert_crashed_at(invoke(*args, crash_at="success-not-recorded"), "success-not-recorded", 1)
    shutil.copy2(SAMPLES / "queries" / "q008.jpg", photos)

    changing = invoke(*args, crash_at="after-register")
    assert_crashed_at(changing, "after-register", 1)
    if (out / SUCCESS_FILE).exists():
        assert_manifest_lists_the_feed(out)

    resumed = invoke(*args)
    assert resumed.code == ExitCode.OK, resumed.stderr[-3000:]
    assert feed_files(out) == registered(out)
    assert_manifest_lists_the_feed(out)
    _, images = stable_rows(out)
    assert [path for path, _, _ in images] == sorted(str(p) for p in photos.rglob("*.jpg"))
