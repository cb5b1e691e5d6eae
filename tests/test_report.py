"""``img1688 report``: the HTML page of a run, built from a real run's checkpoints and feed.

The sample set runs twice against the embedded sandbox on loopback (the second run reuses every
answer); the reports are read back as their JSON payload, and opened in headless Chromium (the
system's ``/usr/bin/chromium``; those tests are skipped without it), whose DOM, once the page's
script has run, shows the cards, the hidden ones, and whether every image decoded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from PIL import Image

from engine.cli import main
from engine.feedread import find_run
from engine.imagecache import ImageCache
from engine.report import (
    MAX_BARS,
    THUMBNAIL_SIDE,
    OfferLine,
    PhotoCard,
    RateLimit,
    Report,
    RunFacts,
    Thumbnail,
    gather,
    offer_thumbnails,
    parse_rate,
    quota_use,
    thumbnails,
    write_report,
)
from engine.report_html import PAGE, PLACEHOLDER, render_report
from tests.gateway_kit import JPEG
from tests.paths import SAMPLES

CHROMIUM = Path("/usr/bin/chromium")
needs_browser = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="no browser: /usr/bin/chromium is missing (apt-get install chromium; .ci/run does)",
)
MALICE = (
    '</script><script>document.body.dataset.pwned="script"</script>'
    "<img src=x onerror=\"document.body.dataset.pwned='img'\"><!-- &amp; \u2028"
)
"""Text from the internet that would run a script if any of it reached the markup unescaped."""


# -- a real job, run twice -----------------------------------------------------------------


@dataclass(frozen=True)
class Runs:
    first_out: Path
    """The output directory as the first run left it."""
    out: Path
    """The same after the second run, which replaced the first run's rows (same date)."""
    first: str
    second: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The sample set (buyer photos and awkward files) searched, then searched again (every
    answer reused), by ``img1688 run`` against the embedded sandbox; a copy of the output
    directory is taken between the two."""
    root = tmp_path_factory.mktemp("report-job")
    out = root / "out"
    job = root / "job.toml"
    job.write_text(
        '[job]\nname = "report-test"\n'
        f"[inputs]\npaths = [{json.dumps(str(SAMPLES / 'queries'))},"
        f" {json.dumps(str(SAMPLES / 'awkward'))}]\nrecursive = true\n"
        f"[output]\ndir = {json.dumps(str(out))}\n"
        '[gateway]\nprotocol = "ocean"\nendpoint = "sandbox"\nrate = "1000/1s"\n'
        "[engine]\nsearches = 4\nflush_seconds = 0.5\n",
        encoding="utf-8",
    )
    assert main(["run", str(job)]) == 1  # the awkward files include broken ones
    first = find_run(out).run_id
    shutil.copytree(out, root / "first-out")
    assert main(["run", str(job)]) == 1
    second = find_run(out).run_id
    assert first != second
    return Runs(root / "first-out", out, first, second)


def feed_rows(out: Path, table: str, run_id: str) -> list[dict[str, object]]:
    dataset = ds.dataset(out / table, format="parquet", partitioning="hive")
    return dataset.to_table(filter=ds.field("run_id") == run_id).to_pylist()


def payload(page: str) -> dict:
    """The photos' JSON payload of a report page."""
    match = re.search(
        r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S
    )
    assert match is not None
    return json.loads(match[1])


# -- from a real run's feed ----------------------------------------------------------------


