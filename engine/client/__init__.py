"""The signed gateway client: image search over the ``ocean`` and ``seed`` protocols.

``async with GatewayClient(...) as client: await client.search(jpeg, filters)`` returns the
query answer verbatim, after signing, retries, token refresh and error classification. The
public API (``__all__``) is re-exported here from the modules that define it:

- :mod:`engine.client.requests`: pure request building (:class:`SearchFilters`, the business
  parameters of each API, the signed forms, the form encoding).
- :mod:`engine.client.classify`: pure answer classification onto :mod:`engine.errors`.
- :mod:`engine.client.fixes`: the fix-it sentences that fatal errors carry.
- :mod:`engine.client.gateway`: :class:`GatewayClient`, :class:`RetryPolicy` and
  :class:`SearchResult`; the calls, their call-gate reservation, retries and token refresh;
  :func:`client_session` (sessions that tell an attempt that sent nothing) and
  :class:`Contact` (whether the gateway has answered yet, shared by a job's clients).

API names, url paths and :data:`ProtocolName` live in :mod:`engine.protocol`; the ones
re-exported here are there for the callers that imported them from the client.
"""

from engine.client.classify import classify_ocean, classify_seed, parse_retry_after
from engine.client.gateway import Contact, GatewayClient, RetryPolicy, SearchResult, client_session
from engine.client.requests import (
    SearchFilters,
    form_urlencode,
    ocean_query_params,
    ocean_upload_params,
    seed_search_params,
    sign_ocean,
    sign_seed,
)
from engine.protocol import (
    OCEAN_QUERY,
    OCEAN_UPLOAD,
    SEED_API,
    SEED_PATH,
    ProtocolName,
    ocean_path,
)

__all__ = [
    "OCEAN_QUERY",
    "OCEAN_UPLOAD",
    "SEED_API",
    "SEED_PATH",
    "Contact",
    "GatewayClient",
    "ProtocolName",
    "RetryPolicy",
    "SearchFilters",
    "SearchResult",
    "classify_ocean",
    "classify_seed",
    "client_session",
    "form_urlencode",
    "ocean_path",
    "ocean_query_params",
    "ocean_upload_params",
    "parse_retry_after",
    "seed_search_params",
    "sign_ocean",
    "sign_seed",
]
