"""An app's tokens: which access token to send, replacing it once when it expires, and every
token the app ever held kept secret.

A refresh is shared: concurrent searches that all met the expired token refresh it once (the
first under the lock does it; the others find it replaced). A refreshed pair goes to the token
store, where the next job of the same app finds it. Tokens this app stopped using stay in
:meth:`AppTokens.secrets`, since a gateway might still echo one in an error message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from engine.client.fixes import TOKEN_FIX
from engine.credentials import Credentials, TokenStore
from engine.errors import FatalGatewayError, GatewayError, TokenExpired, Unreachable

log = logging.getLogger(__name__)

Exchange = Callable[[str], Awaitable[tuple[str, str, float | None]]]
"""refresh token -> (access token, refresh token, expiry as epoch seconds or ``None``)."""


class AppTokens:
    """The current tokens of one app.

    Args:
        credentials: the app's key, secret and configured tokens.
        store: where refreshed tokens are kept and read back; a valid stored access token is
            preferred to ``credentials.access_token``, a stored refresh token always.
    """

    def __init__(self, credentials: Credentials, store: TokenStore | None) -> None:
        self._credentials = credentials
        self._store = store
        self._lock = asyncio.Lock()
        self.access = credentials.access_token
        """The access token to send; ``None`` until the first refresh when none is known."""
        self.refresh = credentials.refresh_token
        self._replaced: list[str] = []
        stored = store.load(credentials.app_key) if store else None
        if stored is not None:
            self._replaced.append(stored.access_token)
            if stored.valid():
                self.access = stored.access_token
            self.refresh = stored.refresh_token or self.refresh

    def secrets(self) -> tuple[str, ...]:
        """Every secret of the app: its secret and every token it holds or held."""
        current = (self.access, self.refresh, *self._replaced)
        return self._credentials.secrets() + tuple(s for s in current if s)

    async def replace(
        self, used: str | None, cause: TokenExpired | None, exchange: Exchange
    ) -> None:
        """Replace the access token ``used`` through ``exchange``, unless another task already
        has; ``cause`` is the expiry that made the caller ask (``None``: no token yet).

        Raises:
            FatalGatewayError: there is no refresh token, or the gateway refused it (the fix
                says to authorise the app again); or ``exchange`` raised one of its own (an IP
                whitelist, an unknown app key ...).
            Unreachable: the token endpoint could not be reached.
        """
        async with self._lock:
            if self.access != used:
                return
            if not self.refresh:
                if cause is not None:
                    raise token_fatal(cause) from None
                raise FatalGatewayError(
                    "no_token", "no access token and no refresh token", fix=TOKEN_FIX
                )
            try:
                token, refresh, expires_at = await exchange(self.refresh)
            except (FatalGatewayError, Unreachable):
                # Already says what to fix (IP whitelist, app key ...), or the network's fault.
                raise
            except GatewayError as failed:
                raise token_fatal(failed) from None
            self._replaced.extend(t for t in (self.access, self.refresh) if t)
            self.access, self.refresh = token, refresh
            log.info("refreshed the access token of app %s", self._credentials.app_key)
            if self._store is not None:
                self._store.save(self._credentials.app_key, token, refresh, expires_at)


def token_fatal(error: GatewayError) -> FatalGatewayError:
    """A token error that refreshing cannot fix, as the fatal error that says what to do."""
    return FatalGatewayError(
        error.code, error.message, fix=TOKEN_FIX, status=error.status, request_id=error.request_id
    )
