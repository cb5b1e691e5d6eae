"""``img1688 report``: what one run found, gathered for a person to look at before trusting it.

A report shows, per photo, the photo itself beside its best offers, and, for the run, what was
searched, reused and failed and how the calls were spent against the rate. Everything comes
from what the run left in its output directory and its image cache, read-only (safe while
another run holds the lock), without a single gateway call or download:

* the run, its part files and its call times from the checkpoints
  (:func:`engine.feedread.find_run`, :func:`engine.state.run_call_times`);
* the photos and offers from the Parquet feed, read with pyarrow and filtered by ``run_id``
  (:func:`engine.feedread.read_rows`), never by cleaning stored answers again; columns a later
  schema adds (``sku``, ``title``, ``title_en``, ``verdict``, ``visual_score``) are shown when
  the feed has them;
* the rate and job name from ``manifest.json`` when it is this run's;
* a thumbnail of each photo made from the file at ``query_path`` by the same pipeline that
  prepares photos for the gateway (:class:`engine.pool.PreprocessPool`: a hostile file can only
  cost its own thumbnail), at :data:`THUMBNAIL_OPTIONS`. A web photo, a photo on S3, and a local
  file gone or changed since the run are shown as the image cache holds them (the JPEG sent,
  or the download: :meth:`engine.imagecache.ImageCache.photo_path`), from the cache the run's
  manifest names, else the default one;
* each shown offer's image, the one its evidence was judged on (``offer_image_sha256``), as a
  small thumbnail (:data:`OFFER_IMAGE_OPTIONS`) from the same cache, so that a person sees what
  ``verdict`` says.

:mod:`engine.report_html` turns the :class:`Report` into one self-contained HTML file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError, StorageError
from engine.preprocess import PreprocessFailure, PreprocessOptions
from engine.ratelimit import RATE_TEXT, Rate, most_in_window
from engine.storage import write_atomic

if TYPE_CHECKING:
    import pyarrow as pa

    from engine.feedread import FeedRun
    from engine.imagecache import ImageCache

DEFAULT_TOP = 5
"""Offers shown per photo unless ``--top`` says otherwise."""
THUMBNAIL_SIDE = 96
THUMBNAIL_OPTIONS = PreprocessOptions(
    max_side=THUMBNAIL_SIDE, max_bytes=5_000, quality=70, min_quality=40, timeout=20.0
)
"""Thumbnails: at most 96 px on the long side, JPEG quality 70 (lowered down to 40, then shrunk,
if a busy photo would exceed 5,000 bytes): about 2-4 KB each, 3-5 KB once base64-encoded."""
OFFER_IMAGE_SIDE = 48
OFFER_IMAGE_OPTIONS = PreprocessOptions(
    max_side=OFFER_IMAGE_SIDE, max_bytes=1_500, quality=70, min_quality=40, timeout=20.0
)
"""Offer images: half a photo thumbnail's side, at most 1,500 bytes (about 1 KB is usual); one
per distinct image (resellers showing one factory photo share it)."""
MAX_BARS = 600
"""Bars of the quota chart at most: a longer run merges neighbouring windows into one bar."""
DEFAULT_PERIOD = 60.0
"""Seconds per bar of the quota chart when the run's rate is unknown."""

PHOTO_COLUMNS = (
    "query_path",
    "query_sha256",
    "status",
    "failure_reason",
    "failure_message",
    "offers_received",
    "offers_kept",
    "removed_by_price",
    "removed_by_moq",
    "removed_by_freight",
    "calls",
    "reused",
)
OPTIONAL_PHOTO_COLUMNS = ("sku", "title")
"""Columns of ``images`` shown when the feed has them (not in schema version 1)."""
OFFER_COLUMNS = (
    "query_path",
    "rank",
    "item_id",
    "title",
    "price_min",
    "price_max",
    "price_tiers",
    "min_order",
    "unit",
    "similarity",
    "province",
    "city",
    "company",
    "offer_url",
    "image_url",
)
OPTIONAL_OFFER_COLUMNS = ("title_en", "verdict", "visual_score", "offer_image_sha256")
"""Columns of ``matches`` shown when the feed has them (not in schema version 1)."""

