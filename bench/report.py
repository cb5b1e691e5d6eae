"""How big ``img1688 report`` files are, and how long they take to write.

Two runs, each against the embedded sandbox (on loopback, calls unlimited), then reported with
the default five offers per photo:

1. the sample job (``jobs/sample.toml``: buyer photos and awkward files), into
   ``build/bench/report/sample`` (started afresh each time);
2. a generated corpus of :data:`PHOTOS` photos: :data:`DISTINCT` buyer photos
   (``tools.samplegen``) each laid out :data:`PHOTOS` / :data:`DISTINCT` times under other
   names (drawing and searching 2,000 distinct photos would take a quarter of an hour; copies
   are searched once and ride along, yet each path gets its own row, card and thumbnail), drawn
   once into ``build/bench/report/corpus``, searched with the ``seed`` protocol into
   ``build/bench/report/corpus-out`` once and reused while its ``_SUCCESS`` is there.

Figures printed for each: photos, file size, bytes per photo and the shares of the photos'
thumbnails and of the offer images (the sample job has evidence on, the corpus off), the size
1,000 photos would take at that rate, and the time to write the report (the thumbnails are made
in worker processes, one per core). docs/report.md states the budget these are checked
against. Run: ``python -m bench.report``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import time
from pathlib import Path

from engine.jobfile import Job, load_job, parse_job
from engine.ratelimit import Rate
from engine.report import write_report
from engine.runner import run_job
from tools.samplegen import write_corpus

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "bench" / "report"
PHOTOS = 2_000
DISTINCT = 200
UNLIMITED = "100000/1s"
QUIET = 3600.0  # progress interval: the benchmark prints its own lines


def _note(text: str) -> None:
    print(f"[bench.report] {text}", file=sys.stderr, flush=True)


def _sample_job() -> Job:
    job = load_job(ROOT / "jobs" / "sample.toml")
    return job.with_overrides(out=CACHE / "sample", rate=Rate.parse(UNLIMITED))


def _corpus_job() -> Job:
    corpus = CACHE / "corpus"
    if not (corpus / ".complete").exists():
        _note(f"drawing {DISTINCT:,} buyer photos, {PHOTOS:,} files, into {corpus} (once)")
        drawn = CACHE / "drawn"
        write_corpus(drawn, DISTINCT, progress=False)
        for copy in range(PHOTOS // DISTINCT):
            folder = corpus / f"set{copy:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for photo in sorted(drawn.glob("*.jpg")):
                shutil.copyfile(photo, folder / photo.name)
        (corpus / ".complete").touch()
    return parse_job(
        {
            "job": {"name": f"corpus-{PHOTOS}"},
            "inputs": {"paths": [str(corpus)], "recursive": True},
            "output": {"dir": str(CACHE / "corpus-out")},
            "gateway": {"protocol": "seed", "endpoint": "sandbox", "rate": UNLIMITED},
            "engine": {"searches": 8},
            "evidence": {"enabled": False},  # the report is measured, not the image work
        },
        base=ROOT,
    )


def _measure(label: str, job: Job, *, fresh: bool) -> None:
    if fresh or not (job.out / "_SUCCESS").exists():
        _note(f"{label}: running the job into {job.out}")
        asyncio.run(run_job(job, fresh=fresh, progress_interval=QUIET))
    started = time.perf_counter()
    written = write_report(job.out, dest=CACHE / f"{label}.html")
    elapsed = time.perf_counter() - started
    page = written.path.read_text(encoding="utf-8")
    thumbs = sum(len(m) for m in re.findall(r'"thumb":"[^"]*"', page))
    payload = json.loads(_payload(page))
    photos = max(len(payload["photos"]), 1)
    pictures = payload.get("images", [])
    picture_bytes = sum(len(uri) for uri in pictures)
    per_photo = written.bytes / max(written.photos, 1)
    print(
        f"{label}: {written.photos:,} photos, {written.bytes:,} bytes ({per_photo:,.0f} per"
        f" photo, of which thumbnails {thumbs / photos:,.0f}, offer images"
        f" {picture_bytes / photos:,.0f} for {len(pictures):,} distinct);"
        f" 1,000 photos at this rate: {per_photo * 1000 / 1e6:.1f} MB;"
        f" written in {elapsed:.1f} s"
    )


def _payload(page: str) -> str:
    match = re.search(r'id="report-data">(.*?)</script>', page, re.S)
    assert match is not None
    return match[1]


def main() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    _measure("sample", _sample_job(), fresh=True)
    _measure(f"corpus-{PHOTOS}", _corpus_job(), fresh=False)


if __name__ == "__main__":
    main()
