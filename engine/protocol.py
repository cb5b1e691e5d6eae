"""The facts of the two gateway protocols that the client and the sandbox must agree on.

``ocean`` is the official 1688 gateway: an upload (``product.image.upload``) then a query
(``product.search.imageQuery``) in the ``com.alibaba.fenxiao.crossborder`` namespace, and an
unsigned token exchange (``system.oauth2.getToken``). ``seed`` is the TOP-style protocol of the
seed document: one call to ``alibaba.image.search.item``. See ``docs/protocols.md``.

Every API name, namespace, version and url path lives here once; :mod:`engine.client` builds
its requests from them and :mod:`engine.sandbox` routes by them. Signature parameters belong to
:mod:`engine.signing`.
"""

from __future__ import annotations

from typing import Literal, get_args

ProtocolName = Literal["ocean", "seed"]
PROTOCOLS: tuple[ProtocolName, ...] = get_args(ProtocolName)
"""Every protocol name, in a stable order."""

OPENAPI_PREFIX = "/openapi/"
"""What every gateway url path follows, after the base URL."""

OCEAN_VERSION = "1"
OCEAN_NAMESPACE = "com.alibaba.fenxiao.crossborder"
OCEAN_UPLOAD = "product.image.upload"
OCEAN_QUERY = "product.search.imageQuery"

SEED_API = "alibaba.image.search.item"
SEED_VERSION = "2.0"
SEED_PATH = f"param2/1/{SEED_API}/{SEED_VERSION}"

TOKEN_API = "system.oauth2.getToken"
TOKEN_PATH = "http/1/system.oauth2/getToken"
"""Followed by ``/{appKey}``."""


def ocean_path(api: str, app_key: str) -> str:
    """The signed url path of an ``ocean`` API of the image-search namespace."""
    return f"param2/{OCEAN_VERSION}/{OCEAN_NAMESPACE}/{api}/{app_key}"