_APPS = re.compile(r"per app, (\d+) apps")


@dataclass(frozen=True)
class OfferLine:
    """One offer of a photo, as the report shows it (the ``matches`` row's values)."""

    rank: int
    item_id: int
    offer_url: str
    title: str | None = None
    price_min: Decimal | None = None
    price_max: Decimal | None = None
    tiers: tuple[tuple[int, Decimal], ...] = ()
    """``(min_quantity, price)``, by quantity."""
    min_order: int | None = None
    unit: str | None = None
    similarity: float | None = None
    province: str | None = None
    city: str | None = None
    company: str | None = None
    image_url: str | None = None
    title_en: str | None = None
    verdict: str | None = None
    visual_score: float | None = None
    image_sha256: str | None = None
    """The offer image its evidence was judged on; its thumbnail is in
    :attr:`Report.offer_images` when the image cache still has it."""


@dataclass(frozen=True)
class Thumbnail:
    """A photo's small JPEG, or why there is none (the report shows a placeholder)."""

    jpeg: bytes | None
    note: str | None = None
    """Why there is no thumbnail, or that the file changed since the run."""


@dataclass(frozen=True)
class PhotoCard:
    """One photo of the run: its outcome, its top offers and its thumbnail."""

    path: str
    status: str
    """``ok`` or ``failed``, as in the feed."""
    offers: tuple[OfferLine, ...] = ()
    """The best-ranked offers, at most the report's ``top``."""
    thumbnail: Thumbnail = Thumbnail(None)
    failure_reason: str | None = None
    failure_message: str | None = None
    reused: bool = False
    calls: int = 0
    offers_received: int | None = None
    offers_kept: int | None = None
    removed: tuple[tuple[str, int], ...] = ()
    """Offers the wholesale filters removed, by filter (``price``, ``moq``, ``freight``)."""
    sku: str | None = None
    title: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass(frozen=True)
class RateLimit:
    """The calls a run may make in any window of ``period`` seconds, over all its apps."""

    calls: int
    period: float
    text: str
    """As the run's summary gave it (``10/60s``, ``10/60s per app, 2 apps``)."""


@dataclass(frozen=True)
class QuotaUse:
    """The run's calls over time, in consecutive windows from its first call."""

    start: float | None
    """Epoch seconds (UTC) of the first call; ``None`` when the log holds none."""
    window: float
    """Seconds per bar."""
    counts: tuple[int, ...]
    """Calls per bar."""
    limit: int | None
    """Calls the rate allows per bar; ``None`` when the rate is unknown."""
    peak: int
    """The most calls in any window of the rate's period (sliding): at most its limit."""
    rate: RateLimit | None


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    run_date: str
    started_at: str
    completed_at: str | None
    job: str | None
    """The job's name, from the run's manifest."""
    calls: int
    """Gateway calls the run spent (retries included)."""

    @property
    def duration(self) -> float | None:
        """Seconds from start to completion, every invocation and the gaps between them."""
        if self.completed_at is None:
            return None
        started = datetime.fromisoformat(self.started_at)
        return (datetime.fromisoformat(self.completed_at) - started).total_seconds()


@dataclass(frozen=True)
class Report:
    """Everything a report shows; :func:`engine.report_html.render_report` draws it."""

    run: RunFacts
    photos: tuple[PhotoCard, ...]
    top: int
    quota: QuotaUse
    columns: frozenset[str]
    """Of :data:`OPTIONAL_PHOTO_COLUMNS` and :data:`OPTIONAL_OFFER_COLUMNS`, those the feed has."""
    generated_at: datetime
    offer_images: Mapping[str, bytes] = field(default_factory=dict)
    """Offer image SHA-256 -> its thumbnail (JPEG), for the offers shown."""


@dataclass(frozen=True)
class Written:
    path: Path
    bytes: int
    photos: int
    run_id: str


