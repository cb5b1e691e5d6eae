"""Request signatures for the two gateway protocols.

Both functions sign exactly the mapping they are given, value for value, as strings: the
caller must sign the very parameters it sends (the seed's own code dropped falsy values such
as ``price_start=0`` from the signature while still sending them, which a gateway rejects).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone

OCEAN_SIGNATURE_PARAM = "_aop_signature"
SEED_SIGNATURE_PARAM = "sign"

GMT8 = timezone(timedelta(hours=8), "GMT+8")


def ocean_signature(url_path: str, params: Mapping[str, str], secret: str) -> str:
    """Return the ``_aop_signature`` of the official 1688 gateway.

    ``url_path`` is ``param2/{version}/{namespace}/{api}/{appKey}``: no leading slash and no
    ``openapi/`` prefix. Each parameter except the signature itself becomes ``key + value``;
    those strings (not the keys) are sorted and joined, prefixed with the url path, and signed
    with HMAC-SHA1 keyed by the app secret. Upper-case hex.
    """
    pieces = sorted(k + str(v) for k, v in params.items() if k != OCEAN_SIGNATURE_PARAM)
    message = url_path.lstrip("/") + "".join(pieces)
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha1).hexdigest()
    return digest.upper()


def seed_signature(params: Mapping[str, str], secret: str) -> str:
    """Return the TOP-style ``sign`` of the seed protocol.

    Upper-case hex MD5 of ``secret + k1v1 + k2v2 + ... + secret`` with the pairs sorted by key
    and ``sign`` itself excluded. Every other parameter is signed, empty or not.
    """
    body = "".join(k + str(params[k]) for k in sorted(params) if k != SEED_SIGNATURE_PARAM)
    return hashlib.md5((secret + body + secret).encode()).hexdigest().upper()


def ocean_timestamp(now: datetime | None = None) -> str:
    """``_aop_timestamp``: epoch milliseconds."""
    moment = now or datetime.now(UTC)
    return str(int(moment.timestamp() * 1000))


def seed_timestamp(now: datetime | None = None) -> str:
    """``timestamp`` of the seed protocol: ``YYYY-mm-dd HH:MM:SS`` in GMT+8, whatever the
    machine's own zone is."""
    moment = now or datetime.now(UTC)
    return moment.astimezone(GMT8).strftime("%Y-%m-%d %H:%M:%S")
