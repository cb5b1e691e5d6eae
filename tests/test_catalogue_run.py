"""Catalogue matching end to end: a SKU table in, SKUs and evidence on every row out.

Real parts only: the sandbox on loopback (its own catalogue, with resellers sharing one factory
photo, serving every offer image), a loopback web server for the catalogue's photo URLs, the
image cache on disk, the Parquet feed read back.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image, ImageDraw

from engine.commands.reclean import reclean
from engine.feedread import find_run
from engine.outcome import ExitCode
from engine.report import Thumbnail, gather
from engine.runner import run_job
from engine.sandbox import Sandbox, SandboxConfig
from engine.sandbox.catalogue import DEFAULT_CATALOGUE
from tests.job_kit import creds, make_job, read_table

FACTORY_PHOTO = "p001.jpg"
RESELLERS = (990_000_000_001, 990_000_000_002)
"""Two more offers of the product in p001.jpg, listed with the very same factory photo."""
IMAGELESS = 990_000_000_003
"""A third reseller, whose image the CDN no longer has (404)."""
SIGNATURE = "X-Sig=SECRET-5f2c"
"""The credential of a signed photo link: used to download, never written anywhere."""
BIG = 3_000_000
"""Bytes the oversized photo URL declares: over the job's downloads.max_bytes."""


def derived_copy(source: Path) -> bytes:
    """A buyer's re-post of a catalogue photo: cropped off-centre, shrunk, watermarked and
    re-encoded as a lower-quality JPEG."""
    with Image.open(source) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    crop = rgb.crop((int(w * 0.04), int(h * 0.1), int(w * 0.92), int(h * 0.97)))
    crop = crop.resize((int(crop.width * 0.7), int(crop.height * 0.7)))
    ImageDraw.Draw(crop).text((8, crop.height - 18), "shop-123", fill=(255, 255, 255))
    out = io.BytesIO()
    crop.save(out, "JPEG", quality=60)
    return out.getvalue()


def reseller_catalogue(folder: Path) -> dict[str, int]:
    """The built-in catalogue plus :data:`RESELLERS` sharing p001's photo; returns the offer ids
    of the products by image file."""
    shutil.copytree(DEFAULT_CATALOGUE, folder)
    entries: list[dict[str, Any]] = json.loads((folder / "catalogue.json").read_text("utf-8"))
    factory = next(e for e in entries if e["image"] == FACTORY_PHOTO)
    for n, offer_id in enumerate(RESELLERS):
        entries.append(factory | {"offer_id": offer_id, "company": f"转售商{n}贸易有限公司"})
    entries.append(factory | {"offer_id": IMAGELESS, "image_fault": "missing"})
    (folder / "catalogue.json").write_text(json.dumps(entries, ensure_ascii=False), "utf-8")
    return {
        e["image"]: e["offer_id"] for e in entries if e["offer_id"] not in (*RESELLERS, IMAGELESS)
    }


@dataclass
class PhotoServer:
    """The user's own image host: a few good and bad photo URLs, and what it was asked."""

    url: str = ""
    bodies: Counter[str] = field(default_factory=Counter)
    """Responses that carried a body, by path."""
    not_modified: int = 0


@pytest.fixture
async def photo_server(tmp_path: Path) -> AsyncIterator[PhotoServer]:
    served = PhotoServer()
    good = tmp_path / "served" / "b.jpg"
    good.parent.mkdir()
    good.write_bytes(derived_copy(DEFAULT_CATALOGUE / "p003.jpg"))

    async def photo(request: web.Request) -> web.Response:
        etag = '"b-1"'
        if request.headers.get("If-None-Match") == etag:
            served.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        served.bodies[request.path] += 1
        return web.Response(
            body=good.read_bytes(), content_type="image/jpeg", headers={"ETag": etag}
        )

    async def html(request: web.Request) -> web.Response:
        served.bodies[request.path] += 1
        return web.Response(
            text="<html><body>Log in to see this photo</body></html>", content_type="text/html"
        )

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = BIG
        await response.prepare(request)
        served.bodies[request.path] += 1
        await response.write(b"\xff\xd8\xff" + b"\0" * 1024)
        return response

    app = web.Application()
    app.router.add_get("/photos/b.jpg", photo)
    app.router.add_get("/photos/login.jpg", html)
    app.router.add_get("/photos/huge.jpg", big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    served.url = f"http://127.0.0.1:{port}"
    try:
        yield served
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class CatalogueRun:
    out: Path
    box: Sandbox
    photos: PhotoServer
    offer_ids: dict[str, int]
    job: Any


@pytest.fixture
async def catalogue_run(
    tmp_path: Path, photo_server: PhotoServer, refusing_url: str
) -> AsyncIterator[CatalogueRun]:
    offer_ids = reseller_catalogue(tmp_path / "catalogue")
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "cup-copy.jpg").write_bytes(derived_copy(DEFAULT_CATALOGUE / FACTORY_PHOTO))
    rows = [
        ("A-1", "shop/cup-copy.jpg", "Steel flask 500ml"),
        ("A-2", "shop/cup-copy.jpg", "Steel flask 500ml, blue box"),  # same photo, 2nd SKU
        ("B-1", f"{photo_server.url}/photos/b.jpg?{SIGNATURE}", "Mug"),  # a signed link
        ("C-404", f"{photo_server.url}/photos/gone.jpg", ""),
        ("D-html", f"{photo_server.url}/photos/login.jpg", ""),
        ("E-big", f"{photo_server.url}/photos/huge.jpg", ""),
        ("F-down", f"{refusing_url}/photos/x.jpg", ""),
    ]
    table = tmp_path / "skus.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "image", "title"])
        writer.writerows(rows)
    config = SandboxConfig(catalogue_dir=tmp_path / "catalogue")
    async with Sandbox(config) as box:
        out = tmp_path / "out"
        job = make_job(
            shop,
            out,
            box.url,
            inputs={"paths": [], "catalogue": str(table)},
            downloads={"max_bytes": 1_000_000, "attempts": 2},
            evidence={"enabled": True},
        )
        outcome = await run_job(job, credentials=creds(box.config))
        assert outcome.exit_code == ExitCode.DONE_WITH_FAILURES, outcome.message
        yield CatalogueRun(out, box, photo_server, offer_ids, job)