def write_report(
    out: Path,
    *,
    run_id: str | None = None,
    dest: Path | None = None,
    top: int = DEFAULT_TOP,
    offer_images: bool = True,
) -> Written:
    """Write the report of run ``run_id`` of ``out`` (default: the latest completed run, else
    the latest run) to ``dest`` (default ``OUT/report.html``), replacing it whole.

    Raises:
        ConfigError: no job state in ``out``, no such run, a sharded ``out`` without a run,
            or a run whose rows a later run of the same date replaced.
        StorageError: the checkpoints or the feed cannot be read, or ``dest`` not written.
    """
    from engine.feedread import find_run
    from engine.report_html import render_report

    run = find_run(out, run_id)
    _check_in_feed(run)
    report = gather(run, top=top, offer_images=offer_images)
    target = dest if dest is not None else out / "report.html"
    data = render_report(report).encode("utf-8")
    write_atomic(target, lambda temp: temp.write_bytes(data))
    return Written(target, len(data), len(report.photos), run.run_id)


def _check_in_feed(run: FeedRun) -> None:
    """Refuse a run whose rows a later run of the same date replaced: its report would be
    empty, and look like a run that found nothing.

    Raises:
        ConfigError: naming the run that replaced it.
    """
    if run.part_paths("images"):
        return
    later = [
        r
        for r in run.index.runs
        if r.run_date == run.run.run_date and r.started_at > run.run.started_at and r.completed_at
    ]
    if later:
        raise ConfigError(
            f"run {run.run_id} is no longer in the feed: run {later[-1].run_id} of the same"
            f" date ({run.run.run_date}) replaced its rows; report that one instead"
        )


def gather(run: FeedRun, *, top: int = DEFAULT_TOP, offer_images: bool = True) -> Report:
    """The :class:`Report` of ``run``: its rows, its call times, its photos' thumbnails and,
    unless ``offer_images`` is false, the images of the offers shown.

    Raises:
        StorageError: the checkpoints or a registered part cannot be read.
    """
    import asyncio

    from engine.feedread import read_rows
    from engine.state import run_call_times

    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    images = read_rows(run, "images", PHOTO_COLUMNS + OPTIONAL_PHOTO_COLUMNS)
    matches = read_rows(run, "matches", OFFER_COLUMNS + OPTIONAL_OFFER_COLUMNS)
    columns = frozenset(
        name
        for table, names in ((images, OPTIONAL_PHOTO_COLUMNS), (matches, OPTIONAL_OFFER_COLUMNS))
        for name in names
        if name in table.column_names
    )
    rows = sorted(images.to_pylist(), key=lambda row: row["query_path"])
    offers = top_offers(matches, top)
    manifest = run.feed.read_manifest() or {}
    if manifest.get("run_id") != run.run_id:
        manifest = {}  # an earlier or later run's: its rate and counts are not this run's
    with ExitStack() as stack:
        cache = _image_cache(manifest, stack)
        thumbs = asyncio.run(
            thumbnails([(r["query_path"], r["query_sha256"]) for r in rows], cache)
        )
        shown = {line.image_sha256 for lines in offers.values() for line in lines}
        wanted = sorted(filter(None, shown)) if offer_images else []
        pictures = asyncio.run(offer_thumbnails(wanted, cache))
    photos = tuple(
        photo_card(row, offers.get(row["query_path"], ()), thumbs[row["query_path"]])
        for row in rows
    )

    stats = manifest.get("stats")
    stats = stats if isinstance(stats, dict) else {}
    times = run_call_times(run.out, run.run_id, run.index.shard)
    rate = parse_rate(stats.get("rate"))
    calls = stats.get("calls_this_run")
    facts = RunFacts(
        run_id=run.run_id,
        run_date=run.run.run_date,
        started_at=run.run.started_at,
        completed_at=run.run.completed_at,
        job=str(manifest["job"]) if manifest.get("job") else None,
        calls=calls if isinstance(calls, int) else len(times) or sum(p.calls for p in photos),
    )
    return Report(
        run=facts,
        photos=photos,
        top=top,
        quota=quota_use(times, rate),
        columns=columns,
        generated_at=datetime.now(UTC),
        offer_images=pictures,
    )