def test_the_report_has_one_card_per_photo_with_its_best_offers(runs: Runs, tmp_path: Path) -> None:
    target = tmp_path / "first.html"
    written = write_report(runs.first_out, run_id=runs.first, dest=target, top=3)

    assert written.path == target and written.bytes == target.stat().st_size
    photos = payload(target.read_text(encoding="utf-8"))["photos"]
    images = feed_rows(runs.first_out, "images", runs.first)
    assert photos and [p["path"] for p in photos] == sorted(r["query_path"] for r in images)
    assert written.photos == len(images)
    matches = feed_rows(runs.first_out, "matches", runs.first)
    for photo in photos:
        ranked = sorted(
            (r for r in matches if r["query_path"] == photo["path"]), key=lambda r: r["rank"]
        )
        best = ranked[:3]
        assert [o["rank"] for o in photo.get("offers", [])] == [r["rank"] for r in best]
        assert [o["url"] for o in photo.get("offers", [])] == [r["offer_url"] for r in best]
        assert [o["title"] for o in photo.get("offers", [])] == [r["title"] for r in best]
        for offer, row in zip(photo.get("offers", []), best, strict=True):
            assert Decimal(offer["lo"]) == row["price_min"]
            assert [[q, Decimal(p)] for q, p in offer.get("tiers", [])] == [
                [t["min_quantity"], t["price"]] for t in row["price_tiers"]
            ]


def test_failed_photos_carry_their_reason_and_message(runs: Runs) -> None:
    report = gather(find_run(runs.first_out, runs.first))
    page = render_report(report)

    failed = {r["query_path"]: r for r in feed_rows(runs.first_out, "images", runs.first)}
    failed = {path: r for path, r in failed.items() if r["status"] == "failed"}
    assert {Path(p).name for p in failed} == {"empty.jpg", "not-an-image.jpg", "truncated.jpg"}
    shown = {p["path"]: p for p in payload(page)["photos"] if p["status"] == "failed"}
    assert shown.keys() == failed.keys()
    for path, row in failed.items():
        assert shown[path]["reason"] == row["failure_reason"]
        assert shown[path]["message"] == row["failure_message"]
        assert "offers" not in shown[path]
        assert f"<code>{row['failure_reason']}</code>" in page  # the summary's table


def test_thumbnails_are_small_jpegs_made_from_the_photos(runs: Runs) -> None:
    photos = payload(render_report(gather(find_run(runs.first_out, runs.first))))["photos"]

    for photo in photos:
        if photo["status"] == "failed":  # empty, not an image, truncated: a placeholder
            assert "thumb" not in photo
            continue
        prefix = "data:image/jpeg;base64,"
        assert photo["thumb"].startswith(prefix), photo["path"]
        data = base64.b64decode(photo["thumb"][len(prefix) :])
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            assert img.format == "JPEG"
            assert max(img.size) <= THUMBNAIL_SIDE
        assert len(data) <= 5_000


def test_the_summary_counts_the_run_and_its_calls_over_time(runs: Runs) -> None:
    first = gather(find_run(runs.first_out))
    second = gather(find_run(runs.out))  # the default: the latest completed run

    assert (first.run.run_id, second.run.run_id) == (runs.first, runs.second)
    images = feed_rows(runs.first_out, "images", runs.first)
    spent = sum(r["calls"] for r in images)
    assert spent > 0
    assert first.run.calls == spent
    assert sum(first.quota.counts) == spent  # the call log holds every call of the run
    assert first.quota.rate == RateLimit(1000, 1.0, "1000/1s")
    assert 0 < first.quota.peak <= 1000
    reused = [p for p in second.photos if p.reused]
    assert len(reused) == sum(1 for r in images if r["status"] == "ok")
    assert second.run.calls == 0 and second.quota.start is None
    page = render_report(second)
    assert "no call times for this run" in page
    assert re.search(r'<span class="label">Reused</span><span class="value">(\d+)<', page)[1] == (
        str(len(reused))
    )


async def test_a_thumbnail_says_why_it_is_missing_or_that_the_file_changed(
    tmp_path: Path,
) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a photo at all")
    gone = tmp_path / "gone.jpg"
    same = hashlib.sha256(JPEG).hexdigest()

    made = await thumbnails(
        [
            (str(photo), same),
            (str(gone), same),
            (str(junk), None),
        ]
    )
    changed = await thumbnails([(str(photo), "0" * 64)])

    assert made[str(photo)].jpeg is not None and made[str(photo)].note is None
    assert made[str(gone)].jpeg is None and "no preview" in (made[str(gone)].note or "")
    assert made[str(junk)].jpeg is None and "no preview" in (made[str(junk)].note or "")
    assert changed[str(photo)].jpeg is not None
    assert changed[str(photo)].note == "the file has changed since the run"


