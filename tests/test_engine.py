"""The batch engine end to end: sandbox on loopback, real SQLite, Parquet read back."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections import Counter
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest

from engine.cli import main
from engine.commands.reclean import reclean
from engine.credentials import Credentials
from engine.feed import Feed
from engine.outcome import ExitCode, RunOutcome
from engine.ratelimit import CallEntry, CallGate, Rate, most_in_window
from engine.runner import run_job
from engine.sandbox import Faults, Sandbox, SandboxConfig
from engine.sandbox.faults import Fault, FaultPicker
from engine.shard import Shard
from engine.state import StateStore, run_call_times
from tests.gateway_kit import UNRESOLVABLE
from tests.job_kit import creds, image_files, make_job, read_table
from tests.paths import SAMPLES

FAST = Rate(1000, 1.0)


async def test_sample_job_completes_and_the_feed_reads_back(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)

    outcome = await run_job(job, credentials=creds(sandbox.config))

    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert (out / "_SUCCESS").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    files = image_files(query_dir)
    images = read_table(out, "images").to_table()
    assert sorted(images.column("query_path").to_pylist()) == sorted(map(str, files))
    assert set(images.column("status").to_pylist()) == {"ok"}
    matches = read_table(out, "matches").to_table()
    assert matches.num_rows == sum(images.column("offers_kept").to_pylist()) > 0
    assert manifest["rows"] == {"matches": matches.num_rows, "images": len(files)}
    unique = len({p.read_bytes() for p in files})
    assert manifest["images"]["searched"] == unique < len(files)  # the sample holds a copy
    # The photo of product X finds X first.
    truth = json.loads((SAMPLES / "truth.json").read_text())
    firsts = {row["query_path"]: row["item_id"] for row in matches.to_pylist() if row["rank"] == 1}
    expected = {
        str(query_dir / rel.removeprefix("queries/")): offer
        for rel, offer in truth.items()
        if rel.startswith("queries/")
    }
    hits = sum(firsts.get(path) == offer for path, offer in expected.items())
    assert hits >= 0.9 * len(expected)
    # DuckDB reads the same rows, with the hive partition column.
    con = duckdb.connect()
    count, dates = con.execute(
        "SELECT count(*), count(DISTINCT run_date) FROM read_parquet(?, hive_partitioning = true)",
        [str(out / "matches" / "**" / "*.parquet")],
    ).fetchone()
    assert (count, dates) == (matches.num_rows, 1)


async def test_identical_photos_cost_one_search(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    first = image_files(query_dir)[0]
    for i in range(3):
        shutil.copy(first, query_dir / f"copy-{i}.jpg")
    job = make_job(query_dir, tmp_path / "out", sandbox.url)

    outcome = await run_job(job, credentials=creds(sandbox.config))

    assert outcome.exit_code == ExitCode.OK, outcome.message
    searches = sandbox.stats()["searches"]
    assert set(searches.values()) == {1}
    images = read_table(tmp_path / "out", "images").to_table().to_pylist()
    by_sha = Counter(row["query_sha256"] for row in images)
    assert len(searches) == len(by_sha)
    copies = [row for row in images if row["query_sha256"] == images_sha(images, first)]
    assert len(copies) >= 4
    assert sum(row["calls"] for row in copies) == 2  # one upload + one query, for all copies
    assert len({row["offers_kept"] for row in copies}) == 1


def images_sha(rows: list[dict], path: Path) -> str:
    return next(r["query_sha256"] for r in rows if r["query_path"] == str(path))


async def test_a_second_run_over_unchanged_inputs_makes_no_call(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)
    assert (await run_job(job, credentials=creds(sandbox.config))).exit_code == ExitCode.OK
    calls_after_first = sandbox.stats()["total_calls"]
    changed = image_files(query_dir)[0]
    other = image_files(query_dir)[1]
    changed.write_bytes(other.read_bytes())  # new bytes at an old path: must be re-checked

    second = await run_job(job, credentials=creds(sandbox.config))

    assert second.exit_code == ExitCode.OK, second.message
    assert sandbox.stats()["total_calls"] == calls_after_first
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == second.run_id
    assert manifest["images"] == {
        "total": len(image_files(query_dir)),
        "searched": 0,
        "reused": len(image_files(query_dir)),
        "failed": 0,
    }
    latest = [
        r for r in read_table(out, "images").to_table().to_pylist() if r["run_id"] == second.run_id
    ]
    assert len(latest) == len(image_files(query_dir))
    assert all(r["reused"] and r["calls"] == 0 for r in latest)


async def test_reclean_rebuilds_the_feed_without_a_call(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)
    assert (await run_job(job, credentials=creds(sandbox.config))).exit_code == ExitCode.OK
    before = read_table(out, "matches").to_table()
    calls = sandbox.stats()["total_calls"]

    summary = reclean(out)
    same = read_table(out, "matches").to_table()
    stricter = reclean(out, replace(job.filters, freight="free"))
    free_only = read_table(out, "matches").to_table()

    assert sandbox.stats()["total_calls"] == calls
    assert summary["match_rows"] == same.num_rows == before.num_rows
    assert sorted(same.column("item_id").to_pylist()) == sorted(
        before.column("item_id").to_pylist()
    )
    assert 0 < stricter["match_rows"] == free_only.num_rows < before.num_rows
    assert set(free_only.column("freight").to_pylist()) == {"free"}
    assert (out / "_SUCCESS").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"]["matches"] == free_only.num_rows
    again = reclean(out)  # the run now remembers the filters its feed reflects
    assert again["match_rows"] == free_only.num_rows


async def test_fatal_error_stops_the_job_at_once_and_it_resumes_once_fixed(
    query_dir: Path, tmp_path: Path
) -> None:
    config = SandboxConfig(rate=FAST)
    out = tmp_path / "out"
    async with Sandbox(config) as sandbox:
        job = make_job(query_dir, out, sandbox.url)
        wrong = creds(config, app_secret="not-the-secret")

        stopped = await run_job(job, credentials=wrong)

        assert stopped.exit_code == ExitCode.FATAL_GATEWAY
        assert "gw.SignatureInvalid" in stopped.message
        assert "IMG1688_APP_SECRET" in stopped.message  # says what to fix
        assert "not-the-secret" not in stopped.message
        assert sandbox.stats()["total_calls"] <= job.engine.searches
        assert not (out / "_SUCCESS").exists()

        resumed = await run_job(job, credentials=creds(config))
        assert resumed.exit_code == ExitCode.OK, resumed.message
        assert resumed.run_id == stopped.run_id
    images = read_table(out, "images").to_table()
    assert images.num_rows == len(image_files(query_dir))


async def test_injected_faults_are_retried_and_the_job_completes(
    query_dir: Path, tmp_path: Path
) -> None:
    faults = Faults(
        error_5xx=0.15,
        slow=0.1,
        slow_seconds=0.05,
        malformed=0.1,
        drop=0.1,
        spurious_rate_limit=0.1,
        seed=7,
    )
    config = SandboxConfig(rate=FAST, faults=faults)
    async with Sandbox(config) as sandbox:
        job = make_job(query_dir, tmp_path / "out", sandbox.url, gateway={"attempts": 12})
        outcome = await run_job(job, credentials=creds(config))
        stats = sandbox.stats()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert all(stats["faults"][kind] > 0 for kind in ("5xx", "malformed", "drop"))
    images = read_table(tmp_path / "out", "images").to_table()
    assert set(images.column("status").to_pylist()) == {"ok"}


@pytest.mark.parametrize("protocol", ["ocean", "seed"])
async def test_a_system_busy_business_failure_is_retried_and_the_photo_ends_ok(
    protocol: str, query_dir: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "one"
    photos.mkdir()
    shutil.copy(image_files(query_dir)[0], photos / "photo.jpg")
    faults = Faults(busy=0.5, seed=15)
    draws = FaultPicker(faults)
    assert [draws.decide().fault for _ in range(3)] == [Fault.BUSY, None, None]
    config = SandboxConfig(rate=FAST, faults=faults)
    async with Sandbox(config) as sandbox:
        job = make_job(photos, tmp_path / "out", sandbox.url, protocol=protocol)
        outcome = await run_job(job, credentials=creds(config))
        stats = sandbox.stats()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert stats["faults"]["busy"] == 1
    images = read_table(tmp_path / "out", "images").to_table().to_pylist()
    assert [(row["status"], row["failure_reason"]) for row in images] == [("ok", None)]
    assert images[0]["offers_kept"] > 0
    assert (
        images[0]["calls"]
        == stats["total_calls"]
        == (stats["faults"]["busy"] + (2 if protocol == "ocean" else 1))
    )


async def test_call_budget_stops_cleanly_and_the_next_run_continues(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)

    first = await run_job(job.with_overrides(max_calls=7), credentials=creds(sandbox.config))
    assert first.exit_code == ExitCode.STOPPED_EARLY
    # Each ocean search reserves its upload and its query: three whole searches fit in 7 calls,
    # and no upload is left without its query.
    assert sandbox.stats()["total_calls"] == 6
    assert not (out / "_SUCCESS").exists()

    second = await run_job(job, credentials=creds(sandbox.config))
    assert second.exit_code == ExitCode.OK, second.message
    assert second.run_id == first.run_id
    unique = len({p.read_bytes() for p in image_files(query_dir)})
    assert sandbox.stats()["total_calls"] == 2 * unique  # not one call spent twice
    paths = read_table(out, "images").to_table().column("query_path").to_pylist()
    assert sorted(paths) == sorted(map(str, image_files(query_dir)))


async def test_resume_under_other_filters_is_refused_unless_fresh(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)
    stopped = await run_job(job.with_overrides(max_calls=3), credentials=creds(sandbox.config))
    assert stopped.exit_code == ExitCode.STOPPED_EARLY
    other = make_job(query_dir, out, sandbox.url, filters={"price_max": 20})

    refused = await run_job(other, credentials=creds(sandbox.config))
    fresh = await run_job(other, credentials=creds(sandbox.config), fresh=True)

    assert refused.exit_code == ExitCode.CONFIG
    assert "--fresh" in refused.message
    assert fresh.exit_code == ExitCode.OK, fresh.message
    prices = read_table(out, "matches").to_table().column("price_min").to_pylist()
    assert prices and all(p <= 20 for p in prices)


async def test_a_second_process_on_the_same_output_is_refused(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)
    with StateStore(out):
        outcome = await run_job(job, credentials=creds(sandbox.config))
    assert outcome.exit_code == ExitCode.STORAGE
    assert "in use by another img1688 process" in outcome.message


async def test_bad_files_fail_alone_and_the_job_goes_on(sandbox: Sandbox, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(SAMPLES / "awkward", photos)
    out = tmp_path / "out"
    job = make_job(photos, out, sandbox.url, protocol="seed")

    outcome = await run_job(job, credentials=creds(sandbox.config))

    assert outcome.exit_code == ExitCode.DONE_WITH_FAILURES, outcome.message
    rows = {Path(r["query_path"]).name: r for r in read_table(out, "images").to_table().to_pylist()}
    assert rows["empty.jpg"]["failure_reason"] == "empty_file"
    assert rows["not-an-image.jpg"]["failure_reason"] == "not_an_image"
    assert rows["truncated.jpg"]["failure_reason"] == "truncated"
    assert rows["alpha.png"]["status"] == "ok" and rows["alpha.png"]["offers_kept"] > 0
    assert rows["transparent.gif"]["status"] == "ok"
    assert rows["gray16.png"]["status"] == "ok"


QUOTA_SPAN_SLACK = 1.0
"""Seconds a steady run's arrivals may span beyond ``(n - 1) x spacing`` in real time on
loopback: the first search waits for the preprocessing pool to start, and a busy host delays
arrivals by milliseconds. A gate at half speed would add ``(n - 1) x spacing`` (over 4 s here)."""


async def test_quota_use_is_pinned_no_window_over_the_rate_and_no_slot_wasted(
    query_dir: Path, tmp_path: Path
) -> None:
    rate = Rate(10, 2.0)
    config = SandboxConfig(rate=rate)
    photos = sorted(query_dir.glob("q0*.jpg"))[:12]
    subset = tmp_path / "subset"
    subset.mkdir()
    for p in photos:
        shutil.copy(p, subset / p.name)
    async with Sandbox(config) as sandbox:
        job = make_job(subset, tmp_path / "out", sandbox.url, gateway={"rate": "10/2s"})
        outcome = await run_job(job, credentials=creds(config))
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{sandbox.url}/__sandbox__/stats") as answer,
        ):
            stats = await answer.json()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert stats["rate_limited"] == 0
    arrivals = sorted(stats["arrivals"])
    n = len(arrivals)
    assert n == 2 * len(photos)
    assert most_in_window(arrivals, rate.period) <= rate.calls
    # Four searches keep the gate busy from the first call to the last: the arrivals are as
    # dense as the spacing allows, so a slower gate (or idle slots) shows here.
    spacing = CallGate(rate).spacing
    assert arrivals[-1] - arrivals[0] <= (n - 1) * spacing + QUOTA_SPAN_SLACK


async def test_status_reports_a_job_without_running_it(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)
    stopped = await run_job(job.with_overrides(max_calls=4), credentials=creds(sandbox.config))
    calls = sandbox.stats()["total_calls"]
    capsys.readouterr()

    assert main(["status", str(out), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)

    assert state["run"] == stopped.run_id
    assert state["state"] == "unfinished"
    assert state["success_marker"] is False
    assert state["calls"] == calls == 4
    assert sum(state["images"].values()) >= 2
    assert sandbox.stats()["total_calls"] == calls
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"run {stopped.run_id} (unfinished)" in text
    assert "calls spent: 4" in text and "_SUCCESS: absent" in text
    assert main(["status", str(tmp_path / "nowhere")]) == 2


def test_img1688_run_with_the_embedded_sandbox_shows_offers(
    tmp_path: Path, write_job, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "few"
    photos.mkdir()
    for name in ("q001.jpg", "q002.jpg", "q003.jpg"):
        shutil.copy(SAMPLES / "queries" / name, photos / name)
    job = write_job(
        inputs={"paths": [str(photos)]},
        output={"dir": str(tmp_path / "out")},
        gateway={"endpoint": "sandbox", "rate": "100/1s"},
    )

    code = main(["run", str(job)])

    printed = capsys.readouterr().out
    assert code == ExitCode.OK
    assert "Best match per photo" in printed
    truth = json.loads((SAMPLES / "truth.json").read_text())
    for name in ("q001.jpg", "q002.jpg", "q003.jpg"):
        line = next(line for line in printed.splitlines() if line.strip().startswith(name))
        assert f"/offer/{truth['queries/' + name]}.html" in line
    summary = json.loads(printed[: printed.index("\nimg1688:")])
    assert summary["searched"] == 3 and summary["calls_this_run"] == 6


async def test_no_secret_reaches_the_output_or_the_logs(
    query_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, private_token_store: Path
) -> None:
    config = SandboxConfig(
        rate=FAST,
        app_secret="S3cr3t-app-secret-123",
        access_token="T0ken-access-456",
        refresh_token="R3fresh-token-789",
        token_ttl=0.5,  # forces a refresh mid-run, so the new token must stay secret too
    )
    out = tmp_path / "out"
    caplog.set_level("DEBUG")
    async with Sandbox(config) as sandbox:
        job = make_job(query_dir, out, sandbox.url, gateway={"rate": "20/1s"})
        outcome = await run_job(job, credentials=creds(config))
        refreshes = sandbox.stats()["calls"].get("system.oauth2.getToken", 0)
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert refreshes >= 1
    assert private_token_store.stat().st_mode & 0o777 == 0o600  # the refreshed token's home
    secrets = [config.app_secret, config.access_token, config.refresh_token]
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    logged = caplog.text + json.dumps(outcome.summary, default=str) + outcome.message
    for secret in secrets:
        assert secret.encode() not in written
        assert secret not in logged


async def test_a_photo_changed_between_invocations_of_a_run_stays_exactly_once(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url, engine={"searches": 1, "part_images": 1})
    first = await run_job(job.with_overrides(max_calls=6), credentials=creds(sandbox.config))
    assert first.exit_code == ExitCode.STOPPED_EARLY
    exported = [r["query_path"] for r in read_table(out, "images").to_table().to_pylist()]
    assert exported
    Path(exported[0]).write_bytes(image_files(query_dir)[-1].read_bytes())

    second = await run_job(job, credentials=creds(sandbox.config))

    assert second.exit_code == ExitCode.OK, second.message
    paths = read_table(out, "images").to_table().column("query_path").to_pylist()
    assert Counter(paths) == Counter(map(str, image_files(query_dir)))


async def test_limit_searches_exactly_that_many_new_photos_then_resumes(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)

    first = await run_job(job.with_overrides(limit=5), credentials=creds(sandbox.config))

    assert first.exit_code == ExitCode.STOPPED_EARLY
    assert "--limit 5" in first.message
    assert read_table(out, "images").count_rows() == 5
    second = await run_job(job, credentials=creds(sandbox.config))
    assert second.exit_code == ExitCode.OK, second.message
    assert read_table(out, "images").count_rows() == len(image_files(query_dir))


async def test_a_reclean_that_dies_before_its_commit_leaves_the_feed_as_it_was(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)
    assert (await run_job(job, credentials=creds(sandbox.config))).exit_code == ExitCode.OK
    before = sorted(read_table(out, "matches").to_table().column("item_id").to_pylist())

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if the process died between writing parts and committing

    with monkeypatch.context() as patched:
        patched.setattr(StateStore, "exported", killed)
        with pytest.raises(KeyboardInterrupt):
            reclean(out, replace(job.filters, freight="free"))
    with StateStore(out) as state:
        removed = Feed(out).remove_orphans(state.parts())

    assert removed  # the half-done reclean's parts were never registered
    after = sorted(read_table(out, "matches").to_table().column("item_id").to_pylist())
    assert after == before


async def test_a_missing_input_folder_is_a_configuration_error_not_an_empty_feed(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)
    unmounted = replace(job, inputs=replace(job.inputs, paths=(query_dir, tmp_path / "nfs")))

    outcome = await run_job(unmounted, credentials=creds(sandbox.config))

    assert outcome.exit_code == ExitCode.CONFIG
    assert str(tmp_path / "nfs") in outcome.message
    assert sandbox.stats()["total_calls"] == 0
    assert not (out / "_SUCCESS").exists()


async def test_a_gateway_outage_stops_the_job_and_the_resume_retries_its_photos(
    query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    outage = SandboxConfig(rate=FAST, faults=Faults(error_5xx=1.0))
    async with Sandbox(outage) as down:
        port = int(down.url.rsplit(":", 1)[1])
        job = make_job(
            query_dir,
            out,
            down.url,
            gateway={"attempts": 2},
            engine={"max_consecutive_failures": 3, "searches": 1},
        )
        stopped = await run_job(job, credentials=creds(outage))
    assert stopped.exit_code == ExitCode.FATAL_GATEWAY
    assert "gateway looks down" in stopped.message
    assert not (out / "images").exists()  # nothing published as failed because of the outage

    async with Sandbox(replace(outage, faults=Faults(), port=port)) as back:
        resumed = await run_job(job, credentials=creds(back.config))
        searched_again = back.stats()["searches"]
    assert resumed.exit_code == ExitCode.OK, resumed.message
    assert resumed.run_id == stopped.run_id
    statuses = read_table(out, "images").to_table().column("status").to_pylist()
    assert len(statuses) == len(image_files(query_dir)) and set(statuses) == {"ok"}
    # No answer came during the outage: the resume searched every photo, the held-back ones too.
    assert len(searched_again) == len({p.read_bytes() for p in image_files(query_dir)})


OUTAGE_THAT_ENDS = Faults(error_5xx=0.5, seed=45)
"""With one search at a time and two attempts each, the first two searches meet only 5xx
answers (a streak of two, one short of a breaker at 3), then the gateway answers again."""


async def run_through_an_outage_that_ends(
    query_dir: Path, tmp_path: Path
) -> tuple[RunOutcome, dict[str, Any], list[dict[str, Any]]]:
    """Four photos through :data:`OUTAGE_THAT_ENDS`: the outcome, the sandbox's stats and the
    feed's ``images`` rows."""
    photos = tmp_path / "four"
    photos.mkdir()
    for source in sorted(query_dir.glob("q0*.jpg"))[:4]:
        shutil.copy(source, photos / source.name)
    assert len({p.read_bytes() for p in image_files(photos)}) == 4
    draws = FaultPicker(OUTAGE_THAT_ENDS)
    assert [draws.decide().fault for _ in range(6)] == [Fault.SERVER_ERROR] * 4 + [None] * 2
    config = SandboxConfig(rate=FAST, faults=OUTAGE_THAT_ENDS)
    out = tmp_path / "out"
    async with Sandbox(config) as sandbox:
        job = make_job(
            photos,
            out,
            sandbox.url,
            protocol="seed",
            gateway={"attempts": 2},
            engine={"max_consecutive_failures": 3, "searches": 1},
        )
        outcome = await run_job(job, credentials=creds(config))
        stats = sandbox.stats()
    assert Counter(r["query_path"] for r in read_table(out, "images").to_table().to_pylist()) == (
        Counter(map(str, image_files(photos)))
    )
    assert (out / "_SUCCESS").exists() == (outcome.exit_code == ExitCode.DONE_WITH_FAILURES)
    return outcome, stats, read_table(out, "images").to_table().to_pylist()