def rows_by_sku(out: Path, table: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in read_table(out, table).to_table().to_pylist():
        grouped.setdefault(row["sku"], []).append(row)
    return grouped


async def test_every_row_carries_its_sku_and_bad_photos_fail_alone_with_a_reason(
    catalogue_run: CatalogueRun,
) -> None:
    images = {sku: rows[0] for sku, rows in rows_by_sku(catalogue_run.out, "images").items()}
    assert sorted(images) == ["A-1", "A-2", "B-1", "C-404", "D-html", "E-big", "F-down"]
    reasons = {sku: row["failure_reason"] for sku, row in images.items()}
    assert reasons == {
        "A-1": None,
        "A-2": None,
        "B-1": None,
        "C-404": "http_status",
        "D-html": "not_an_image",
        "E-big": "too_large",
        "F-down": "download_failed",
    }
    assert "404" in images["C-404"]["failure_message"]
    assert images["A-2"]["sku_title"] == "Steel flask 500ml, blue box"
    assert images["B-1"]["query_path"] == f"{catalogue_run.photos.url}/photos/b.jpg"
    # The oversized photo's body was refused on its Content-Length, never read whole.
    matches = rows_by_sku(catalogue_run.out, "matches")
    assert set(matches) == {"A-1", "A-2", "B-1"}
    assert all(row["sku"] for rows in matches.values() for row in rows)


async def test_identical_bytes_under_two_skus_are_searched_once_and_both_get_the_rows(
    catalogue_run: CatalogueRun,
) -> None:
    stats = catalogue_run.box.stats()
    assert sorted(stats["searches"].values()) == [1, 1]  # the shared photo, and B's
    matches = rows_by_sku(catalogue_run.out, "matches")
    offers = [[(r["item_id"], r["rank"]) for r in matches[sku]] for sku in ("A-1", "A-2")]
    assert sorted(offers[0]) == sorted(offers[1]) != []


async def test_a_derived_copy_is_the_same_photo_and_resellers_share_one_cluster(
    catalogue_run: CatalogueRun,
) -> None:
    rows = {r["item_id"]: r for r in rows_by_sku(catalogue_run.out, "matches")["A-1"]}
    factory = catalogue_run.offer_ids[FACTORY_PHOTO]
    same = [factory, *RESELLERS]
    assert set(same) <= set(rows)
    assert [rows[i]["same_photo"] for i in same] == [True, True, True]
    assert {rows[i]["verdict"] for i in same} == {"same_photo"}
    clusters = {rows[i]["cluster_id"] for i in same}
    assert len(clusters) == 1 and None not in clusters
    others = [r for i, r in rows.items() if i not in (*same, IMAGELESS)]
    assert others and not any(r["same_photo"] for r in others)
    assert all(r["cluster_id"] not in clusters for r in others)
    # ocean gives no similarity: ours fills it, and says so.
    judged = [r for i, r in rows.items() if i != IMAGELESS]
    assert all(r["similarity"] == r["visual_score"] is not None for r in judged)
    assert {r["similarity_source"] for r in judged} == {"visual"}
    assert max(rows[i]["visual_score"] for i in same) > max(r["visual_score"] for r in others)
    images = rows_by_sku(catalogue_run.out, "images")["A-1"][0]
    assert images["same_photo_offers"] == 3


async def test_reclean_recomputes_evidence_with_no_call_and_no_download(
    catalogue_run: CatalogueRun,
) -> None:
    before = catalogue_run.box.stats()
    bodies = sum(catalogue_run.photos.bodies.values())
    evidence = sorted(
        (r["sku"], r["item_id"], r["visual_score"], r["same_photo"], r["cluster_id"])
        for r in read_table(catalogue_run.out, "matches").to_table().to_pylist()
    )

    summary = reclean(catalogue_run.out)

    after = catalogue_run.box.stats()
    assert summary["calls"] == 0
    assert after["total_calls"] == before["total_calls"]
    assert after["images"]["requests"] == before["images"]["requests"]
    assert sum(catalogue_run.photos.bodies.values()) == bodies
    again = sorted(
        (r["sku"], r["item_id"], r["visual_score"], r["same_photo"], r["cluster_id"])
        for r in read_table(catalogue_run.out, "matches").to_table().to_pylist()
    )
    assert again == evidence


async def test_a_rerun_downloads_no_offer_image_and_revalidates_the_photo_urls(
    catalogue_run: CatalogueRun,
) -> None:
    def requests() -> int:  # offer images
        return int(catalogue_run.box.stats()["images"]["requests"])

    before = requests()
    assert before > 0
    bodies = catalogue_run.photos.bodies["/photos/b.jpg"]

    outcome = await run_job(catalogue_run.job, credentials=creds(catalogue_run.box.config))

    assert outcome.exit_code == ExitCode.DONE_WITH_FAILURES, outcome.message
    assert requests() == before  # the missing image too: its 404 is remembered for a day
    assert catalogue_run.photos.bodies["/photos/b.jpg"] == bodies
    assert catalogue_run.photos.not_modified >= 1


async def test_the_report_shows_web_photos_and_offer_images_from_the_image_cache(
    catalogue_run: CatalogueRun,
) -> None:
    report = await asyncio.to_thread(gather, find_run(catalogue_run.out))
    cards = {card.sku: card for card in report.photos}
    assert cards["B-1"].path.startswith("http://")
    for sku in ("A-1", "A-2", "B-1"):  # local and web photos alike
        assert cards[sku].thumbnail.jpeg is not None, (sku, cards[sku].thumbnail.note)
    assert cards["C-404"].thumbnail == Thumbnail(
        None, "no preview: the photo is not in the image cache"
    )
    # Beside each offer, the image its verdict was judged on.
    judged = [line for card in report.photos for line in card.offers if line.image_sha256]
    assert judged and all(line.image_sha256 in report.offer_images for line in judged)


async def test_an_offer_whose_image_is_gone_has_null_evidence_and_a_note(
    catalogue_run: CatalogueRun,
) -> None:
    rows = {r["item_id"]: r for r in rows_by_sku(catalogue_run.out, "matches")["A-1"]}
    gone = rows[IMAGELESS]
    evidence = ("visual_score", "same_photo", "verdict", "cluster_id", "offer_image_sha256")
    assert [gone[c] for c in evidence] == [None] * len(evidence)
    assert gone["similarity"] is None  # ocean: no score of the gateway's, none of ours
    assert any(
        n.startswith("evidence: offer image not available: http_status") for n in gone["notes"]
    )
    images = rows_by_sku(catalogue_run.out, "images")["A-1"][0]
    assert images["status"] == "ok"  # the photo itself is fine


async def test_send_title_asks_with_each_skus_title_so_identical_bytes_are_two_questions(
    tmp_path: Path,
) -> None:
    shop = tmp_path / "shop"
    shop.mkdir()
    shutil.copy(DEFAULT_CATALOGUE / "p002.jpg", shop / "mug.jpg")
    table = tmp_path / "skus.csv"
    table.write_text(
        'sku,image,title\nM-1,shop/mug.jpg,Ceramic mug\nM-2,shop/mug.jpg,"Ceramic mug, gift box"\n'
        "M-3,shop/mug.jpg,Ceramic mug\n",
        encoding="utf-8",
    )
    async with Sandbox(SandboxConfig()) as box:
        job = make_job(
            shop,
            tmp_path / "out",
            box.url,
            inputs={"paths": [], "catalogue": str(table)},
            gateway={"send_title": True},
        )
        outcome = await run_job(job, credentials=creds(box.config))
        stats = box.stats()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert sorted(stats["keywords"]) == ["Ceramic mug", "Ceramic mug, gift box"]
    assert list(stats["searches"].values()) == [2]  # M-3 rode along on M-1's question
    images = rows_by_sku(tmp_path / "out", "images")
    assert sorted(images) == ["M-1", "M-2", "M-3"]


async def test_a_signed_photo_links_credential_is_in_no_file_the_engine_wrote(
    catalogue_run: CatalogueRun, tmp_path: Path
) -> None:
    assert catalogue_run.photos.bodies["/photos/b.jpg"] == 1  # it was used to download
    secret = SIGNATURE.split("=")[1]
    for table in ("matches", "images"):
        rows = read_table(catalogue_run.out, table).to_table().to_pylist()
        assert not [r for r in rows if secret in json.dumps(r, default=str)]
    # Checkpoints, manifest, image cache index: every file not compressed by Parquet.
    written = [*catalogue_run.out.rglob("*"), *(tmp_path / "xdg-cache").rglob("*")]
    leaks = [
        p
        for p in written
        if p.is_file() and p.suffix != ".parquet" and secret.encode() in p.read_bytes()
    ]
    assert leaks == []