def jpeg_of(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 90), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def colour_of(thumbnail: Thumbnail) -> tuple[int, ...]:
    assert thumbnail.jpeg is not None, thumbnail.note
    return Image.open(io.BytesIO(thumbnail.jpeg)).convert("RGB").getpixel((5, 5))


def near(colour: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(colour, expected, strict=True))


async def test_photos_not_on_this_disk_or_changed_are_shown_from_the_image_cache(
    tmp_path: Path,
) -> None:
    red, green, blue = (200, 30, 30), (30, 200, 30), (30, 30, 200)
    web, sent = jpeg_of(red), jpeg_of(green)
    web_sha = hashlib.sha256(web).hexdigest()
    local = tmp_path / "photo.jpg"
    local.write_bytes(jpeg_of(blue))  # changed since the run: it was searched as `sent`
    searched_sha = "5e" * 32
    with ImageCache(tmp_path / "cache") as cache:
        cache.put(web)  # a web photo's download
        cache.keep_sent(searched_sha, sent)
        made = await thumbnails(
            [
                ("https://shop.example/a.jpg", web_sha),
                ("s3://photos/b.jpg", "0" * 64),  # never in this cache
                (str(local), searched_sha),
                (str(tmp_path / "moved.jpg"), searched_sha),
            ],
            cache,
        )
    assert near(colour_of(made["https://shop.example/a.jpg"]), red)
    assert made["https://shop.example/a.jpg"].note is None
    assert made["s3://photos/b.jpg"] == Thumbnail(
        None, "no preview: the photo is not in the image cache"
    )
    assert near(colour_of(made[str(local)]), green)
    assert made[str(local)].note == "the file has changed since the run; shown as it was searched"
    assert near(colour_of(made[str(tmp_path / "moved.jpg")]), green)
    assert made[str(tmp_path / "moved.jpg")].note == (
        "gone or unreadable since the run; shown as it was searched"
    )


async def test_a_damaged_or_unreadable_cached_image_costs_only_its_own_preview(
    tmp_path: Path,
) -> None:
    good, bad, odd = jpeg_of((200, 30, 30)), jpeg_of((30, 200, 30)), jpeg_of((30, 30, 200))
    with ImageCache(tmp_path / "cache") as cache:
        shas = [cache.put(data) for data in (good, bad, odd)]
        damaged = cache.path(shas[1])
        assert damaged is not None
        damaged.write_bytes(good)  # its bytes no longer match its name
        unreadable = cache.path(shas[2])
        assert unreadable is not None
        unreadable.unlink()
        unreadable.mkdir()  # a folder where the blob was
        made = await thumbnails(
            [(f"https://shop.example/{n}.jpg", sha) for n, sha in enumerate(shas)], cache
        )
        pictures = await offer_thumbnails([*shas, "not a sha"], cache)
    assert made["https://shop.example/0.jpg"].jpeg is not None
    assert made["https://shop.example/1.jpg"] == Thumbnail(
        None, "no preview: its copy in the image cache is damaged"
    )
    assert made["https://shop.example/2.jpg"].jpeg is None
    assert (made["https://shop.example/2.jpg"].note or "").startswith("no preview: ")
    assert list(pictures) == [shas[0]]


# -- the command line ----------------------------------------------------------------------


def test_the_command_writes_OUT_report_html_and_prints_its_path(
    runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(runs.first_out), "--run", runs.first, "--top", "1"]) == 0

    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str((runs.first_out / "report.html").resolve())
    photos = payload((runs.first_out / "report.html").read_text(encoding="utf-8"))["photos"]
    assert photos
    assert max(len(p.get("offers", [])) for p in photos) == 1