async def test_an_outage_that_ends_publishes_its_photos_as_failed_and_the_job_completes(
    query_dir: Path, tmp_path: Path
) -> None:
    outcome, stats, rows = await run_through_an_outage_that_ends(query_dir, tmp_path)

    assert outcome.exit_code == ExitCode.DONE_WITH_FAILURES, outcome.message
    assert (stats["total_calls"], stats["faults"]["5xx"]) == (6, 4)
    outcomes = Counter((r["status"], r["failure_reason"]) for r in rows)
    assert outcomes == {("failed", "retries_exhausted"): 2, ("ok", None): 2}
    failed = [r["failure_message"] for r in rows if r["status"] == "failed"]
    assert all(message.startswith("gave up after 2 attempts: http_50") for message in failed)


async def test_a_photo_that_exhausted_its_retries_counts_the_calls_it_spent(
    query_dir: Path, tmp_path: Path
) -> None:
    _, stats, rows = await run_through_an_outage_that_ends(query_dir, tmp_path)

    assert sum(r["calls"] for r in rows) == stats["total_calls"]
    assert [r["calls"] for r in rows if r["status"] == "failed"] == [2, 2]


# --- shards: N processes split one job, writing into one output directory -------------------

OFFER_COLUMNS = ["query_path", "rank", "item_id", "title", "price_min", "min_order", "freight"]


