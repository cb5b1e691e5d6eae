"""The visual evidence core: fingerprints, comparisons and photo clusters, on real images.

Query and offer images are the sandbox catalogue's studio shots, the sample set's buyer photos,
and copies of them made here the way resellers make them (crop, resize, re-encode, watermark).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFile, ImageFont

from engine.evidence.visual import (
    FINGERPRINT_VERSION,
    SAME_PRODUCT_THRESHOLD,
    SIMILAR_THRESHOLD,
    EvidenceImageError,
    Fingerprint,
    PhotoClusters,
    compare,
    fingerprint,
    verdict_for,
)
from engine.sandbox.catalogue import DEFAULT_CATALOGUE
from tests.paths import SAMPLES

# Catalogue photos by number (p001.jpg ...). Products 8 and 26 are both backpacks drawn with
# one silhouette, 2 and 21 both mugs: the hardest "different photo" pairs the catalogue has.
HANDBAG, BACKPACK, HIKING_BACKPACK, TSHIRT, KETTLE = 4, 8, 26, 10, 14
MUG, ENAMEL_MUG = 2, 21


@cache
def catalogue_photo(number: int) -> bytes:
    return (DEFAULT_CATALOGUE / f"p{number:03d}.jpg").read_bytes()


@cache
def catalogue_fp(number: int) -> Fingerprint:
    return fingerprint(catalogue_photo(number))


def encode(img: Image.Image, kind: str = "JPEG", quality: int = 50) -> bytes:
    out = io.BytesIO()
    img.save(out, kind, **({"quality": quality} if kind in ("JPEG", "WEBP") else {}))
    return out.getvalue()


def reseller_copy(
    data: bytes,
    box: tuple[float, float, float, float] = (0.05, 0.2, 0.8, 0.95),
    scale: float = 0.6,
    mark: str | None = "bottom-right",
    kind: str = "JPEG",
) -> bytes:
    """``box`` (fractions) of the photo, resized by ``scale``, with a shop's banner (about 7%
    of the area) in a corner, re-encoded."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    img = img.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    if mark is not None:
        w, h = img.size
        mark_w, mark_h = round(w * 0.4), round(h * 0.17)
        x = 2 if mark.endswith("left") else w - mark_w - 2
        y = 2 if mark.startswith("top") else h - mark_h - 2
        draw = ImageDraw.Draw(img)
        draw.rectangle((x, y, x + mark_w, y + mark_h), fill=(200, 30, 60))
        font = ImageFont.load_default(size=max(8, mark_h // 2))
        draw.text((x + 3, y + mark_h // 4), "1688 SHOP", fill="white", font=font)
    return encode(img, kind)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- same photo ---------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [HANDBAG, TSHIRT, KETTLE])
def test_a_cropped_resized_watermarked_reencoded_copy_is_the_same_photo(number: int) -> None:
    copy = fingerprint(reseller_copy(catalogue_photo(number)))
    result = compare(copy, catalogue_fp(number))
    assert result.same_photo
    assert result.verdict == "same_photo"
    assert 0.9 <= result.visual_score <= 1.0
    assert compare(catalogue_fp(number), copy) == result  # either way round


@pytest.mark.parametrize("kind", ["WEBP", "PNG"])
def test_other_encodings_and_corners_stay_the_same_photo(kind: str) -> None:
    copy = reseller_copy(catalogue_photo(HANDBAG), (0.2, 0.0, 1.0, 0.7), 1.7, "top-left", kind)
    assert compare(fingerprint(copy), catalogue_fp(HANDBAG)).same_photo


def test_two_crops_of_one_photo_are_the_same_photo() -> None:
    """Neither is inside the other: they share the middle of the photo, not its edges."""
    left = reseller_copy(catalogue_photo(TSHIRT), (0.0, 0.0, 0.85, 0.9), 0.7, None)
    right = reseller_copy(catalogue_photo(TSHIRT), (0.15, 0.1, 1.0, 1.0), 1.2, "top-right")
    assert compare(fingerprint(left), fingerprint(right)).same_photo


@pytest.mark.parametrize(
    ("copied", "other"),
    [(BACKPACK, HIKING_BACKPACK), (HIKING_BACKPACK, BACKPACK), (MUG, ENAMEL_MUG), (HANDBAG, 23)],
)
def test_a_copy_is_not_the_same_photo_as_another_product_of_its_kind(
    copied: int, other: int
) -> None:
    result = compare(fingerprint(reseller_copy(catalogue_photo(copied))), catalogue_fp(other))
    assert not result.same_photo
    assert result.visual_score < 0.9
    assert result.verdict != "same_photo"


def test_no_two_catalogue_photos_are_the_same_photo() -> None:
    numbers = range(1, 29)
    for a in numbers:
        for b in numbers:
            if a < b:
                assert not compare(catalogue_fp(a), catalogue_fp(b)).same_photo, (a, b)


def test_a_blank_image_is_never_the_same_photo() -> None:
    """Two plain white images agree everywhere but show nothing: no evidence of a photo."""
    white = fingerprint(encode(Image.new("RGB", (300, 300), "white"), "PNG"))
    assert not compare(white, white).same_photo


# --- products and verdicts ----------------------------------------------------------------------


def buyer_photo(name: str) -> tuple[Fingerprint, int]:
    """A sample-set buyer photo and its product's catalogue number."""
    truth = json.loads((SAMPLES / "truth.json").read_text(encoding="utf-8"))
    entries = json.loads((DEFAULT_CATALOGUE / "catalogue.json").read_text(encoding="utf-8"))
    number = next(i + 1 for i, e in enumerate(entries) if e["offer_id"] == truth[name])
    return fingerprint((SAMPLES / name).read_bytes()), number


@pytest.mark.parametrize("name", ["queries/q002.jpg", "queries/q009.jpg", "queries/q021.jpg"])
def test_a_buyer_photo_is_the_same_product_but_not_the_same_photo(name: str) -> None:
    photo, number = buyer_photo(name)
    result = compare(photo, catalogue_fp(number))
    assert result.verdict == "same_product"
    assert not result.same_photo
    assert SAME_PRODUCT_THRESHOLD <= result.visual_score < 0.9
    others = [compare(photo, catalogue_fp(n)).visual_score for n in range(1, 29) if n != number]
    assert max(others) < result.visual_score  # its own product ranks first


def test_verdicts_follow_the_score() -> None:
    assert verdict_for(1.0) == verdict_for(0.9) == "same_photo"
    assert verdict_for(0.8999) == verdict_for(SAME_PRODUCT_THRESHOLD) == "same_product"
    assert (
        verdict_for(SAME_PRODUCT_THRESHOLD - 0.0001) == verdict_for(SIMILAR_THRESHOLD) == "similar"
    )
    assert verdict_for(SIMILAR_THRESHOLD - 0.0001) == verdict_for(0.0) == "different"
    rank = {"different": 0, "similar": 1, "same_product": 2, "same_photo": 3}
    photo, _ = buyer_photo("queries/q003.jpg")
    queries = [photo, fingerprint(reseller_copy(catalogue_photo(KETTLE)))]
    results = [compare(q, catalogue_fp(n)) for q in queries for n in range(1, 29)]
    assert {r.verdict for r in results} >= {"same_photo", "same_product", "different"}
    for result in results:
        assert result.verdict == verdict_for(result.visual_score)
        assert result.same_photo == (result.verdict == "same_photo")
        assert 0.0 <= result.visual_score <= 1.0
        assert result.visual_score == round(result.visual_score, 4)
    ordered = sorted(results, key=lambda r: r.visual_score)
    assert [rank[r.verdict] for r in ordered] == sorted(rank[r.verdict] for r in ordered)


# --- fingerprints -------------------------------------------------------------------------------


def test_fingerprint_is_small_deterministic_and_thread_safe() -> None:
    data = [catalogue_photo(n) for n in (HANDBAG, TSHIRT, KETTLE, MUG)] * 3
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(fingerprint, data))
    assert parallel == [fingerprint(d) for d in data]
    assert all(len(fp.to_bytes()) <= 6500 for fp in parallel)


def test_exif_orientation_and_transparency_are_applied() -> None:
    upright = Image.open(io.BytesIO(catalogue_photo(HANDBAG))).convert("RGB").crop((0, 0, 480, 360))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    turned = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(turned, "JPEG", quality=90, exif=exif)
    fp = fingerprint(turned.getvalue())
    assert (fp.width, fp.height) == (480, 360)
    assert compare(fp, fingerprint(encode(upright, quality=90))).same_photo

    # A product on transparency is seen as on white, not on black.
    cut_out = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(cut_out).ellipse((40, 40, 160, 160), fill=(30, 90, 200, 255))
    on_white = Image.new("RGB", (200, 200), "white")
    on_white.paste(cut_out, (0, 0), cut_out)
    assert fingerprint(encode(cut_out, "PNG")) == fingerprint(encode(on_white, "PNG"))


def test_a_real_fingerprint_round_trips() -> None:
    fp = catalogue_fp(HANDBAG)
    data = fp.to_bytes()
    assert data[:3] == b"IFP" and data[3] == FINGERPRINT_VERSION
    again = Fingerprint.from_bytes(data)
    assert again == fp
    assert again.to_bytes() == data
    assert compare(again, catalogue_fp(TSHIRT)) == compare(fp, catalogue_fp(TSHIRT))


@st.composite
def fingerprints(draw: st.DrawFn) -> Fingerprint:
    gw, gh = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    cw, ch = draw(st.integers(1, gw)), draw(st.integers(1, gh))
    return Fingerprint(
        width=draw(st.integers(1, 2**32 - 1)),
        height=draw(st.integers(1, 2**32 - 1)),
        grid=(gw, gh),
        luma=draw(st.binary(min_size=gw * gh, max_size=gw * gh)),
        chroma_grid=(cw, ch),
        chroma=draw(st.binary(min_size=2 * cw * ch, max_size=2 * cw * ch)),
        hashes=(draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**64 - 1))),
        colour=draw(st.binary(min_size=52, max_size=52)),
        scene=draw(st.binary(min_size=52, max_size=52)),
        orient=draw(st.binary(min_size=12, max_size=12)),
        shape=draw(st.binary(min_size=17, max_size=17)),
    )


