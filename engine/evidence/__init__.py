"""Offer evidence: whether an offer's main image shows the query's product, computed locally.

- :mod:`engine.evidence.visual`: the pure image comparison: a small cacheable
  :class:`~engine.evidence.visual.Fingerprint` per image, :func:`~engine.evidence.visual.compare`
  (``visual_score``, ``same_photo``, ``verdict``) and
  :class:`~engine.evidence.visual.PhotoClusters` (``cluster_id`` over a run);
- :mod:`engine.evidence.fetch`: the offer images an answer's evidence needs, downloaded into
  the image cache through their own limiter;
- :mod:`engine.evidence.judge`: the evidence of one photo's offers, from the cache alone;
- :mod:`engine.evidence.stage`: what the runner holds to fetch and judge offer images.
"""
