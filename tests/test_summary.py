"""The summary and the manifest say what the checkpoint database says."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from engine import __version__
from engine.accounting import CallAccount
from engine.discover import DiscoveryReport
from engine.feed import Feed
from engine.jobfile import parse_job
from engine.progress import Counters
from engine.ratelimit import CallGate, Rate
from engine.schema import SCHEMA_VERSION
from engine.state import NewAnswer, StateStore
from engine.summary import UNREADABLE_EXAMPLES, run_manifest, run_summary

WHEN = datetime(2026, 12, 2, tzinfo=UTC)


async def test_summary_and_manifest_count_this_run(state: StateStore, tmp_path: Path) -> None:
    old = state.start_run("r-old", "2026-12-01", "{}")
    run = state.start_run("r-new", "2026-12-02", "{}")
    for path in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        state.discovered(run.run_id, path, 1, 1)
    answer = NewAnswer("s1", "{}", "seed", "{}", WHEN, 1)
    response_id = state.fetched(run.run_id, ["a.jpg"], answer, 5)  # 5 by earlier invocations
    state.reused(run.run_id, "b.jpg", response_id)
    state.failed(run.run_id, ["c.jpg"], "not_an_image", "text")
    feed = Feed(state.out)
    table = pa.table({"x": [1, 2, 3]})
    parts = [
        feed.write_part("matches", run.run_id, run.run_date, 1, table),
        feed.write_part("images", run.run_id, run.run_date, 1, table.slice(0, 2)),
        feed.write_part("matches", old.run_id, old.run_date, 1, table),
    ]
    state.exported(parts, [(run.run_id, "a.jpg")])
    gate = CallGate(Rate(1000, 1.0))
    account = CallAccount(state, run.run_id, gate.budget, str(gate.rate))
    await gate.acquire()
    discovery = DiscoveryReport(unreadable=[f"bad{i}" for i in range(30)], symlink_loops=2)

    summary = run_summary(
        state,
        run,
        output=tmp_path / "out",
        calls=account,
        counters=Counters(),
        discovery=discovery,
    )

    assert summary["status"] == {"exported": 1, "fetched": 1, "failed": 1, "pending": 1}
    assert summary["failures"] == {"not_an_image": 1}
    assert (summary["calls_this_run"], summary["calls_this_invocation"]) == (6, 1)
    assert (summary["images"], summary["reused_answers"], summary["searched"]) == (4, 1, 1)
    assert summary["unreadable"] == 30
    assert summary["unreadable_examples"] == [f"bad{i}" for i in range(UNREADABLE_EXAMPLES)]
    assert summary["symlink_loops"] == 2
    assert summary["rate"] == "1000/1s"

    job = parse_job(
        {
            "inputs": {"paths": [str(tmp_path)]},
            "output": {"dir": str(tmp_path / "out")},
            "gateway": {"endpoint": "sandbox", "protocol": "seed"},
        },
        base=tmp_path,
    )
    manifest = run_manifest(state, run, job, summary)
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["engine_version"] == __version__
    assert (manifest["run_id"], manifest["protocol"]) == ("r-new", "seed")
    # Every file of the dataset is listed; the row counts are this run's.
    assert len(manifest["files"]) == 3  # type: ignore[arg-type]
    assert manifest["rows"] == {"matches": 3, "images": 2}
    assert manifest["images"] == {"total": 4, "searched": 1, "reused": 1, "failed": 1}
    assert manifest["stats"] is summary