@given(fingerprints())
@settings(max_examples=200, deadline=None)
def test_fingerprints_round_trip_exactly(fp: Fingerprint) -> None:
    data = fp.to_bytes()
    assert Fingerprint.from_bytes(data) == fp
    assert Fingerprint.from_bytes(data).to_bytes() == data


@given(fingerprints(), st.data())
@settings(max_examples=200, deadline=None)
def test_from_bytes_rejects_every_damaged_fingerprint(fp: Fingerprint, data: st.DataObject) -> None:
    good = fp.to_bytes()
    cut = data.draw(st.integers(0, len(good) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=8))
    for bad in (good[:cut], good + extra):
        with pytest.raises(ValueError):
            Fingerprint.from_bytes(bad)


@given(st.binary(max_size=300))
def test_from_bytes_rejects_junk_with_value_error_only(junk: bytes) -> None:
    with pytest.raises(ValueError):
        Fingerprint.from_bytes(junk)


def test_from_bytes_rejects_another_version_and_magic() -> None:
    data = bytearray(catalogue_fp(HANDBAG).to_bytes())
    data[3] = FINGERPRINT_VERSION + 1
    with pytest.raises(ValueError, match="version"):
        Fingerprint.from_bytes(bytes(data))
    with pytest.raises(ValueError, match="magic"):
        Fingerprint.from_bytes(b"PNG" + bytes(data[3:]))