def feed_contents(out: Path) -> tuple[Counter[str], list[tuple[object, ...]]]:
    """How often each photo appears in ``images``, and every offer row of ``matches``."""
    paths = read_table(out, "images").to_table().column("query_path").to_pylist()
    offers = read_table(out, "matches").to_table(columns=OFFER_COLUMNS).to_pylist()
    return Counter(paths), sorted(tuple(row.values()) for row in offers)


def shard_of_each_photo(out: Path) -> dict[str, set[str]]:
    """The photos each shard's manifest-listed run published, by shard."""
    rows = read_table(out, "images").to_table(columns=["run_id", "query_path"]).to_pylist()
    runs = {
        json.loads((out / f"manifest-shard-{i}-of-2.json").read_text())["run_id"]: f"{i}/2"
        for i in range(2)
    }
    taken: dict[str, set[str]] = {shard: set() for shard in runs.values()}
    for row in rows:
        taken[runs[row["run_id"]]].add(row["query_path"])
    return taken


async def test_two_shards_one_after_the_other_make_exactly_one_unsharded_runs_feed(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = tmp_path / "whole"
    unsharded = await run_job(
        make_job(query_dir, whole, sandbox.url), credentials=creds(sandbox.config)
    )
    assert unsharded.exit_code == ExitCode.OK, unsharded.message
    out = tmp_path / "sharded"
    job = make_job(query_dir, out, sandbox.url)
    first, second = job.with_overrides(shard=Shard(0, 2)), job.with_overrides(shard=Shard(1, 2))

    stopped = await run_job(first.with_overrides(max_calls=4), credentials=creds(sandbox.config))
    capsys.readouterr()
    assert main(["status", str(out), "--json"]) == 0
    partial = json.loads(capsys.readouterr().out)
    done = await run_job(second, credentials=creds(sandbox.config))
    only_one = (out / "_SUCCESS").exists()
    resumed = await run_job(first, credentials=creds(sandbox.config))

    assert stopped.exit_code == ExitCode.STOPPED_EARLY
    assert [s["shard"] for s in partial["shards"]] == ["0/2"]
    assert partial["shards"][0]["state"] == "unfinished" and partial["not_started"] == ["1/2"]
    assert done.exit_code == ExitCode.OK, done.message
    assert not only_one and (out / "_SUCCESS-shard-1-of-2").exists()
    assert resumed.exit_code == ExitCode.OK, resumed.message
    assert resumed.run_id == stopped.run_id
    assert (out / "_SUCCESS").exists() and (out / "_SUCCESS-shard-0-of-2").exists()
    photos, offers = feed_contents(out)
    assert photos == Counter(map(str, image_files(query_dir)))  # each exactly once
    assert (photos, offers) == feed_contents(whole)
    taken = shard_of_each_photo(out)
    assert taken["0/2"] and taken["1/2"]
    assert all(Shard(0, 2).owns(p) for p in taken["0/2"])
    assert all(Shard(1, 2).owns(p) for p in taken["1/2"])
    parts = sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet"))
    assert all(("-s0of2-" in p) != ("-s1of2-" in p) for p in parts)
    dataset = json.loads((out / "manifest.json").read_text())
    assert sorted(f["path"] for f in dataset["files"]) == parts
    assert dataset["rows"] == {"matches": len(offers), "images": sum(photos.values())}
    assert [s["run_id"] for s in dataset["shards"]] == [resumed.run_id, done.run_id]
    assert not (out / "state.sqlite").exists() and not (out / ".lock").exists()

    calls = sandbox.stats()["total_calls"]
    recleaned = reclean(out)
    assert sandbox.stats()["total_calls"] == calls
    assert set(recleaned["shards"]) == {"0/2", "1/2"}  # type: ignore[arg-type]
    assert recleaned["match_rows"] == len(offers)
    assert feed_contents(out) == (photos, offers)
    assert (out / "_SUCCESS").exists()


async def test_two_shards_running_at_once_share_one_output_directory(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url)

    outcomes = await asyncio.gather(
        *(
            run_job(job.with_overrides(shard=Shard(i, 2)), credentials=creds(sandbox.config))
            for i in range(2)
        )
    )

    assert [o.exit_code for o in outcomes] == [ExitCode.OK, ExitCode.OK], outcomes
    assert (out / "_SUCCESS").exists()
    photos, offers = feed_contents(out)
    assert photos == Counter(map(str, image_files(query_dir))) and offers
    capsys.readouterr()
    assert main(["status", str(out), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert [(s["shard"], s["state"], s["success_marker"]) for s in state["shards"]] == [
        ("0/2", "complete", True),
        ("1/2", "complete", True),
    ]
    assert state["success_marker"] is True and state["not_started"] == []
    assert sum(sum(s["images"].values()) for s in state["shards"]) == sum(photos.values())


@pytest.mark.parametrize("spec", ["2/2", "1/0", "-1/2", "half"])
def test_a_bad_shard_is_a_configuration_error(
    spec: str, tmp_path: Path, write_job, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(
        inputs={"paths": [str(tmp_path)]},
        output={"dir": str(tmp_path / "out")},
        gateway={"endpoint": "sandbox"},
    )
    with pytest.raises(SystemExit) as exited:
        main(["run", str(job), f"--shard={spec}"])
    assert exited.value.code == ExitCode.CONFIG == 2
    assert "--shard" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("where", "says"), [("refusing", "Connection refused"), ("unresolvable", "does not resolve")]
)
async def test_an_unreachable_gateway_stops_the_job_at_once_and_spends_no_call(
    query_dir: Path, tmp_path: Path, refusing_url: str, where: str, says: str
) -> None:
    url = refusing_url if where == "refusing" else UNRESOLVABLE
    out = tmp_path / "out"
    job = make_job(query_dir, out, url, gateway={"attempts": 3})

    outcome = await run_job(job, credentials=Credentials("app-key-1", "app-secret-1", "token-1"))

    assert outcome.exit_code == ExitCode.FATAL_GATEWAY
    assert outcome.message.startswith("cannot reach the gateway")
    assert url in outcome.message and says in outcome.message
    assert "gateway.endpoint" in outcome.message  # the fix
    assert "app-secret-1" not in outcome.message and "token-1" not in outcome.message
    # Not one attempt left this machine: none is spent, in the summary or the checkpoints.
    assert outcome.summary["calls_this_run"] == outcome.summary["calls_this_invocation"] == 0
    with StateStore(out) as state:
        assert state.calls_spent(outcome.run_id) == 0
        assert run_call_times(state.out, outcome.run_id) == []  # refunded: not in the ledger either
    assert "failed" not in outcome.summary["status"]  # the photos wait for the next run


# -- the quota ledger -------------------------------------------------------------------------


def gmt8(text: str) -> float:
    """Epoch seconds of a wall time in GMT+8, ``"2026-12-02 22:00"``."""
    return datetime.fromisoformat(text + "+08:00").timestamp()


async def test_the_daily_cap_stops_the_run_and_the_next_gateway_day_continues(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = make_job(query_dir, out, sandbox.url, gateway={"daily_calls": 100})
    evening = gmt8("2026-12-02 22:00")
    with StateStore(out) as state:  # another job on this output spent 94 calls today
        earlier = [CallEntry(evening - 3600 + i, None) for i in range(94)]
        state.record_calls("earlier", 94, earlier)

    first = await run_job(job, credentials=creds(sandbox.config), clock=lambda: evening)

    assert first.exit_code == ExitCode.STOPPED_EARLY, first.message
    assert first.message.startswith("the gateway's daily cap is reached")
    assert "the next gateway day starts at 2026-12-03 00:00 GMT+8 (" in first.message
    assert sandbox.stats()["total_calls"] == 6  # three whole ocean searches in the 6 left
    assert first.summary["quota"] == {
        "calls_today": 100,
        "left_today": 0,
        "package_left": None,
        "run_out": None,
        "low": False,
        "message": None,
    }
    assert not (out / "_SUCCESS").exists()

    morning = gmt8("2026-12-03 00:30")
    second = await run_job(job, credentials=creds(sandbox.config), clock=lambda: morning)

    assert second.exit_code == ExitCode.OK, second.message
    assert second.run_id == first.run_id
    calls = 2 * len({p.read_bytes() for p in image_files(query_dir)})
    assert sandbox.stats()["total_calls"] == calls  # not one call spent twice
    with StateStore(out) as state:
        assert state.calls_per_day() == {date(2026, 12, 2): 100, date(2026, 12, 3): calls - 6}
        assert (
            len(run_call_times(state.out, first.run_id)) == calls
        )  # the ledger is the gateway's count


async def test_a_nearly_spent_package_is_low_in_the_log_and_the_summary(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    package = {"package_calls": 1000, "package_start": "2026-11-01"}
    job = make_job(query_dir, out, sandbox.url, gateway=package)
    noon = gmt8("2026-12-02 12:00")
    with StateStore(out) as state:  # 300 calls a day over the last three days
        days = [CallEntry(noon - d * 86_400 + i, None) for d in (1, 2, 3) for i in range(300)]
        state.record_calls("earlier", 900, days)

    with caplog.at_level(logging.WARNING, logger="engine.ledger"):
        outcome = await run_job(job, credentials=creds(sandbox.config), clock=lambda: noon)

    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert "the image-search package is low: 100 of 1,000 calls left" in caplog.text
    spent = sandbox.stats()["total_calls"]
    quota = outcome.summary["quota"]
    assert quota == {
        "calls_today": spent,
        "left_today": None,
        "package_left": 100 - spent,
        "run_out": "2026-12-03",  # at 300 a day
        "low": True,
        "message": quota["message"],
    }
    assert f"{100 - spent} of 1,000 calls left" in quota["message"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stats"]["quota"]["low"] is True