def top_offers(matches: pa.Table, top: int) -> dict[str, tuple[OfferLine, ...]]:
    """The ``top`` best-ranked offers of each photo of a ``matches`` table, by ``query_path``.

    Only those rows become Python objects: a run of many photos with 20 offers each stays cheap.
    """
    if matches.num_rows == 0:
        return {}
    ordered = matches.sort_by([("query_path", "ascending"), ("rank", "ascending")])
    keep: list[int] = []
    previous, taken = None, 0
    for index, path in enumerate(ordered.column("query_path").to_pylist()):
        taken = taken + 1 if path == previous else 1
        previous = path
        if taken <= top:
            keep.append(index)
    grouped: dict[str, list[OfferLine]] = {}
    for row in ordered.take(keep).to_pylist():
        grouped.setdefault(row["query_path"], []).append(offer_line(row))
    return {path: tuple(lines) for path, lines in grouped.items()}


def offer_line(row: dict[str, Any]) -> OfferLine:
    """A ``matches`` row (as pyarrow gives it) as an :class:`OfferLine`."""
    return OfferLine(
        rank=row["rank"],
        item_id=row["item_id"],
        offer_url=row["offer_url"],
        title=row.get("title"),
        price_min=row.get("price_min"),
        price_max=row.get("price_max"),
        tiers=tuple((t["min_quantity"], t["price"]) for t in row.get("price_tiers") or ()),
        min_order=row.get("min_order"),
        unit=row.get("unit"),
        similarity=row.get("similarity"),
        province=row.get("province"),
        city=row.get("city"),
        company=row.get("company"),
        image_url=row.get("image_url"),
        title_en=_text(row.get("title_en")),
        verdict=_text(row.get("verdict")),
        visual_score=_number(row.get("visual_score")),
        image_sha256=_text(row.get("offer_image_sha256")),
    )


def photo_card(row: dict[str, Any], offers: Sequence[OfferLine], thumbnail: Thumbnail) -> PhotoCard:
    """An ``images`` row (as pyarrow gives it), its top offers and thumbnail as a card."""
    removed = tuple(
        (name, count)
        for name in ("price", "moq", "freight")
        if (count := row.get(f"removed_by_{name}"))
    )
    return PhotoCard(
        path=row["query_path"],
        status=row["status"],
        offers=tuple(offers),
        thumbnail=thumbnail,
        failure_reason=row.get("failure_reason"),
        failure_message=row.get("failure_message"),
        reused=bool(row.get("reused")),
        calls=row.get("calls") or 0,
        offers_received=row.get("offers_received"),
        offers_kept=row.get("offers_kept"),
        removed=removed,
        sku=_text(row.get("sku")),
        title=_text(row.get("title")),
    )


async def thumbnails(
    photos: Iterable[tuple[str, str | None]], cache: ImageCache | None = None
) -> dict[str, Thumbnail]:
    """A :class:`Thumbnail` for each ``(query_path, query_sha256)``, made in worker processes.

    A local file is read where it is. A web photo or a photo on S3 (``scheme://``) is taken from
    ``cache``, and so is a local file gone, unreadable or changed since the run, with a note:
    the report shows what was searched. With nothing to show, the note says why.
    """
    import asyncio

    from engine.pool import PreprocessPool

    wanted = dict(photos)
    if not wanted:
        return {}

    def cached(sha256: str | None) -> Path | None:
        return _cached(cache.photo_path, sha256) if cache is not None and sha256 else None

    async with PreprocessPool(options=THUMBNAIL_OPTIONS) as pool:

        async def from_cache(blob: Path, note: str | None = None) -> Thumbnail:
            result = await pool.prepare(blob)  # the worker reads it: one photo in memory each
            if isinstance(result, PreprocessFailure):
                return Thumbnail(None, f"no preview: {result.message}")
            if result.sha256 != blob.name:
                return Thumbnail(None, "no preview: its copy in the image cache is damaged")
            return Thumbnail(result.jpeg, note)

        async def thumbnail(path: str, sha256: str | None) -> Thumbnail:
            if "://" in path:
                blob = cached(sha256)
                if blob is None:
                    return Thumbnail(None, "no preview: the photo is not in the image cache")
                return await from_cache(blob)
            result = await pool.prepare(Path(path))
            if isinstance(result, PreprocessFailure):
                why = "gone or unreadable since the run"
            elif sha256 is not None and result.sha256 != sha256:
                why = "the file has changed since the run"
            else:
                return Thumbnail(result.jpeg)
            blob = cached(sha256)
            if blob is not None:
                return await from_cache(blob, f"{why}; shown as it was searched")
            if isinstance(result, PreprocessFailure):
                return Thumbnail(None, f"no preview: {result.message}")
            return Thumbnail(result.jpeg, why)

        made = await asyncio.gather(*(thumbnail(path, sha) for path, sha in wanted.items()))
    return dict(zip(wanted, made, strict=True))


