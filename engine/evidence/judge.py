"""Evidence for the offers of one photo, from the image cache alone: no call, no download.

The exporter (and ``img1688 reclean``) asks :class:`EvidenceJudge` for each finished photo:
the query photo (the JPEG sent to the gateway, cached when it was prepared) is compared with
the main image of each kept offer (fetched beforehand by :mod:`engine.evidence.fetch`) by
:func:`engine.evidence.visual.compare`; the offers' images are grouped into the run's
:class:`~engine.evidence.visual.PhotoClusters`. Fingerprints are cached beside the images,
keyed by the SHA-256 of the bytes they describe and the fingerprint version, so a rerun or a
re-clean decodes nothing it has seen.

An offer whose image is missing or does not decode gets null evidence and a note on its row;
a photo whose query image is not in the cache gets null evidence on every offer. Nothing here
fails a photo.

Runs in the exporter's worker thread: it touches the cache (its own connection per thread) and
its own objects only, never the checkpoint database; the cluster ids it assigns are handed back
(:meth:`EvidenceJudge.take_new_clusters`) for the exporter to register with the parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from engine.clean import Offer
from engine.evidence.fetch import rendition_url
from engine.evidence.visual import (
    FINGERPRINT_VERSION,
    EvidenceImageError,
    Fingerprint,
    PhotoClusters,
    compare,
    fingerprint,
)
from engine.imagecache import ImageCache
from engine.schema import NO_EVIDENCE, OfferEvidence

_FINGERPRINT = f"fingerprint-v{FINGERPRINT_VERSION}"


class EvidenceJudge:
    """Judges each kept offer of a photo against the photo, and clusters the offers' images.

    Args:
        cache: where the query JPEGs, the offer images and the fingerprints are.
        rendition: the rendition size the offer images were fetched at (their cache key).
        failures: image URL -> why its download failed in this invocation (for the notes).
    """

    def __init__(
        self, cache: ImageCache, rendition: int, failures: Mapping[str, str] | None = None
    ) -> None:
        self.cache = cache
        self.rendition = rendition
        self.failures: Mapping[str, str] = failures if failures is not None else {}
        self.clusters = PhotoClusters()
        self._assigned: dict[str, str] = {}
        self._new: dict[str, str] = {}

    def restore(self, assigned: Mapping[str, str]) -> None:
        """Seed the clusters with what earlier invocations of the run registered."""
        for sha, cluster_id in assigned.items():
            fp = self._fingerprint(sha)
            if fp is not None:
                self.clusters.restore(sha, cluster_id, fp)
                self._assigned[sha] = cluster_id

    def take_new_clusters(self) -> dict[str, str]:
        """The cluster ids assigned or changed since the last call, to register."""
        new, self._new = self._new, {}
        return new

    def judge(
        self, query_sha: str, query_file: str | None, protocol: str, offers: Sequence[Offer]
    ) -> tuple[list[Offer], list[OfferEvidence]]:
        """The offers (with evidence notes, and for ``ocean`` ``similarity`` set to our score)
        and their evidence, in the same order.

        Args:
            query_sha: SHA-256 of the photo's bytes.
            query_file: the photo's local file, read when the cache has no JPEG for it.
            protocol: ``ocean`` or ``seed``.
            offers: the photo's kept offers.
        """
        query = self._query(query_sha, query_file)
        if query is None:
            note = "evidence: the query photo is not in the evidence cache"
            return [_noted(o, note) for o in offers], [_gateway_only(o) for o in offers]
        images: dict[str, Fingerprint] = {}
        found: list[tuple[str, Fingerprint] | str] = []
        for offer in offers:
            got = self._offer_image(offer)
            found.append(got)
            if not isinstance(got, str):
                images.setdefault(*got)
        self._cluster(images)
        kept: list[Offer] = []
        evidence: list[OfferEvidence] = []
        for offer, got in zip(offers, found, strict=True):
            if isinstance(got, str):
                kept.append(_noted(offer, f"evidence: {got}"))
                evidence.append(_gateway_only(offer))
                continue
            sha, fp = got
            comparison = compare(query, fp)
            source: Literal["gateway", "visual"] | None = None
            if protocol == "ocean":  # the gateway gives no score: ours is the similarity
                offer = replace(offer, similarity=comparison.visual_score)
                source = "visual"
            elif offer.similarity is not None:
                source = "gateway"
            kept.append(offer)
            evidence.append(
                OfferEvidence(
                    offer_image_sha256=sha,
                    visual_score=comparison.visual_score,
                    same_photo=comparison.same_photo,
                    verdict=comparison.verdict,
                    cluster_id=self._assigned.get(sha),
                    similarity_source=source,
                )
            )
        return kept, evidence

    def _cluster(self, images: dict[str, Fingerprint]) -> None:
        if not images:
            return
        for sha, cluster_id in self.clusters.add(sorted(images.items())).items():
            if self._assigned.get(sha) != cluster_id:
                self._assigned[sha] = cluster_id
                self._new[sha] = cluster_id

    def _query(self, sha: str, local: str | None) -> Fingerprint | None:
        # A blob's name is its bytes' SHA-256: a photo fingerprinted before is not read again.
        blob = self.cache.photo_path(sha)
        fp = self._fingerprint(blob.name) if blob is not None else None
        if fp is None and local is not None and (data := _read_if_same(Path(local), sha)):
            fp = self._fingerprint(sha, data)
        return fp

    def _offer_image(self, offer: Offer) -> tuple[str, Fingerprint] | str:
        """The offer image's (SHA-256, fingerprint), or why there is none."""
        if offer.image_url is None:
            return "the offer has no image"
        url = rendition_url(offer.image_url, self.rendition)
        entry = self.cache.url_entry(url)
        if entry is None:
            why = self.failures.get(url)
            return f"offer image not available: {why}" if why else "offer image not in the cache"
        fp = self._fingerprint(entry.sha256)
        if fp is None:
            return "offer image does not decode as an image"
        return entry.sha256, fp

    def _fingerprint(self, sha: str, data: bytes | None = None) -> Fingerprint | None:
        """The fingerprint of the image ``sha`` (whose bytes are ``data``, else read from the
        cache), computed once and cached; ``None`` if absent or undecodable."""
        cached = self.cache.derived(_FINGERPRINT, sha)
        if cached is not None:
            return Fingerprint.from_bytes(cached)
        data = data if data is not None else self.cache.read(sha)
        if data is None:
            return None
        try:
            fp = fingerprint(data)
        except EvidenceImageError:
            return None
        self.cache.put_derived(_FINGERPRINT, sha, fp.to_bytes())
        return fp


def _read_if_same(path: Path, sha: str) -> bytes | None:
    """The file's bytes if they still are the photo that was searched."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha else None


def _noted(offer: Offer, note: str) -> Offer:
    return replace(offer, notes=(*offer.notes, note))


def _gateway_only(offer: Offer) -> OfferEvidence:
    """No evidence of ours: only say where a gateway score came from."""
    if offer.similarity is None:
        return NO_EVIDENCE
    return OfferEvidence(similarity_source="gateway")
