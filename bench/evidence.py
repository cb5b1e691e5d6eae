"""Offer evidence (:mod:`engine.evidence.visual`): how right it is on a labelled set, and its cost.

The labelled set is built from the project's own files, deterministically (fixed seeds):

- **catalogue photos**: the sandbox's built-in catalogue (``engine/sandbox/data/catalogue``,
  28 studio shots of 28 products; products of one kind, two bottles say, share a silhouette);
- **derived copies** of each catalogue photo, what resellers do to a factory photo: crops
  keeping 60-95% of the width and of the height off-centre, resizes (0.3x-2x), re-encodes
  (JPEG quality 35-90, WEBP 50-90, PNG), watermarks (shop name, "SALE" text or a logo in a
  corner, 5-10% of the area), each applied with probability 0.6 (a copy is at least
  re-encoded). Positives: (copy, its source); negatives: (copy, every other catalogue photo);
- **buyer photos**: ``sample_images/`` (the sample set, with ``truth.json``) and more from
  :func:`tools.samplegen.buyer_photo`: another angle and surface, lighting, noise, blur.
  (buyer photo, its product's photo) pairs are ``same_product``; (buyer photo, another
  product of the same kind) ``similar``; other pairs ``different``; none is ``same_photo``.

Two disjoint splits: **calibration** (copies from seed 1, :data:`CALIBRATION_BUYERS` generated
buyer photos per product) chose the numbers in :mod:`engine.evidence.visual` (its docstring
says which): the same-photo threshold from the mismatch margin printed here, the product
likeness weights and cuts from a refit printed here too (logistic regression of "same product"
over the buyer photos' pairs and the copies' pairs with other catalogue photos; the cut with
the best F1; the "similar" cut keeping :data:`SIMILAR_RECALL` of the same-product pairs).
**Evaluation** (copies from seed 2, the sample set's buyer photos) is what the figures report.
The sample set's files drawn from the catalogue's own artwork (:data:`RENDERINGS`) are shown
apart: they are not buyer photos.

Figures printed: precision and recall of ``same_photo`` on derived copies (target >= 0.97
each) and by transformation; precision and recall of "same_product or same_photo" on buyer
photos, how often the true product ranks first, and the score distributions; the confusion of
verdicts against the truth; how :class:`PhotoClusters` groups resellers' copies (adjusted
Rand index, purity, completeness) over answers of :data:`ANSWER_SIZE` offers; cost: fingerprint
time per image and size, compare time per pair, cluster time per image as the run's clusters
grow. Generated images are cached in ``build/bench/evidence/``. Benchmarks print figures, they
assert nothing. Run: ``python -m bench evidence`` (a minute or two; the first run also draws
the 512 generated photos, another minute).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.evidence.visual import (
    _LIKENESS_CUTS,
    _LIKENESS_WEIGHTS,
    _MAX_MISMATCH,
    Fingerprint,
    PhotoClusters,
    _photo_mismatch,
    compare,
    fingerprint,
    product_features,
)
from engine.sandbox.catalogue import DEFAULT_CATALOGUE
from tools.samplegen import PRODUCT_SPECS, buyer_photo, write_corpus

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "bench" / "evidence"
SAMPLES = ROOT / "sample_images"
COPIES = 8  # derived copies per catalogue photo and split
CALIBRATION_BUYERS = 4  # generated buyer photos per product for the calibration split
CATALOGUE_SIZE = 28
ANSWER_SIZE = 20  # offers per answer in the cluster experiment
CLUSTERED_PHOTOS = 20  # the catalogue photos whose copies make the cluster experiment's offers
CLUSTER_SCALE = (100, 400)  # clusters already in the run when timing PhotoClusters.add
LABELS = ("same_photo", "same_product", "similar", "different")
SIMILAR_RECALL = 0.98  # share of same-product pairs the "similar" cut keeps similar or better


def _note(text: str) -> None:
    print(f"[bench.evidence] {text}", file=sys.stderr, flush=True)


# --- the labelled set ---------------------------------------------------------------------------


def catalogue_photos() -> list[bytes]:
    """The catalogue's photos in ``catalogue.json`` order (which is PRODUCT_SPECS order)."""
    entries = json.loads((DEFAULT_CATALOGUE / "catalogue.json").read_text(encoding="utf-8"))
    return [(DEFAULT_CATALOGUE / entry["image"]).read_bytes() for entry in entries]


