"""Judging a photo's offers from the image cache alone: real cache on disk, real images."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from engine.clean import CleanResult, Offer
from engine.evidence.fetch import rendition_url
from engine.evidence.judge import EvidenceJudge
from engine.imagecache import ImageCache, UrlEntry
from engine.sandbox.catalogue import DEFAULT_CATALOGUE
from engine.schema import ImageRow, Lineage

PHOTO = (DEFAULT_CATALOGUE / "p001.jpg").read_bytes()
OTHER = (DEFAULT_CATALOGUE / "p002.jpg").read_bytes()
SIDE = 300


def offer(item_id: int, image: str | None, similarity: float | None = None) -> Offer:
    return Offer(
        item_id=item_id,
        title=None,
        price_min=None,
        price_max=None,
        price_tiers=(),
        min_order=None,
        unit=None,
        similarity=similarity,
        rank=item_id,
        province=None,
        city=None,
        freight="unknown",
        company=None,
        monthly_sales=None,
        offer_url=f"https://detail.1688.com/offer/{item_id}.html",
        image_url=image,
    )


def url(n: int) -> str:
    return f"https://cbu01.alicdn.com/img/ibank/O1CN01{n}.jpg"


def smaller(data: bytes) -> bytes:
    """The photo as a reseller re-posts it: shrunk and re-encoded."""
    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        img.convert("RGB").resize((img.width // 2, img.height // 2)).save(out, "JPEG", quality=70)
    return out.getvalue()


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ImageCache]:
    with ImageCache(tmp_path / "images") as opened:
        for n, data in ((1, PHOTO), (2, smaller(PHOTO)), (3, OTHER)):
            sha = opened.put(data)
            opened.remember_url(UrlEntry(rendition_url(url(n), SIDE), sha, None, None, 0.0))
        yield opened


QUERY_SHA = hashlib.sha256(b"the buyer's original file").hexdigest()


def test_offers_are_judged_against_the_sent_jpeg_and_resellers_share_a_cluster(
    cache: ImageCache,
) -> None:
    cache.keep_sent(QUERY_SHA, smaller(PHOTO))
    judge = EvidenceJudge(cache, SIDE)
    offers, evidence = judge.judge(
        QUERY_SHA, None, "ocean", [offer(1, url(1)), offer(2, url(2)), offer(3, url(3))]
    )
    assert [e.same_photo for e in evidence] == [True, True, False]
    assert [e.verdict for e in evidence][:2] == ["same_photo", "same_photo"]
    assert evidence[0].cluster_id == evidence[1].cluster_id != evidence[2].cluster_id
    assert [o.similarity for o in offers] == [e.visual_score for e in evidence]
    assert {e.similarity_source for e in evidence} == {"visual"}
    new = judge.take_new_clusters()
    assert set(new) == {e.offer_image_sha256 for e in evidence}
    assert judge.take_new_clusters() == {}  # handed over once, for one commit


def test_a_missing_offer_image_gets_a_note_and_a_seed_score_keeps_its_source(
    cache: ImageCache,
) -> None:
    cache.keep_sent(QUERY_SHA, PHOTO)
    failures = {rendition_url(url(9), SIDE): "http_status: HTTP 404"}
    judge = EvidenceJudge(cache, SIDE, failures)
    offers, evidence = judge.judge(
        QUERY_SHA, None, "seed", [offer(9, url(9), 0.8), offer(1, url(1), 0.7)]
    )
    assert evidence[0].verdict is None and evidence[0].similarity_source == "gateway"
    assert offers[0].notes == ("evidence: offer image not available: http_status: HTTP 404",)
    assert offers[0].similarity == 0.8  # seed: the gateway's score stays
    assert evidence[1].same_photo and evidence[1].similarity_source == "gateway"
    assert offers[1].similarity == 0.7


def test_without_the_query_photo_every_offer_has_null_evidence_and_null_counts(
    cache: ImageCache, tmp_path: Path
) -> None:
    judge = EvidenceJudge(cache, SIDE)
    offers, evidence = judge.judge(QUERY_SHA, None, "seed", [offer(1, url(1), 0.9)])
    assert evidence[0].verdict is None and evidence[0].similarity_source == "gateway"
    assert offers[0].notes == ("evidence: the query photo is not in the evidence cache",)
    # A local file is read instead, if it still is the photo that was searched.
    local = tmp_path / "photo.jpg"
    local.write_bytes(PHOTO)
    _, found = judge.judge(
        hashlib.sha256(PHOTO).hexdigest(), str(local), "seed", [offer(1, url(1))]
    )
    assert found[0].same_photo
    _, changed = judge.judge(QUERY_SHA, str(local), "seed", [offer(1, url(1))])
    assert changed[0].verdict is None
    lineage = Lineage("q.jpg", QUERY_SHA, "r", "seed", datetime(2026, 12, 2, tzinfo=UTC), "v")
    result = CleanResult((offer(1, url(1)),), 1)
    row = ImageRow.from_result(lineage, result, calls=0, reused=False, evidence=evidence)
    assert (row.same_photo_offers, row.same_product_offers) == (None, None)


def test_cluster_ids_registered_earlier_are_kept_by_a_new_judge(cache: ImageCache) -> None:
    cache.keep_sent(QUERY_SHA, PHOTO)
    first = EvidenceJudge(cache, SIDE)
    _, before = first.judge(QUERY_SHA, None, "ocean", [offer(1, url(1)), offer(2, url(2))])
    registered = first.take_new_clusters()
    again = EvidenceJudge(cache, SIDE)  # a resumed invocation, or reclean
    again.restore(registered)
    _, after = again.judge(QUERY_SHA, None, "ocean", [offer(2, url(2)), offer(1, url(1))])
    assert {e.cluster_id for e in after} == {e.cluster_id for e in before}
    assert again.take_new_clusters() == {}