def test_fields_are_checked_on_construction() -> None:
    fp = catalogue_fp(HANDBAG)
    with pytest.raises(ValueError, match="luma"):
        Fingerprint(**{**fp.__dict__, "luma": fp.luma[:-1]})
    with pytest.raises(ValueError, match="hashes"):
        Fingerprint(**{**fp.__dict__, "hashes": (2**64, 0)})


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixels behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not_an_image"),
        (b"<html><body>Not found</body></html>", "not_an_image"),
        (catalogue_photo(HANDBAG)[:2000], "not_an_image"),  # truncated JPEG
        (huge_png_header(8200, 8200), "too_many_pixels"),
    ],
    ids=["empty", "html", "truncated", "too-many-pixels"],
)
def test_undecodable_bytes_raise_evidence_image_error(data: bytes, reason: str) -> None:
    settings_before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    with pytest.raises(EvidenceImageError) as caught:
        fingerprint(data)
    assert caught.value.reason == reason
    assert str(caught.value)
    assert isinstance(caught.value, ValueError)
    # Pure: Pillow's process-wide switches are left alone, even to read a hostile file.
    assert settings_before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


# --- clusters -----------------------------------------------------------------------------------


def offers(*items: bytes) -> list[tuple[str, Fingerprint]]:
    return [(sha(item), fingerprint(item)) for item in items]