def test_offer_images_are_embedded_once_each_unless_left_out(runs: Runs, tmp_path: Path) -> None:
    with_images, without = tmp_path / "with.html", tmp_path / "without.html"
    assert main(["report", str(runs.first_out), "--out", str(with_images)]) == 0
    assert main(["report", str(runs.first_out), "--out", str(without), "--no-offer-images"]) == 0

    full = payload(with_images.read_text(encoding="utf-8"))
    named = [o["img"] for p in full["photos"] for o in p.get("offers", []) if "img" in o]
    assert named and sorted(set(named)) == list(range(len(full["images"])))
    assert all(uri.startswith("data:image/jpeg;base64,") for uri in full["images"])
    lean = payload(without.read_text(encoding="utf-8"))
    assert lean["images"] == []
    assert not any("img" in o for p in lean["photos"] for o in p.get("offers", []))
    assert without.stat().st_size < with_images.stat().st_size


def test_a_run_whose_rows_a_later_run_replaced_is_exit_2(
    runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(runs.out), "--run", runs.first]) == 2
    error = capsys.readouterr().err
    assert f"run {runs.first} is no longer in the feed: run {runs.second}" in error


def test_an_unknown_run_is_exit_2(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs.out), "--run", "20990101T000000Z-none"]) == 2
    assert "has no run '20990101T000000Z-none'" in capsys.readouterr().err


def test_top_must_be_at_least_1(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["report", str(runs.out), "--top", "0"])
    assert raised.value.code == 2
    assert "--top: must be at least 1" in capsys.readouterr().err


def test_an_output_directory_without_state_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no job state" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()
    assert list(tmp_path.iterdir()) == []  # nothing created, not even a database


# -- the builder, on made-up reports -------------------------------------------------------


def offer(rank: int, **changes: object) -> OfferLine:
    line = OfferLine(
        rank=rank,
        item_id=600_000_000_000 + rank,
        offer_url=f"https://detail.1688.com/offer/{600_000_000_000 + rank}.html",
        title=f"offer {rank}",
        price_min=Decimal("12.5000"),
        price_max=Decimal("15.0000"),
        tiers=((2, Decimal("15.0000")), (100, Decimal("12.5000"))),
        min_order=2,
        unit="件",
        city="杭州市",
        company="义乌市好物日用品有限公司",
    )
    return replace(line, **changes)  # type: ignore[arg-type]


def photo(path: str, **changes: object) -> PhotoCard:
    card = PhotoCard(
        path=path,
        status="ok",
        offers=(offer(1), offer(2)),
        offers_received=2,
        offers_kept=2,
        calls=2,
        thumbnail=Thumbnail(JPEG),
    )
    return replace(card, **changes)  # type: ignore[arg-type]


def made_up(photos: list[PhotoCard], **changes: object) -> Report:
    report = Report(
        run=RunFacts(
            run_id="20260112T020000Z-3fa2",
            run_date="2026-01-12",
            started_at="2026-01-12T02:00:00+00:00",
            completed_at="2026-01-12T02:41:10+00:00",
            job="nightly",
            calls=2 * len(photos),
        ),
        photos=tuple(photos),
        top=5,
        quota=quota_use([1_768_183_200.0 + 6 * i for i in range(len(photos))], None),
        columns=frozenset(),
        generated_at=datetime(2026, 1, 12, 3, tzinfo=UTC),
    )
    return replace(report, **changes)  # type: ignore[arg-type]


def malicious_report() -> Report:
    """Every text of the page from a hostile source, and the columns a later schema adds."""
    return made_up(
        [
            photo(
                f"/photos/{MALICE}.jpg",
                sku=MALICE,
                title=MALICE,
                offers=(offer(1, title=MALICE, title_en=MALICE, verdict=MALICE, company=MALICE),),
            ),
            photo(
                "/photos/broken.jpg",
                status="failed",
                failure_reason=MALICE,
                failure_message=MALICE,
                offers=(),
                thumbnail=Thumbnail(None, MALICE),
            ),
        ],
        run=replace(made_up([]).run, job=MALICE, run_id=MALICE),
        columns=frozenset({"sku", "title", "title_en", "verdict"}),
    )


