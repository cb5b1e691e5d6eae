"""The protocol facts the client and the sandbox share are the ones docs/protocols.md documents.

Both sides now read :mod:`engine.protocol`, so a wrong name there would pass every loopback
test; this pins each fact to the documented text instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from engine.protocol import (
    OCEAN_QUERY,
    OCEAN_UPLOAD,
    OPENAPI_PREFIX,
    PROTOCOLS,
    SEED_API,
    SEED_PATH,
    SEED_VERSION,
    TOKEN_API,
    TOKEN_PATH,
    ProtocolName,
    ocean_path,
)

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocols.md").read_text(encoding="utf-8")


def test_every_url_path_is_the_documented_one() -> None:
    for api in (OCEAN_UPLOAD, OCEAN_QUERY):
        assert f"`{OPENAPI_PREFIX}{ocean_path(api, '{appKey}')}`" in DOC, api
    assert f"`{OPENAPI_PREFIX}{TOKEN_PATH}/{{appKey}}`" in DOC
    assert f"`POST {OPENAPI_PREFIX}{SEED_PATH}`" in DOC


def test_api_names_and_seed_system_parameters_are_the_documented_ones() -> None:
    assert f"`{TOKEN_API}`" in DOC
    assert f"`method={SEED_API}`" in DOC and f"`v={SEED_VERSION}`" in DOC


def test_protocols_lists_every_protocol_name() -> None:
    assert PROTOCOLS == get_args(ProtocolName) == ("ocean", "seed")
