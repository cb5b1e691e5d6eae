"""The apps a job calls with: searches spread over several apps, a refused app taken out.

A credentials file may list several apps (:func:`engine.credentials.load_apps`). The gateway
counts calls per app key, so each app has its own call gates at the job's rate
(:class:`~engine.ratelimit.AppGates`) and its own client (token, refresh, token-store entry),
while all of them draw on the run's one :class:`~engine.ratelimit.CallBudget`.

* **Choosing.** A search goes to the app whose gate frees a slot soonest (for ``ocean``, the
  upload's gate: the query then goes to the same app, which alone knows the upload's image id);
  ties go to the app with the fewest searches in flight, then to the one chosen least recently.
* **Refusals.** A fatal refusal that concerns one app (:func:`app_specific`: its secret, key,
  permissions, quota or token) takes that app out of the pool with a logged reason, and the
  search in hand is made again on another app. A refusal that concerns the machine, the
  endpoint or the request (IP whitelist, clock, unreachable gateway, unsupported API, malformed
  request) stops the job at once, as does the refusal of the last app left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from engine.client import (
    Contact,
    GatewayClient,
    RetryPolicy,
    SearchFilters,
    SearchResult,
    client_session,
)
from engine.client.fixes import APP_KEY_FIX, SIGNATURE_FIX, TOKEN_FIX, USAGE_FIX, acl_fix
from engine.credentials import Credentials, TokenStore
from engine.errors import FatalGatewayError
from engine.protocol import OCEAN_QUERY, OCEAN_UPLOAD, SEED_API, ProtocolName
from engine.ratelimit import AppGates, CallBudget, CallGate, Rate

log = logging.getLogger(__name__)

APP_FIXES = frozenset(
    {
        SIGNATURE_FIX,
        APP_KEY_FIX,
        USAGE_FIX,
        TOKEN_FIX,
        *(acl_fix(api) for api in (OCEAN_UPLOAD, OCEAN_QUERY, SEED_API)),
    }
)
"""The fixes of the refusals that concern one app. The fix is the classification's verdict on
what must change (:mod:`engine.client.fixes`), so it is what tells an app's fault from the job's."""


def app_specific(refusal: FatalGatewayError) -> bool:
    """Whether ``refusal`` concerns one app rather than the job: a wrong secret or app key, an
    API the app may not call, the app's quota used up, or its token that cannot be refreshed.

    An IP missing from the whitelist concerns this machine, and a skewed clock, an unreachable
    gateway, an unsupported API or a malformed request concern every app alike: those stop the
    job.
    """
    return refusal.fix in APP_FIXES


@dataclass(eq=False)
class App:
    """One app of the pool and what the pool knows of it."""

    client: GatewayClient
    searches: int = 0
    """Searches in flight on this app."""
    chosen: int = 0
    """When it was last chosen, in choices made by the pool."""
    refusal: FatalGatewayError | None = None
    """Why it was taken out of the pool, if it was."""

    @property
    def label(self) -> str:
        """The app key, masked, as logs and messages show it."""
        return self.client.credentials.masked_key


class AppPool:
    """Image searches over one or more apps (see the module doc).

    Use as ``async with AppPool(...) as pool: await pool.search(jpeg, filters)``; the apps share
    one HTTP session, opened and closed with the pool.

    Args:
        base_url, protocol, retry, token_store: as for :class:`GatewayClient`, for every app.
        apps: the apps' credentials, at least one, each app key once.
        windows: each app's allowance: one :class:`Rate` for every API, or API name -> rate.
        budget: the run's call budget, shared by every app.
        clock: the gates' monotonic clock, for choosing the app whose slot is free soonest.

    Raises:
        ValueError: no app, or an app key twice.
    """

    def __init__(
        self,
        *,
        base_url: str,
        protocol: ProtocolName,
        apps: Sequence[Credentials],
        windows: Rate | Mapping[str, Rate],
        budget: CallBudget,
        retry: RetryPolicy = RetryPolicy(),
        token_store: TokenStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not apps:
            raise ValueError("the pool needs at least one app")
        if len({app.app_key for app in apps}) != len(apps):
            raise ValueError("an app key is listed twice")
        self.base_url = base_url
        self.protocol: ProtocolName = protocol
        self.budget = budget
        self._credentials = tuple(apps)
        self._windows = windows
        self._retry = retry
        self._store = token_store
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._apps: list[App] = []
        self._choices = 0

    def __repr__(self) -> str:
        keys = ", ".join(credentials.masked_key for credentials in self._credentials)
        return f"AppPool(base_url={self.base_url!r}, protocol={self.protocol!r}, apps=[{keys}])"

    async def __aenter__(self) -> AppPool:
        self._session = client_session()
        contact = Contact()
        self._apps = [
            App(
                GatewayClient(
                    base_url=self.base_url,
                    protocol=self.protocol,
                    credentials=credentials,
                    gate=AppGates.build(self._windows, self.budget, credentials.masked_key),
                    retry=self._retry,
                    token_store=self._store,
                    session=self._session,
                    contact=contact,
                )
            )
            for credentials in self._credentials
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def apps(self) -> tuple[App, ...]:
        """Every app, those taken out included, in the order given."""
        return tuple(self._apps)

    @property
    def gates(self) -> tuple[CallGate, ...]:
        """Every call gate of every app."""
        return tuple(gate for app in self._apps for gate in app.client.gates.gates)

    async def search(self, jpeg: bytes, filters: SearchFilters) -> SearchResult:
        """Search for ``jpeg`` on the app whose slot is free soonest; on a refusal that concerns
        that app alone, take the app out of the pool and search again on another.

        Raises:
            FatalGatewayError: a refusal that concerns the job (at once), or every app refused:
                with one app, its refusal itself; with several, one error naming each app
                (masked) with its reason and its fix.
            BudgetExhausted, RateLimited, TransientError, ImageRejected: as
                :meth:`GatewayClient.search`.
        """
        while True:
            app = self._choose()
            app.searches += 1
            try:
                return await app.client.search(jpeg, filters)
            except FatalGatewayError as refusal:
                if not app_specific(refusal):
                    raise
                self._take_out(app, refusal)
            finally:
                app.searches -= 1

    def _choose(self) -> App:
        live = [app for app in self._apps if app.refusal is None]
        if not live:
            raise self._no_app_left()
        now = self._clock()
        app = min(live, key=lambda a: (max(now, a.client.free_at()), a.searches, a.chosen))
        self._choices += 1
        app.chosen = self._choices
        return app

    def _take_out(self, app: App, refusal: FatalGatewayError) -> None:
        if app.refusal is not None:
            return  # several searches on it were refused: it is out already
        app.refusal = refusal
        if len(self._apps) > 1:
            left = sum(a.refusal is None for a in self._apps)
            log.warning(
                "app %s taken out of the pool: %s (%d app(s) left)", app.label, refusal, left
            )

    def _no_app_left(self) -> FatalGatewayError:
        refused = [(app.label, app.refusal) for app in self._apps if app.refusal is not None]
        if len(refused) == 1:
            return refused[0][1]
        reasons = "; ".join(f"app {label}: {r.code}: {r.message}" for label, r in refused)
        fixes = "; ".join(f"app {label}: {r.fix}" for label, r in refused)
        return FatalGatewayError("no_app_left", f"every app was refused ({reasons})", fix=fixes)