async def offer_thumbnails(shas: Sequence[str], cache: ImageCache | None) -> dict[str, bytes]:
    """A small thumbnail (:data:`OFFER_IMAGE_OPTIONS`) of each offer image in ``cache``, by
    its SHA-256; those the cache no longer has, or that do not decode, are left out."""
    import asyncio

    from engine.pool import PreprocessPool

    found = {sha: blob for sha in shas if cache is not None and (blob := _cached(cache.path, sha))}
    if not found:
        return {}
    async with PreprocessPool(options=OFFER_IMAGE_OPTIONS) as pool:
        made = await asyncio.gather(*(pool.prepare(blob) for blob in found.values()))
    return {
        sha: result.jpeg
        for sha, result in zip(found, made, strict=True)
        if not isinstance(result, PreprocessFailure) and result.sha256 == sha  # not damaged
    }


def _cached(locate: Callable[[str], Path | None], sha256: str) -> Path | None:
    """``locate(sha256)``; ``None`` as well when the cache's index cannot be read or the name
    is no SHA-256: one image the report cannot show never stops it."""
    try:
        return locate(sha256)
    except (StorageError, ValueError):
        return None


def _image_cache(manifest: Mapping[str, Any], stack: ExitStack) -> ImageCache | None:
    """The image cache the run used (its manifest says), else the default one; ``None`` when
    there is none: the report never creates one."""
    from engine.imagecache import INDEX_NAME, ImageCache
    from engine.jobfile import default_cache_dir

    evidence = manifest.get("evidence")
    named = evidence.get("cache_dir") if isinstance(evidence, dict) else None
    try:
        folder = Path(named) if isinstance(named, str) else default_cache_dir(os.environ)
    except ConfigError:  # no home directory
        return None
    if not (folder / INDEX_NAME).is_file():
        return None
    try:
        return stack.enter_context(ImageCache(folder))
    except StorageError:
        return None  # the photos that need it say "not in the image cache"


def parse_rate(text: object) -> RateLimit | None:
    """The limit of a run's rate as its summary shows it (``10/60s``, ``10/60s per app, 2
    apps``, ``upload 10/60s, query 10/60s``): calls per window over every app and API.

    ``None`` when there is none, or when APIs have windows of different lengths (their calls
    have no one limit per window).
    """
    if not isinstance(text, str):
        return None
    rates = [Rate.parse(found[0]) for found in RATE_TEXT.finditer(text)]
    if not rates or len({r.period for r in rates}) != 1:
        return None
    apps = _APPS.search(text)
    per_app = sum(r.calls for r in rates)
    return RateLimit(per_app * (int(apps[1]) if apps else 1), rates[0].period, text)


def quota_use(times: Sequence[float], rate: RateLimit | None) -> QuotaUse:
    """Calls per window of the rate's period (:data:`DEFAULT_PERIOD` without a rate) from the
    first call on, merged into at most :data:`MAX_BARS` bars; and the most calls any sliding
    window of that period held."""
    period = rate.period if rate else DEFAULT_PERIOD
    if not times:
        return QuotaUse(None, period, (), rate.calls if rate else None, 0, rate)
    ordered = sorted(times)
    start = ordered[0]
    windows = int((ordered[-1] - start) // period) + 1
    merge = -(-windows // MAX_BARS)
    window = period * merge
    counts = [0] * (-(-windows // merge))
    for at in ordered:
        counts[int((at - start) // window)] += 1
    limit = rate.calls * merge if rate else None
    return QuotaUse(start, window, tuple(counts), limit, most_in_window(ordered, period), rate)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float | Decimal) else None
