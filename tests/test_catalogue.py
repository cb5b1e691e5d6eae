"""The sandbox catalogue: loading, and matching buyer photos to products by content."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from engine.sandbox.catalogue import DEFAULT_CATALOGUE, Catalogue, Match, Product
from tests.paths import SAMPLES

TRUTH: dict[str, int] = json.loads((SAMPLES / "truth.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.load(DEFAULT_CATALOGUE)


def gateway_jpeg(data: bytes) -> bytes:
    """The image as a client would upload it: upright, on white, RGB JPEG, long side <= 800."""
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode == "I;16":
            img = Image.fromarray((np.asarray(img) // 257).astype(np.uint8))
        if img.mode == "CMYK" and "icc_profile" in img.info:
            source = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            img = ImageCms.profileToProfile(
                img, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, "white")
        rgb.paste(rgba, (0, 0), rgba)
        rgb.thumbnail((800, 800))
        out = io.BytesIO()
        rgb.save(out, "JPEG", quality=90)
        return out.getvalue()


def rank_of_truth(matches: list[Match], offer_id: int) -> int:
    return [m.product.offer_id for m in matches].index(offer_id)


def test_catalogue_json_has_exactly_the_product_fields() -> None:
    raw = json.loads((DEFAULT_CATALOGUE / "catalogue.json").read_text(encoding="utf-8"))
    # The built-in catalogue states no optional field (supplier signals, image faults).
    names = {f.name for f in fields(Product) if f.default is MISSING}
    assert all(set(item) == names for item in raw)
    assert all(set(t) == {"min_quantity", "price"} for item in raw for t in item["price_tiers"])


def test_load_reads_every_product_with_consistent_prices(catalogue: Catalogue) -> None:
    assert len(catalogue.products) >= 24
    for product in catalogue.products:
        assert len(str(product.offer_id)) == 12
        assert product.freight in ("free", "paid")
        if product.price_tiers:
            quantities = [t.min_quantity for t in product.price_tiers]
            prices = [float(t.price) for t in product.price_tiers]
            assert quantities == sorted(quantities) and prices == sorted(prices, reverse=True)
            assert product.price == product.price_tiers[-1].price
    assert sum(1 for p in catalogue.products if p.price_tiers) >= len(catalogue.products) // 4


@pytest.mark.parametrize("name", sorted(TRUTH))
def test_labelled_image_finds_its_product_first(catalogue: Catalogue, name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    for variant in (data, gateway_jpeg(data)):
        matches = catalogue.search(variant)
        assert len(matches) == len(catalogue.products)
        assert rank_of_truth(matches, TRUTH[name]) == 0


def test_true_product_stands_clearly_above_the_runner_up(catalogue: Catalogue) -> None:
    margins = []
    for name, offer_id in TRUTH.items():
        matches = catalogue.search((SAMPLES / name).read_bytes())
        true = next(m.similarity for m in matches if m.product.offer_id == offer_id)
        other = max(m.similarity for m in matches if m.product.offer_id != offer_id)
        margins.append(true - other)
    # Measured: about 0.20 on average over the committed set.
    assert sum(margins) / len(margins) > 0.12


def test_similarities_are_ranked_and_bounded(catalogue: Catalogue) -> None:
    image = (DEFAULT_CATALOGUE / catalogue.products[0].image).read_bytes()
    matches = catalogue.search(image)
    scores = [m.similarity for m in matches]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert matches[0].product == catalogue.products[0]
    assert scores[0] > 0.99


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"plain text, not an image",
        (SAMPLES / "awkward" / "empty.jpg").read_bytes(),
        (SAMPLES / "awkward" / "not-an-image.jpg").read_bytes(),
        (SAMPLES / "awkward" / "truncated.jpg").read_bytes(),
        b"\xff\xd8\xff\xe0" + b"\0" * 64,
    ],
    ids=["empty", "text", "empty-file", "text-file", "truncated", "jpeg-header-only"],
)
def test_undecodable_bytes_raise_value_error(catalogue: Catalogue, data: bytes) -> None:
    with pytest.raises(ValueError):
        catalogue.search(data)


@pytest.mark.parametrize("size", [(1, 1), (3, 400), (400, 3)])
def test_degenerate_images_still_rank_every_product(catalogue: Catalogue, size: tuple) -> None:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "PNG")
    assert len(catalogue.search(out.getvalue())) == len(catalogue.products)


def test_matching_ignores_file_names(tmp_path: Path) -> None:
    """Swap two products' image files: each product is now found by the other's picture."""
    shutil.copytree(DEFAULT_CATALOGUE, tmp_path / "catalogue")
    folder = tmp_path / "catalogue"
    first, second = Catalogue.load(DEFAULT_CATALOGUE).products[:2]
    first_bytes = (folder / first.image).read_bytes()
    (folder / first.image).write_bytes((folder / second.image).read_bytes())
    (folder / second.image).write_bytes(first_bytes)
    swapped = Catalogue.load(folder)
    query = next(name for name, offer in TRUTH.items() if offer == first.offer_id)
    assert swapped.search((SAMPLES / query).read_bytes())[0].product.offer_id == second.offer_id


def test_load_rejects_malformed_catalogues(tmp_path: Path) -> None:
    (tmp_path / "catalogue.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"catalogue\.json"):
        Catalogue.load(tmp_path)
    raw = json.loads((DEFAULT_CATALOGUE / "catalogue.json").read_text(encoding="utf-8"))
    shutil.copy(DEFAULT_CATALOGUE / raw[0]["image"], tmp_path / raw[0]["image"])
    (tmp_path / "catalogue.json").write_text(json.dumps([raw[0], raw[0]]), encoding="utf-8")
    with pytest.raises(ValueError, match="repeats an offer_id"):
        Catalogue.load(tmp_path)
    del raw[0]["freight"]
    (tmp_path / "catalogue.json").write_text(json.dumps([raw[0]]), encoding="utf-8")
    with pytest.raises(ValueError, match="malformed"):
        Catalogue.load(tmp_path)