def _watermark(img: Image.Image, rng: random.Random) -> Image.Image:
    """A shop's mark in a random corner: a banner with its name, sale text, or a logo."""
    w, h = img.size
    area = rng.uniform(0.05, 0.10) * w * h
    aspect = rng.uniform(1.5, 3.5)
    mark_w = max(4, round((area * aspect) ** 0.5))
    mark_h = max(4, round(area / mark_w))
    margin = max(1, min(w, h) // 60)
    x = margin if rng.random() < 0.5 else w - mark_w - margin
    y = margin if rng.random() < 0.5 else h - mark_h - margin
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    style = rng.randrange(3)
    if style == 0:
        draw.rectangle((x, y, x + mark_w, y + mark_h), fill=(*colour, rng.randrange(140, 230)))
        font = ImageFont.load_default(size=max(6, mark_h // 2))
        draw.text((x + mark_h // 4, y + mark_h // 4), "1688 SHOP", fill="white", font=font)
    elif style == 1:
        font = ImageFont.load_default(size=max(6, mark_h * 2 // 3))
        draw.text((x, y), "SALE 8888", fill=(*colour, 255), font=font)
    else:
        draw.ellipse((x, y, x + mark_h, y + mark_h), fill=(*colour, 210))
        font = ImageFont.load_default(size=max(6, mark_h // 2))
        draw.text((x + mark_h + 2, y + mark_h // 4), "LOGO", fill=(*colour, 255), font=font)
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def derive_copy(source: bytes, rng: random.Random) -> tuple[bytes, tuple[str, ...]]:
    """A reseller's copy of ``source`` and the transformations applied, in order."""
    img = Image.open(io.BytesIO(source)).convert("RGB")
    ops: list[str] = []
    if rng.random() < 0.6:
        w, h = img.size
        keep_w, keep_h = round(w * rng.uniform(0.6, 0.95)), round(h * rng.uniform(0.6, 0.95))
        x, y = rng.randint(0, w - keep_w), rng.randint(0, h - keep_h)
        img = img.crop((x, y, x + keep_w, y + keep_h))
        ops.append("crop")
    if rng.random() < 0.6:
        factor = rng.uniform(0.3, 2.0)
        size = (max(8, round(img.width * factor)), max(8, round(img.height * factor)))
        img = img.resize(size, Image.Resampling.LANCZOS)
        ops.append("resize")
    if rng.random() < 0.6:
        img = _watermark(img, rng)
        ops.append("watermark")
    out = io.BytesIO()
    kind = rng.choice(("jpeg", "jpeg", "webp", "png"))
    if kind == "jpeg":
        img.save(out, "JPEG", quality=rng.randint(35, 90))
    elif kind == "webp":
        img.save(out, "WEBP", quality=rng.randint(50, 90))
    else:
        img.save(out, "PNG")
    ops.append(kind)
    return out.getvalue(), tuple(ops)


@dataclass(frozen=True)
class Copy:
    """A derived copy: its fingerprint, bytes' SHA-256, source photo and transformations."""

    fp: Fingerprint
    sha256: str
    source: int
    ops: tuple[str, ...]


def derived_copies(photos: Sequence[bytes], seed: int, per_photo: int = COPIES) -> list[Copy]:
    rng = random.Random(seed)
    copies = []
    for index, photo in enumerate(photos):
        for _ in range(per_photo):
            data, ops = derive_copy(photo, rng)
            copies.append(Copy(fingerprint(data), hashlib.sha256(data).hexdigest(), index, ops))
    return copies


def generated_buyers() -> list[tuple[bytes, int]]:
    """Generated buyer photos (JPEG), ``CALIBRATION_BUYERS`` per product, cached on disk."""
    folder = CACHE / "buyers"
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for index in range(len(PRODUCT_SPECS)):
        for k in range(CALIBRATION_BUYERS):
            path = folder / f"b{index:02d}-{k}.jpg"
            if not path.exists():
                seed = 60_000 + index * 10 + k
                photo = buyer_photo(index, seed, 800 + 100 * (k % 4))
                out = io.BytesIO()
                photo.save(out, "JPEG", quality=70 + 5 * k)
                path.write_bytes(out.getvalue())
            photos.append((path.read_bytes(), index))
    return photos


# Sample-set files drawn from the catalogue's own artwork rather than photographed by a buyer:
# the product cut out (alpha.png, transparent.gif) or the studio shot in 16-bit grey.
RENDERINGS = frozenset({"awkward/alpha.png", "awkward/transparent.gif", "awkward/gray16.png"})


def sample_buyers(*, renderings: bool = False) -> list[tuple[str, bytes, int]]:
    """The sample set's labelled buyer photos (name, bytes, product index), or with
    ``renderings`` its files drawn from the catalogue artwork instead."""
    entries = json.loads((DEFAULT_CATALOGUE / "catalogue.json").read_text(encoding="utf-8"))
    index_of = {entry["offer_id"]: i for i, entry in enumerate(entries)}
    truth = json.loads((SAMPLES / "truth.json").read_text(encoding="utf-8"))
    return [
        (name, (SAMPLES / name).read_bytes(), index_of[offer])
        for name, offer in truth.items()
        if (name in RENDERINGS) == renderings
    ]


def pair_label(query_product: int, offer_product: int, *, copy: bool) -> str:
    """The truth for a (query, catalogue photo) pair."""
    if query_product == offer_product:
        return "same_photo" if copy else "same_product"
    same_kind = PRODUCT_SPECS[query_product].kind == PRODUCT_SPECS[offer_product].kind
    return "similar" if same_kind else "different"


@dataclass(frozen=True)
class Scored:
    """One labelled pair and what :func:`compare` said."""

    label: str
    score: float
    same_photo: bool
    verdict: str
    ops: tuple[str, ...]


def score_pairs(
    queries: Sequence[tuple[Fingerprint, int, tuple[str, ...]]],
    catalogue: Sequence[Fingerprint],
    *,
    copies: bool,
) -> list[Scored]:
    scored = []
    for fp, product, ops in queries:
        for index, offer in enumerate(catalogue):
            result = compare(fp, offer)
            label = pair_label(product, index, copy=copies)
            scored.append(
                Scored(label, result.visual_score, result.same_photo, result.verdict, ops)
            )
    return scored


# --- figures -----------------------------------------------------------------------------------


def precision_recall(
    predicted: Sequence[bool], actual: Sequence[bool]
) -> tuple[float, float, int, int, int]:
    """Precision, recall, true positives, false positives, false negatives."""
    tp = sum(p and a for p, a in zip(predicted, actual, strict=True))
    fp = sum(p and not a for p, a in zip(predicted, actual, strict=True))
    fn = sum(a and not p for p, a in zip(predicted, actual, strict=True))
    return (tp / (tp + fp) if tp + fp else 1.0), (tp / (tp + fn) if tp + fn else 1.0), tp, fp, fn


def report_same_photo(scored: Sequence[Scored]) -> None:
    p, r, tp, fp, fn = precision_recall(
        [s.same_photo for s in scored], [s.label == "same_photo" for s in scored]
    )
    print(
        f"same_photo on derived copies: precision {p:.4f}  recall {r:.4f}"
        f"  (tp {tp}, fp {fp}, fn {fn}; {len(scored)} pairs)"
    )
    for op in ("crop", "resize", "watermark", "jpeg", "webp", "png"):
        with_op = [s for s in scored if op in s.ops and s.label == "same_photo"]
        print(f"  recall with {op:<9}: {sum(s.same_photo for s in with_op)}/{len(with_op)}")
    positives = [s.score for s in scored if s.label == "same_photo"]
    negatives = [s.score for s in scored if s.label != "same_photo"]
    print(
        f"  visual_score: same photo min {min(positives):.3f} median {np.median(positives):.3f};"
        f" other pairs max {max(negatives):.3f} median {np.median(negatives):.3f}"
    )


def report_mismatch_margin(copies: Sequence[Copy], catalogue: Sequence[Fingerprint]) -> None:
    """The share of disagreeing content the same-photo check measures (its internal figure):
    how far the same-photo pairs and the others lie from the threshold in use."""
    same: list[float] = []
    other: list[float] = []
    for copy in copies:
        for index, offer in enumerate(catalogue):
            mismatch = _photo_mismatch(copy.fp, offer)
            value = 1.0 if mismatch is None else mismatch
            (same if index == copy.source else other).append(value)
    print(
        f"  mismatch: same photo max {max(same):.3f} (p99 {np.percentile(same, 99):.3f});"
        f" other pairs min {min(other):.3f} (p1 {np.percentile(other, 1):.3f});"
        f" threshold in use {_MAX_MISMATCH}"
    )


def report_confusion(scored: Sequence[Scored], title: str) -> None:
    counts = Counter((s.label, s.verdict) for s in scored)
    print(f"verdicts, {title} (rows: truth, columns: verdict):")
    print(" " * 15 + "".join(f"{v:>13}" for v in LABELS))
    for label in LABELS:
        row = [counts[(label, v)] for v in LABELS]
        if sum(row):
            print(f"  {label:<13}" + "".join(f"{n:>13}" for n in row))


def report_same_product(scored: Sequence[Scored], title: str) -> None:
    p, r, tp, fp, fn = precision_recall(
        [s.verdict in ("same_photo", "same_product") for s in scored],
        [s.label == "same_product" for s in scored],
    )
    print(
        f"same_product or same_photo, {title}: precision {p:.3f}  recall {r:.3f}"
        f"  (tp {tp}, fp {fp}, fn {fn})"
    )
    queries = len(scored) // CATALOGUE_SIZE
    top = 0
    for q in range(queries):
        block = scored[q * CATALOGUE_SIZE : (q + 1) * CATALOGUE_SIZE]
        top += max(block, key=lambda s: s.score).label == "same_product"
    near = [s.verdict != "different" for s in scored]
    p, r, *_ = precision_recall(near, [s.label == "same_product" for s in scored])
    print(
        f"  its product ranked first: {top}/{queries}; 'similar' or better:"
        f" precision {p:.3f}  recall {r:.3f} for the same product"
    )
    for label in ("same_product", "similar", "different"):
        values = [s.score for s in scored if s.label == label]
        q10, q50, q90 = np.percentile(values, [10, 50, 90])
        print(f"  visual_score of {label:<12}: p10 {q10:.3f}  median {q50:.3f}  p90 {q90:.3f}")


def best_threshold(scores: Sequence[float], positive: Sequence[bool]) -> tuple[float, float]:
    """The score threshold with the best F1 for ``positive``, and that F1."""
    best = (0.0, -1.0)
    for t in sorted(set(scores)):
        p, r, *_ = precision_recall([s >= t for s in scores], positive)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > best[1]:
            best = (t, f1)
    return best


def fit_likeness(features: np.ndarray, same_product: np.ndarray) -> np.ndarray:
    """Weights of a logistic model of "same product" over the features (gradient descent on
    standardised features, a little L2 to keep it tame); the bias is left out, the cuts take
    its place."""
    mean, spread = features.mean(axis=0), features.std(axis=0) + 1e-9
    z = (features - mean) / spread
    target = same_product.astype(float)
    weights, bias = np.zeros(z.shape[1]), 0.0
    for _ in range(4_000):
        p = 1 / (1 + np.exp(-(z @ weights + bias)))
        weights -= 0.5 * (z.T @ (p - target) / len(target) + 1e-3 * weights)
        bias -= 0.5 * float((p - target).mean())
    return np.asarray(weights / spread)


def report_calibration(pairs: Sequence[tuple[Fingerprint, Fingerprint, str]]) -> None:
    """Refit the product likeness on the calibration split and say what it would choose: the
    weights, the same-product cut with the best F1, and the similar cut: the highest that
    keeps :data:`SIMILAR_RECALL` of the same-product pairs "similar" or better."""
    features = np.array([product_features(a, b) for a, b, _ in pairs])
    same_product = np.array([label == "same_product" for _, _, label in pairs])
    weights = fit_likeness(features, same_product)
    evidence = features @ weights
    same, f1 = best_threshold(evidence.tolist(), same_product.tolist())
    similar = float(np.quantile(evidence[same_product], 1 - SIMILAR_RECALL))
    shown = ", ".join(f"{w:.2f}" for w in weights)
    print(
        f"  calibration refit: weights ({shown}), cuts ({similar:.2f}, {same:.2f}),"
        f" same-product F1 {f1:.3f}; in use: {_LIKENESS_WEIGHTS}, {_LIKENESS_CUTS}"
    )


def adjusted_rand_index(truth: Sequence[object], found: Sequence[object]) -> float:
    """Hubert and Arabie's ARI: 1 for identical partitions, about 0 for chance agreement."""

    def pairs(n: int) -> float:
        return n * (n - 1) / 2

    index = sum(pairs(n) for n in Counter(zip(truth, found, strict=True)).values())
    rows = sum(pairs(n) for n in Counter(truth).values())
    cols = sum(pairs(n) for n in Counter(found).values())
    expected = rows * cols / pairs(len(truth))
    maximum = (rows + cols) / 2
    return (index - expected) / (maximum - expected) if maximum != expected else 1.0


def report_clusters(copies: Sequence[Copy], singles: Sequence[Copy]) -> None:
    """Offers made of several copies of each of some catalogue photos (resellers, the
    original photo itself not among them) and of single photos, shuffled into answers;
    clusters against the truth (the source photo)."""
    offers = [*copies, *singles]
    random.Random(7).shuffle(offers)
    clusters = PhotoClusters()
    found: dict[str, str] = {}
    start = time.perf_counter()
    for at in range(0, len(offers), ANSWER_SIZE):
        found |= clusters.add([(o.sha256, o.fp) for o in offers[at : at + ANSWER_SIZE]])
    elapsed = time.perf_counter() - start
    truth = [o.source for o in offers]
    ids = [found[o.sha256] for o in offers]
    by_cluster: dict[str, Counter[int]] = {}
    by_source: dict[int, Counter[str]] = {}
    for t, c in zip(truth, ids, strict=True):
        by_cluster.setdefault(c, Counter())[t] += 1
        by_source.setdefault(t, Counter())[c] += 1
    purity = sum(c.most_common(1)[0][1] for c in by_cluster.values()) / len(offers)
    completeness = sum(c.most_common(1)[0][1] for c in by_source.values()) / len(offers)
    print(
        f"clusters: {len(offers)} offers showing {len(by_source)} photographs, answers of"
        f" {ANSWER_SIZE}: {len(by_cluster)} clusters; adjusted Rand index"
        f" {adjusted_rand_index(truth, ids):.3f}, purity {purity:.3f}, completeness"
        f" {completeness:.3f}; {elapsed / len(offers) * 1000:.1f} ms per offer"
    )


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def report_cost(
    catalogue: Sequence[bytes], buyers: Sequence[bytes], distinct: Sequence[Fingerprint]
) -> None:
    small = _seconds(lambda: [fingerprint(p) for p in catalogue]) / len(catalogue)
    large = _seconds(lambda: [fingerprint(p) for p in buyers]) / len(buyers)
    fps = [fingerprint(p) for p in catalogue]
    pairs = [(a, b) for a in fps[:10] for b in fps]
    per_pair = _seconds(lambda: [compare(a, b) for a, b in pairs]) / len(pairs)
    print(
        f"cost, one core: fingerprint {small * 1000:.1f} ms per 480x480 JPEG,"
        f" {large * 1000:.1f} ms per buyer photo (800-1400 px JPEG),"
        f" {max(len(fp.to_bytes()) for fp in fps)} bytes at most;"
        f" compare {per_pair * 1e6:.0f} us per pair (catalogue photos: all on white)"
    )
    for count in CLUSTER_SCALE:
        clusters = PhotoClusters()
        for k, fp in enumerate(distinct[:count]):
            image_sha = hashlib.sha256(b"distinct %d" % k).hexdigest()
            clusters.restore(image_sha, "c" + image_sha[:12], fp)
        answer = [(hashlib.sha256(b"probe %d" % k).hexdigest(), fp) for k, fp in enumerate(fps)]
        start = time.perf_counter()
        clusters.add(answer[:ANSWER_SIZE])
        per_image = (time.perf_counter() - start) / ANSWER_SIZE
        print(f"  PhotoClusters.add with {count} clusters: {per_image * 1000:.1f} ms per image")


def distinct_photos(count: int) -> list[Fingerprint]:
    """Fingerprints of ``count`` distinct buyer photos (a samplegen corpus, cached on disk)."""
    folder = CACHE / "corpus"
    if len(list(folder.glob("*.jpg"))) < count:
        _note(f"drawing {count} distinct photos into {folder} (once)")
        write_corpus(folder, count, progress=False)
    return [fingerprint(p.read_bytes()) for p in sorted(folder.glob("*.jpg"))[:count]]


def main() -> None:
    photos = catalogue_photos()
    catalogue = [fingerprint(p) for p in photos]
    _note("deriving copies and drawing buyer photos")
    calibration_copies = derived_copies(photos, seed=1)
    evaluation_copies = derived_copies(photos, seed=2)
    calibration_buyers = [(fingerprint(d), i, ()) for d, i in generated_buyers()]
    samples = sample_buyers()
    sample_fps = [(fingerprint(d), i, ()) for _, d, i in samples]
    print(
        f"labelled set: {len(photos)} catalogue photos; evaluation: {len(evaluation_copies)}"
        f" derived copies, {len(sample_fps)} sample-set buyer photos; calibration:"
        f" {len(calibration_copies)} derived copies, {len(calibration_buyers)} generated buyer"
        " photos; every photo against every catalogue photo"
    )

    print("\nevaluation split")
    copy_pairs = score_pairs(
        [(c.fp, c.source, c.ops) for c in evaluation_copies], catalogue, copies=True
    )
    buyer_pairs = score_pairs(sample_fps, catalogue, copies=False)
    report_same_photo(copy_pairs)
    report_same_product(buyer_pairs, "sample-set buyer photos")
    report_confusion(copy_pairs + buyer_pairs, "derived copies and buyer photos")
    for name, data, index in sample_buyers(renderings=True):
        result = compare(fingerprint(data), catalogue[index])
        print(f"  {name} (the catalogue's artwork): {result.verdict} {result.visual_score}")

    print("\ncalibration split")
    report_same_photo(
        score_pairs([(c.fp, c.source, c.ops) for c in calibration_copies], catalogue, copies=True)
    )
    report_mismatch_margin(calibration_copies, catalogue)
    report_same_product(
        score_pairs(calibration_buyers, catalogue, copies=False), "generated buyer photos"
    )
    # Product likeness learns from buyer photos (the positives) and from reseller copies
    # against the other catalogue photos: offers are mostly studio shots like these.
    report_calibration(
        [
            (fp, offer, pair_label(i, j, copy=False))
            for fp, i, _ in calibration_buyers
            for j, offer in enumerate(catalogue)
        ]
        + [
            (c.fp, offer, pair_label(c.source, j, copy=True))
            for c in calibration_copies
            for j, offer in enumerate(catalogue)
            if j != c.source
        ]
    )

    print()
    unique = {hashlib.sha256(d).hexdigest(): d for _, d, _ in samples}
    singles = [Copy(fingerprint(d), sha, 100 + k, ()) for k, (sha, d) in enumerate(unique.items())]
    report_clusters([c for c in evaluation_copies if c.source < CLUSTERED_PHOTOS], singles)
    report_cost(photos, [d for _, d, _ in samples[:10]], distinct_photos(max(CLUSTER_SCALE)))


if __name__ == "__main__":
    main()
