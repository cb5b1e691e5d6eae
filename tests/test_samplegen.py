"""The sample generator: the committed set is what it claims, and the commands write images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from engine.sandbox.catalogue import DEFAULT_CATALOGUE, Catalogue
from tests.paths import SAMPLES
from tools import samplegen


def open_image(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    return img


def test_catalogue_json_is_what_the_generator_builds() -> None:
    committed = json.loads((DEFAULT_CATALOGUE / "catalogue.json").read_text(encoding="utf-8"))
    assert committed == [p.to_json() for p in samplegen.build_products()]
    assert len(committed) >= 24


def test_catalogue_images_are_light_studio_shots() -> None:
    for product in Catalogue.load(DEFAULT_CATALOGUE).products:
        img = open_image(DEFAULT_CATALOGUE / product.image)
        assert img.format == "JPEG" and 400 <= max(img.size) <= 512
        corners = np.asarray(img.convert("L"))[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.min() > 220


def test_committed_studio_shot_matches_a_fresh_render() -> None:
    """Same content on rerun (bytes may differ only with another libjpeg)."""
    committed = np.asarray(open_image(DEFAULT_CATALOGUE / "p001.jpg"), dtype=np.float64)
    fresh = open_image(io.BytesIO(samplegen._jpeg(samplegen._studio_shot(0), 88)))
    assert np.abs(committed - np.asarray(fresh, dtype=np.float64)).mean() < 1.0


def test_buyer_photos_are_deterministic() -> None:
    first = samplegen._jpeg(samplegen.buyer_photo(3, seed=5, long_side=400), 70)
    again = samplegen._jpeg(samplegen.buyer_photo(3, seed=5, long_side=400), 70)
    other = samplegen._jpeg(samplegen.buyer_photo(3, seed=6, long_side=400), 70)
    assert first == again != other


def test_queries_are_large_varied_and_some_carry_exif_orientation() -> None:
    truth = json.loads((SAMPLES / "truth.json").read_text(encoding="utf-8"))
    queries = sorted((SAMPLES / "queries").glob("q*.jpg"))
    assert len(queries) >= 30
    offers = {p.offer_id for p in Catalogue.load(DEFAULT_CATALOGUE).products}
    assert {truth[f"queries/{q.name}"] for q in queries} == offers  # every product is asked
    orientations = set()
    for path in queries:
        img = open_image(path)
        orientations.add(img.getexif().get(0x0112, 1))
        assert 800 <= max(ImageOps.exif_transpose(img).size) <= 1400
    assert {3, 6, 8} <= orientations
    duplicate = SAMPLES / "queries" / "dup" / "q005-copy.jpg"
    assert duplicate.read_bytes() == (SAMPLES / "queries" / "q005.jpg").read_bytes()


def test_exif_tagged_query_turns_upright() -> None:
    """Pixels stored turned plus the tag equal the upright photo after exif_transpose."""
    photo = samplegen.buyer_photo(0, seed=1, long_side=300)
    for orientation in (3, 6, 8):
        stored = open_image(io.BytesIO(samplegen._jpeg(photo, 95, orientation)))
        upright = ImageOps.exif_transpose(stored)
        assert upright.size == photo.size
        expected = np.asarray(photo, np.float64)
        diff = np.abs(np.asarray(upright, np.float64) - expected).mean()
        upside_down = np.asarray(upright.transpose(Image.Transpose.ROTATE_180), np.float64)
        assert diff < 6.0 and np.abs(upside_down - expected).mean() > 3 * diff


@pytest.mark.parametrize(
    ("name", "fmt", "mode"),
    [
        ("alpha.png", "PNG", "RGBA"),
        ("transparent.gif", "GIF", "P"),
        ("cmyk-icc.jpg", "JPEG", "CMYK"),
        ("cmyk-plain.jpg", "JPEG", "CMYK"),
        ("gray16.png", "PNG", "I;16"),
    ],
)
def test_awkward_images_have_their_awkward_modes(name: str, fmt: str, mode: str) -> None:
    img = open_image(SAMPLES / "awkward" / name)
    assert (img.format, img.mode) == (fmt, mode)
    if mode == "RGBA":
        assert np.asarray(img)[:, :, 3].min() == 0
    if mode == "P":
        assert "transparency" in img.info
    if mode == "I;16":
        assert np.asarray(img).max() > 255  # real 16-bit data, not 8-bit in disguise
    assert ("icc_profile" in img.info) == (name == "cmyk-icc.jpg")


def test_cmyk_profile_is_needed_for_the_right_colours() -> None:
    photo = samplegen.buyer_photo(13, seed=901, long_side=300)
    img = open_image(io.BytesIO(samplegen._cmyk_jpeg(photo, with_profile=True)))
    source = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
    managed = ImageCms.profileToProfile(
        img, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
    )
    expected = np.asarray(photo, np.float64)
    assert np.abs(np.asarray(managed, np.float64) - expected).mean() < 6
    assert np.abs(np.asarray(img.convert("RGB"), np.float64) - expected).mean() > 20


@pytest.mark.parametrize("name", ["truncated.jpg", "empty.jpg", "not-an-image.jpg"])
def test_broken_awkward_files_do_not_decode(name: str) -> None:
    with pytest.raises((OSError, SyntaxError)):
        open_image(SAMPLES / "awkward" / name)


def test_truth_points_at_existing_files_and_known_offers() -> None:
    truth = json.loads((SAMPLES / "truth.json").read_text(encoding="utf-8"))
    offers = {p.offer_id for p in Catalogue.load(DEFAULT_CATALOGUE).products}
    assert all((SAMPLES / name).is_file() for name in truth)
    assert set(truth.values()) <= offers
    assert not any(n.endswith(("truncated.jpg", "empty.jpg", "not-an-image.jpg")) for n in truth)


def test_committed_set_stays_small() -> None:
    files = [*SAMPLES.rglob("*"), *DEFAULT_CATALOGUE.rglob("*")]
    total = sum(p.stat().st_size for p in files if p.is_file())
    assert total <= 5 * 1024 * 1024


def test_corpus_command_writes_labelled_photos(tmp_path: Path) -> None:
    assert samplegen.main(["corpus", str(tmp_path), "--count", "3"]) == 0
    truth = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
    assert sorted(truth) == ["img000000.jpg", "img000001.jpg", "img000002.jpg"]
    offers = {p.offer_id for p in samplegen.build_products()}
    for name, offer in truth.items():
        assert offer in offers
        img = open_image(tmp_path / name)
        assert img.format == "JPEG" and max(img.size) >= 800


def test_large_command_writes_a_very_large_photo(tmp_path: Path) -> None:
    target = tmp_path / "big.jpg"
    assert samplegen.main(["large", str(target), "--side", "6000"]) == 0
    with Image.open(target) as img:  # header only: no need to decode 24 megapixels
        assert img.format == "JPEG" and max(img.size) >= 6000
