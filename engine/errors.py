"""The engine's exception hierarchy.

Every error a gateway can produce is mapped, for both protocols, onto one of five
classes that tell the caller what to do next::

    Img1688Error
    ├── ConfigError                 the job file, flags or credentials are wrong: fix and rerun
    ├── StorageError                the output directory cannot be used (locked, unwritable, full)
    └── GatewayError                anything the gateway (or the way to it) answered
        ├── RateLimited             pause every caller, then retry (carries Retry-After)
        ├── TransientError          5xx, timeouts, dropped connections, unreadable bodies: back off
        │   └── Unreachable         DNS, connection or TLS failure: the gateway was not reached
        ├── TokenExpired            refresh the access token once, then retry
        ├── FatalGatewayError       stop the job: retrying burns quota and fixes nothing
        │   └── GatewayUnreachable  the gateway was never reached in this invocation
        └── ImageRejected           this image only: record the reason and go on

Messages never contain secrets: they are built from gateway codes and messages only,
and :func:`redact` scrubs any known secret that might have been echoed back.
"""

from __future__ import annotations

from collections.abc import Iterable


class Img1688Error(Exception):
    """Base class for every error the engine raises on purpose."""


class ConfigError(Img1688Error):
    """The job file, a flag or the credentials are invalid. The message names the key."""


class StorageError(Img1688Error):
    """The output directory cannot be used: locked by another run, unwritable, or full."""


class GatewayError(Img1688Error):
    """An answer (or the lack of one) from the gateway.

    Attributes:
        code: the gateway's error code (``gw.SignatureInvalid``, ``isv.invalid-image``, ``"401"``,
            ``http_503``, ``timeout`` ...), stable enough to store and group by.
        message: the gateway's human message, or our own description.
        status: the HTTP status, when there was an HTTP answer.
        request_id: the gateway's request id, when it sent one (quote it to support).
        calls: the gated HTTP attempts the failed search spent, retries included (set by
            :meth:`GatewayClient.search <engine.client.GatewayClient.search>`; 0 elsewhere).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id
        self.calls = 0
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [f"{self.code}: {self.message}"]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.request_id:
            parts.append(f"request_id {self.request_id}")
        return " | ".join(parts)


class RateLimited(GatewayError):
    """The gateway refused the call for exceeding the rate limit. Pause, then retry.

    Attributes:
        retry_after: seconds to wait, from the ``Retry-After`` header, when the gateway sent one.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(code, message, status=status, request_id=request_id)


class TransientError(GatewayError):
    """A failure that may pass: 5xx, timeout, dropped connection, a body that is not JSON, a
    business failure saying the server is busy (:data:`engine.client.classify.BUSY_MARKERS`)."""


class Unreachable(TransientError):
    """One attempt could not reach the gateway: the host name did not resolve, or no connection
    (TCP or TLS) could be made. Distinct from a timeout or a dropped connection, after which the
    request may have arrived."""


class TokenExpired(GatewayError):
    """The access token is missing, invalid or expired. Refresh once, then retry."""


class FatalGatewayError(GatewayError):
    """The job cannot go on: every further call would fail the same way.

    Attributes:
        fix: one sentence telling the user what to change.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        fix: str,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.fix = fix
        super().__init__(code, message, status=status, request_id=request_id)

    def _describe(self) -> str:
        return f"{super()._describe()} -> {self.fix}"


class GatewayUnreachable(FatalGatewayError):
    """The gateway could not be reached at all since the job started (every attempt failed to
    resolve or to connect): the endpoint, DNS or the route to it is wrong, not the gateway."""


class ImageRejected(GatewayError):
    """The gateway refused this one image (invalid image, business failure). Go on."""


RETRYABLE: tuple[type[GatewayError], ...] = (RateLimited, TransientError)
"""The exception types a retry loop may retry. Explicit on purpose: never retry by exclusion."""


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each non-empty secret in ``text`` by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
