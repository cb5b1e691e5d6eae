"""Where a job's calls go: the configured gateway, or the sandbox started in-process.

``gateway.endpoint = "sandbox"`` starts the sandbox gateway inside the job (for trying the
engine, ``make run`` and the tests) with its own throwaway credentials, which never reach the
user's token store. Any other endpoint takes the user's credentials: one app or several
(:func:`engine.credentials.load_apps`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack

from engine.credentials import Credentials, TokenStore, load_apps
from engine.jobfile import SANDBOX, Job

log = logging.getLogger(__name__)


async def open_endpoint(
    stack: AsyncExitStack, job: Job, credentials: Credentials | Sequence[Credentials] | None
) -> tuple[str, tuple[Credentials, ...]]:
    """The base URL to call and the apps to sign with (at least one); an embedded sandbox is
    started on ``stack`` and stops with it. Explicit ``credentials`` (one app or several) win
    over the environment's and the credentials file's.

    Raises:
        ConfigError: no credentials given, and none found (see :func:`load_apps`).
    """
    given = (credentials,) if isinstance(credentials, Credentials) else tuple(credentials or ())
    if job.gateway.endpoint != SANDBOX:
        return job.gateway.endpoint, given or load_apps()
    # Imported here: the sandbox (and its catalogue) is only needed for the embedded gateway.
    from engine.sandbox import Sandbox, SandboxConfig

    rates = job.gateway.rates
    config = SandboxConfig(rate=job.gateway.rate, api_rates=rates.by_api() if rates else {})
    sandbox = await stack.enter_async_context(Sandbox(config))
    log.info("embedded sandbox gateway at %s (rate %s)", sandbox.url, job.gateway.rate_text)
    return sandbox.url, given or (
        Credentials(
            app_key=config.app_key,
            app_secret=config.app_secret,
            access_token=config.access_token,
            refresh_token=config.refresh_token,
        ),
    )


def token_store_for(job: Job) -> TokenStore | None:
    """Where refreshed tokens are kept: the user's store, but none for the embedded sandbox,
    whose tokens are throwaway."""
    return None if job.gateway.endpoint == SANDBOX else TokenStore.default()