def test_no_text_reaches_the_markup_unescaped() -> None:
    page = render_report(malicious_report())

    assert page.count("<script") == 2  # the payload and the page's own script, nothing else
    assert page.count("</script>") == 2
    assert "<img" not in page and "<!--" not in page
    raw = re.search(r'id="report-data">(.*?)</script>', page, re.S)
    assert raw is not None and "\u2028" not in raw[1]  # a line terminator to older JS parsers
    assert "pwned" not in page.replace("dataset.pwned", "")  # only inside escaped strings
    data = payload(page)
    assert data["photos"][0]["sku"] == MALICE
    assert data["photos"][0]["offers"][0]["title"] == MALICE
    assert data["photos"][1]["reason"] == MALICE
    assert "&lt;/script&gt;" in page  # the summary (reasons, job, run id): entity-escaped
    assert data["columns"] == ["sku", "title", "title_en", "verdict"]


def test_the_page_allows_no_network_and_only_its_own_script() -> None:
    page = render_report(made_up([photo("/photos/a.jpg")]))

    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert policy is not None
    assert "default-src 'none'" in policy[1] and "img-src data:" in policy[1]
    assert "script-src 'sha256-" in policy[1] and "unsafe-inline" not in policy[1]
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing loaded from elsewhere
    assert payload(page)["placeholder"] == PLACEHOLDER


def test_only_present_optional_fields_are_sent() -> None:
    photos = payload(render_report(made_up([photo("/photos/a.jpg")])))["photos"]

    assert "sku" not in photos[0] and "title" not in photos[0]
    assert photos[0]["offers"][0] == {
        "rank": 1,
        "title": "offer 1",
        "lo": "12.50",
        "hi": "15.00",
        "tiers": [[2, "15.00"], [100, "12.50"]],
        "moq": 2,
        "unit": "件",
        "city": "杭州市",
        "supplier": "义乌市好物日用品有限公司",
        "url": "https://detail.1688.com/offer/600000000001.html",
    }


# -- rates and the quota chart -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/60s", RateLimit(10, 60.0, "10/60s")),
        ("10/60s per app, 2 apps", RateLimit(20, 60.0, "10/60s per app, 2 apps")),
        ("upload 10/60s, query 10/60s", RateLimit(20, 60.0, "upload 10/60s, query 10/60s")),
        ("10/1m", RateLimit(10, 60.0, "10/1m")),
        ("10/1e+06s per app, 2 apps", RateLimit(20, 1e6, "10/1e+06s per app, 2 apps")),
        ("upload 10/60s, query 5/30s", None),
        ("", None),
        (None, None),
    ],
)
def test_the_limit_comes_from_the_runs_rate(text: str | None, expected: RateLimit | None) -> None:
    assert parse_rate(text) == expected


def test_calls_are_counted_per_window_from_the_first_call() -> None:
    rate = RateLimit(10, 60.0, "10/60s")
    times = [1000.0 + 6 * i for i in range(25)] + [1000.0 + 600]  # 25 calls, then one late

    use = quota_use(times, rate)

    assert use.start == 1000.0 and use.window == 60.0 and use.limit == 10
    assert use.counts == (10, 10, 5, 0, 0, 0, 0, 0, 0, 0, 1)
    assert use.peak == 10
    # A call leaves the window one period after it was made.
    assert quota_use([0.0, 0.5, 1.0, 1.5], RateLimit(10, 1.0, "10/1s")).peak == 2


def test_a_long_run_merges_windows_into_at_most_max_bars() -> None:
    times = [float(i) for i in range(0, 60 * (3 * MAX_BARS), 60)]  # one call a minute

    use = quota_use(times, RateLimit(1, 60.0, "1/60s"))

    assert len(use.counts) == MAX_BARS and set(use.counts) == {3}
    assert use.window == 180.0 and use.limit == 3  # the limit of a merged bar too
    assert use.peak == 1


def test_the_chart_draws_the_limit_and_marks_windows_over_it() -> None:
    times = [float(i) for i in range(12)] + [60.0 + i for i in range(5)]  # 12, then 5

    tight = render_report(made_up([], quota=quota_use(times, RateLimit(10, 60.0, "10/60s"))))
    loose = render_report(made_up([], quota=quota_use(times, RateLimit(1000, 60.0, "1000/60s"))))

    assert tight.count('class="bar over"') == 1 and tight.count('class="bar"') == 1
    assert 'class="limit"' in tight and "the most in any 1 min was 12 of 10 allowed" in tight
    assert 'class="limit"' not in loose and "1,000 per bar, is far above the chart" in loose
    assert 'class="bar over"' not in loose