@pytest.fixture(scope="module")
def resellers() -> dict[str, bytes]:
    """Copies of three catalogue photos, as three shops would list them, and two originals."""
    handbag, kettle, tshirt = (catalogue_photo(n) for n in (HANDBAG, KETTLE, TSHIRT))
    return {
        "handbag-1": reseller_copy(handbag, (0.0, 0.1, 0.9, 1.0), 0.8, "top-left"),
        "handbag-2": reseller_copy(handbag, (0.1, 0.0, 1.0, 0.8), 1.3, "bottom-right", "WEBP"),
        "handbag-3": handbag,
        "kettle-1": reseller_copy(kettle, (0.05, 0.05, 0.95, 0.95), 0.5, None, "PNG"),
        "kettle-2": kettle,
        "tshirt-1": reseller_copy(tshirt, (0.1, 0.1, 0.9, 0.9), 0.9, "top-right"),
        "backpack": catalogue_photo(BACKPACK),
        "hiking-backpack": catalogue_photo(HIKING_BACKPACK),
    }


def test_clusters_group_copies_of_one_photo_across_answers(resellers: dict[str, bytes]) -> None:
    clusters = PhotoClusters()
    first = clusters.add(
        offers(*(resellers[k] for k in ("handbag-1", "kettle-1", "backpack", "handbag-2")))
    )
    second = clusters.add(
        offers(*(resellers[k] for k in ("tshirt-1", "handbag-3", "kettle-2", "hiking-backpack")))
    )
    ids = {**first, **second}
    by_name = {name: ids[sha(data)] for name, data in resellers.items()}
    assert by_name["handbag-1"] == by_name["handbag-2"] == by_name["handbag-3"]
    assert by_name["kettle-1"] == by_name["kettle-2"]
    distinct = {by_name[k] for k in ("handbag-1", "kettle-1", "tshirt-1", "backpack")}
    assert len(distinct | {by_name["hiking-backpack"]}) == 5
    assert len(clusters) == 5
    # Each id comes from its cluster's first image, in the order images arrived.
    assert by_name["handbag-1"] == "c" + sha(resellers["handbag-1"])[:12]
    assert by_name["kettle-1"] == "c" + sha(resellers["kettle-1"])[:12]
    # The same image in a later answer keeps its cluster.
    assert clusters.add(offers(resellers["kettle-1"])) == {
        sha(resellers["kettle-1"]): by_name["kettle-1"]
    }


def test_cluster_ids_are_derived_from_content(resellers: dict[str, bytes]) -> None:
    answers = [
        offers(resellers["handbag-2"], resellers["tshirt-1"]),
        offers(resellers["handbag-1"], resellers["backpack"]),
    ]
    runs = []
    for _ in range(2):
        clusters = PhotoClusters()
        runs.append([clusters.add(answer) for answer in answers])
    assert runs[0] == runs[1]
    assert runs[0][1][sha(resellers["handbag-1"])] == "c" + sha(resellers["handbag-2"])[:12]


def test_restore_keeps_ids_stable_across_a_resume(resellers: dict[str, bytes]) -> None:
    before = PhotoClusters()
    assigned = before.add(offers(resellers["handbag-1"], resellers["kettle-1"]))
    assigned |= before.add(offers(resellers["handbag-2"], resellers["backpack"]))
    fps = {sha(data): fingerprint(data) for data in resellers.values()}

    resumed = PhotoClusters()
    for image_sha, cluster_id in reversed(list(assigned.items())):  # any order
        resumed.restore(image_sha, cluster_id, fps[image_sha])
    after = resumed.add(
        offers(resellers["handbag-3"], resellers["kettle-2"], resellers["handbag-1"])
    )
    handbag_id = assigned[sha(resellers["handbag-1"])]
    assert after[sha(resellers["handbag-3"])] == handbag_id
    assert after[sha(resellers["handbag-1"])] == handbag_id
    assert after[sha(resellers["kettle-2"])] == assigned[sha(resellers["kettle-1"])]
    assert len(resumed) == 3  # handbag, kettle, backpack: nothing new


def test_clusters_refuse_malformed_input(resellers: dict[str, bytes]) -> None:
    clusters = PhotoClusters()
    fp = fingerprint(resellers["backpack"])
    with pytest.raises(ValueError, match="distinct"):
        clusters.add([(sha(b"x"), fp), (sha(b"x"), fp)])
    with pytest.raises(ValueError, match="SHA-256"):
        clusters.add([("not-a-sha", fp)])
    with pytest.raises(ValueError, match="cluster id"):
        clusters.restore(sha(b"x"), "cluster-7", fp)
    assert clusters.add([]) == {}
    assert len(clusters) == 0
