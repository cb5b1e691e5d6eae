"""The sandbox's own signature and timestamp checks, written from ``/work/shared/api/FACTS.md``.

This module deliberately shares no code with the engine's signing module: the sandbox is the
oracle the engine's requests are tested against, so a bug in the engine's signing must not be
copied into the check that is meant to catch it. It is also written another way on purpose (the
message is assembled as UTF-8 bytes and fed to the hash piece by piece; timestamps are parsed
by pattern, not ``strptime``), so that a shared misreading of the facts is the only way the two
can agree on a wrong answer.

Sections of FACTS.md followed: "1. ``ocean``: the official 1688 gateway" (``_aop_signature``,
``_aop_timestamp``) and "2. ``seed``: the seed document's protocol" (``sign``, ``timestamp``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

OCEAN_SIGNATURE = "_aop_signature"
"""FACTS.md, ocean: the parameter carrying the signature, itself never signed."""
SEED_SIGNATURE = "sign"
"""FACTS.md, seed: the parameter carrying the signature, itself never signed."""

GMT8 = timezone(timedelta(hours=8), "GMT+8")
"""The zone of the seed protocol's ``timestamp`` text (FACTS.md, seed)."""

_GMT8_STAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})", re.ASCII)
_MILLIS_STAMP = re.compile(r"\d{1,16}", re.ASCII)


def expected_ocean(url_path: str, params: Mapping[str, str], secret: str) -> str:
    """The ``_aop_signature`` a gateway expects for ``params`` sent to ``url_path``.

    FACTS.md, ocean: HMAC-SHA1 keyed by the app secret over ``urlPath`` followed by the
    ``key + value`` strings of every parameter but the signature, sorted as whole strings (not
    by key) and joined with nothing between; upper-case hex. ``url_path`` is taken as given
    (``param2/{version}/{namespace}/{api}/{appKey}``). Sorting the UTF-8 bytes gives the same
    order as sorting the text by code point, as the official Python SDK does.
    """
    pieces = sorted(
        name.encode("utf-8") + value.encode("utf-8")
        for name, value in params.items()
        if name != OCEAN_SIGNATURE
    )
    mac = hmac.new(secret.encode("utf-8"), url_path.encode("utf-8"), hashlib.sha1)
    for piece in pieces:
        mac.update(piece)
    return mac.hexdigest().upper()


def expected_seed(params: Mapping[str, str], secret: str) -> str:
    """The ``sign`` a TOP-style gateway expects for ``params``.

    FACTS.md, seed: MD5 over ``secret + k1 + v1 + k2 + v2 + ... + secret`` with the pairs in
    key order and ``sign`` left out, every other value (empty or ``0`` too) included;
    upper-case hex.
    """
    digest = hashlib.md5(secret.encode("utf-8"))
    for name in sorted(params, key=lambda key: key.encode("utf-8")):
        if name != SEED_SIGNATURE:
            digest.update(name.encode("utf-8"))
            digest.update(params[name].encode("utf-8"))
    digest.update(secret.encode("utf-8"))
    return digest.hexdigest().upper()


def ocean_accepts(url_path: str, params: Mapping[str, str], secret: str) -> bool:
    """Whether ``params`` carry the right ``_aop_signature`` for ``url_path`` (a missing one is
    wrong). Hex case matters: the gateway sends and expects upper case."""
    return _equal(params.get(OCEAN_SIGNATURE, ""), expected_ocean(url_path, params, secret))


def seed_accepts(params: Mapping[str, str], secret: str) -> bool:
    """Whether ``params`` carry the right ``sign`` (a missing one is wrong)."""
    return _equal(params.get(SEED_SIGNATURE, ""), expected_seed(params, secret))


def millis_fresh(stamp: str, now: float, max_skew: float) -> bool:
    """Whether ``stamp``, epoch milliseconds in ASCII digits (FACTS.md, ocean
    ``_aop_timestamp``), is within ``max_skew`` seconds of ``now`` (epoch seconds)."""
    if not _MILLIS_STAMP.fullmatch(stamp):
        return False
    return abs(now - int(stamp) / 1000) <= max_skew


def gmt8_fresh(stamp: str | None, now: float, max_skew: float) -> bool:
    """Whether ``stamp``, ``YYYY-mm-dd HH:MM:SS`` in GMT+8 with every field zero-padded
    (FACTS.md, seed ``timestamp``), is a real moment within ``max_skew`` seconds of ``now``."""
    match = _GMT8_STAMP.fullmatch(stamp or "")
    if match is None:
        return False
    try:
        year, month, day, hour, minute, second = (int(field) for field in match.groups())
        sent = datetime(year, month, day, hour, minute, second, tzinfo=GMT8)
    except ValueError:  # such as month 13 or 25 o'clock
        return False
    return abs(now - sent.timestamp()) <= max_skew


def _equal(given: str, expected: str) -> bool:
    # Constant time; on bytes because compare_digest refuses non-ASCII str.
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