# -- in a browser --------------------------------------------------------------------------


@dataclass
class Card:
    photo: str
    status: str
    hidden: bool
    text: str = ""
    images: list[dict[str, str | None]] = field(default_factory=list)


class Dom(HTMLParser):
    """The cards (elements with ``data-photo``) of a DOM as Chromium dumps it, with their text
    and images; and the page's check result, if it wrote one."""

    VOID = frozenset({"img", "br", "input", "meta", "link", "hr", "wbr", "source"})

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: list[Card] = []
        self.body: dict[str, str | None] = {}
        self.count = ""
        self._depth = 0
        self._capture: str | None = None
        self.check: dict | None = None
        self._check_text = ""
        self.feed(markup)
        self.close()
        if self._check_text:
            self.check = json.loads(self._check_text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.body = found
        if self._depth:
            if tag == "img":
                self.cards[-1].images.append(found)
            if tag not in self.VOID:
                self._depth += 1
        elif "data-photo" in found:
            self.cards.append(
                Card(str(found["data-photo"]), str(found["data-status"]), "hidden" in found)
            )
            self._depth = 1
        if found.get("id") in ("report-check", "count"):
            self._capture = found["id"]

    def handle_endtag(self, tag: str) -> None:
        if self._depth:
            self._depth -= 1
        self._capture = None

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.cards[-1].text += data
        if self._capture == "report-check":
            self._check_text += data
        elif self._capture == "count":
            self.count += data


def open_in_chromium(page: Path, fragment: str, profile: Path) -> Dom:
    """``page#fragment`` in headless Chromium, its DOM once the page's script has run."""
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri() + fragment,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return Dom(done.stdout)


@needs_browser
def test_in_a_browser_every_photo_has_a_card_and_every_image_decodes(
    runs: Runs, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    assert main(["report", str(runs.first_out), "--out", str(page)]) == 0
    images = feed_rows(runs.first_out, "images", runs.first)
    assert images

    dom = open_in_chromium(page, "#check", tmp_path / "profile")

    assert sorted(c.photo for c in dom.cards) == sorted(r["query_path"] for r in images)
    assert not any(c.hidden for c in dom.cards)
    assert dom.check is not None, "the page's check did not finish"
    assert dom.check["broken"] == []
    # A thumbnail each, and the image of each offer shown whose evidence was judged.
    judged = [
        row
        for row in feed_rows(runs.first_out, "matches", runs.first)
        if row["rank"] <= 5 and row["offer_image_sha256"]
    ]
    assert judged
    assert dom.check["images"] == dom.check["decoded"] == len(images) + len(judged)
    assert all(i["src"] and i["src"].startswith("data:image/") for c in dom.cards for i in c.images)
    for row in images:
        (card,) = (c for c in dom.cards if c.photo == row["query_path"])
        if row["status"] == "failed":
            assert f"failed: {row['failure_reason']}" in card.text
            assert str(row["failure_message"]) in card.text
        else:
            assert f"{row['offers_kept']} of {row['offers_received']} offers kept" in card.text
    assert dom.count == f"Showing {len(images)} of {len(images)} photos"


@needs_browser
def test_in_a_browser_failed_only_hides_the_other_cards(runs: Runs, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    assert main(["report", str(runs.first_out), "--out", str(page)]) == 0
    images = feed_rows(runs.first_out, "images", runs.first)
    failed = {r["query_path"] for r in images if r["status"] == "failed"}
    assert failed

    dom = open_in_chromium(page, "#failed", tmp_path / "profile")

    assert len(dom.cards) == len(images)
    assert {c.photo for c in dom.cards if not c.hidden} == failed
    assert all(c.hidden for c in dom.cards if c.status == "ok")
    assert (
        dom.count
        == f"Showing {len(failed)} of {len(failed)} matching photos ({len(images)} in all)"
    )


@needs_browser
def test_in_a_browser_each_offer_shows_the_image_it_was_judged_on(tmp_path: Path) -> None:
    factory, gone = "fa" * 32, "90" * 32  # resellers share the first; the second is not cached
    picture = jpeg_of((200, 30, 30))
    report = made_up(
        [
            photo(
                "/photos/a.jpg",
                offers=(
                    offer(1, image_sha256=factory),
                    offer(2, image_sha256=factory),
                    offer(3, image_sha256=gone),
                ),
            )
        ],
        columns=frozenset({"offer_image_sha256"}),
        offer_images={factory: picture},
    )
    page = tmp_path / "report.html"
    markup = render_report(report)
    assert markup.count(base64.b64encode(picture).decode()) == 1  # sent once, shown twice
    page.write_text(markup, encoding="utf-8")

    dom = open_in_chromium(page, "#check", tmp_path / "profile")

    (card,) = dom.cards
    shown = [image for image in card.images if image.get("alt") == "the offer's image"]
    assert len(shown) == 2
    assert dom.check == {"images": 3, "decoded": 3, "broken": []}  # the photo's and two offers'
    assert "Image" in card.text  # the column's heading
    # None to show (--no-offer-images, or none cached): no column of empty cells.
    page.write_text(render_report(replace(report, offer_images={})), encoding="utf-8")
    (lean,) = open_in_chromium(page, "#check", tmp_path / "profile").cards
    assert len(lean.images) == 1 and "Image" not in lean.text


@needs_browser
def test_in_a_browser_the_check_names_the_photo_whose_image_does_not_decode(
    tmp_path: Path,
) -> None:
    good, bad = "fa" * 32, "0b" * 32
    report = made_up(
        [
            photo("/photos/a.jpg", offers=(offer(1, image_sha256=good),)),
            photo("/photos/b.jpg", offers=(offer(1, image_sha256=bad),)),
        ],
        columns=frozenset({"offer_image_sha256"}),
        offer_images={good: jpeg_of((200, 30, 30)), bad: b"\xff\xd8\xff not a JPEG after all"},
    )
    page = tmp_path / "report.html"
    page.write_text(render_report(report), encoding="utf-8")

    dom = open_in_chromium(page, "#check", tmp_path / "profile")

    assert dom.check == {"images": 4, "decoded": 3, "broken": ["/photos/b.jpg"]}


@needs_browser
def test_in_a_browser_hostile_text_stays_text(tmp_path: Path) -> None:
    page = tmp_path / "hostile.html"
    page.write_text(render_report(malicious_report()), encoding="utf-8")

    dom = open_in_chromium(page, "#check", tmp_path / "profile")

    assert "data-pwned" not in dom.body
    assert len(dom.cards) == 2
    offered, failed = dom.cards
    assert offered.photo == f"/photos/{MALICE}.jpg"
    # Its path, SKU, title, offer title, English title, supplier and verdict, as they are.
    assert offered.text.count(MALICE) >= 7
    assert f"failed: {MALICE}" in failed.text
    assert dom.check is not None and dom.check["broken"] == [] and dom.check["decoded"] == 2


@needs_browser
def test_in_a_browser_cards_come_a_page_at_a_time(tmp_path: Path) -> None:
    photos = [photo(f"/photos/{i:04d}.jpg", thumbnail=Thumbnail(None)) for i in range(250)]
    for index in (10, 240):
        photos[index] = photo(
            photos[index].path, status="failed", failure_reason="truncated", offers=()
        )
    page = tmp_path / "many.html"
    page.write_text(render_report(made_up(photos)), encoding="utf-8")

    first = open_in_chromium(page, "", tmp_path / "profile")
    failed = open_in_chromium(page, "#failed", tmp_path / "profile")

    assert [c.photo for c in first.cards] == [p.path for p in photos[:PAGE]]
    assert first.count == f"Showing {PAGE} of 250 photos"
    # The first page's cards, hidden but for the failed one, then the other failed photo's.
    assert [c.photo for c in failed.cards] == [p.path for p in photos[:PAGE]] + [photos[240].path]
    assert [c.photo for c in failed.cards if not c.hidden] == [photos[10].path, photos[240].path]
