"""Alerts: tell a person how an unattended ``img1688 run`` ended (docs/notify.md).

Once an invocation's outcome is known, :func:`notify` builds one *notice*, a JSON document
(``"schema": 1``), if an event of the job's ``notify.on`` fired, and delivers it to the job's
webhook (a POST) and/or command (the notice on its stdin), at the same time. The events:

* ``complete``: exit 0, every photo done, none failed.
* ``failure``: the run needs a look but nothing is refused: every photo done with some failed
  (1), stopped early by ``--max-calls``, ``--limit`` or the daily cap (4), the output
  directory unusable (5), interrupted by a signal (130, 143).
* ``fatal``: the job cannot go on as it is: the gateway refused it, could not be reached or
  kept failing (3), or a setting found wrong once the job file was read (2: missing inputs or
  credentials). A job file that cannot be read at all has no ``[notify]`` to go by.
* ``quota_low``: the summary's quota block says ``"low": true`` (:mod:`engine.ledger`), alongside
  whichever of the above applies.

One notice per invocation, whatever fired: ``event`` is the first of ``events``, the outcome's
event before ``quota_low``.

Delivery is best effort and bounded: the webhook gets :data:`ATTEMPTS` attempts, each within
``notify.timeout`` seconds, with back-off between them; the command gets ``notify.timeout``
seconds and is then killed. A failure is logged, naming the webhook's host and nothing more of
its URL (the URL is a secret: tokens live in its path or query), and never changes the run's
outcome or exit code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from engine import __version__
from engine.errors import ConfigError
from engine.feed import job_feed
from engine.jobfile import Job, Notify, NotifyEvent
from engine.outcome import ExitCode, RunOutcome

log = logging.getLogger(__name__)

SCHEMA = 1
"""The notice's version: keys are only ever added under the same number (docs/notify.md)."""
ATTEMPTS = 3
"""Webhook attempts, the first included."""
BACKOFF_SECONDS = 0.5
"""The wait before the second attempt; it doubles before each next one."""
REPORT_FILE = "report.html"

_FATAL = frozenset({ExitCode.CONFIG, ExitCode.FATAL_GATEWAY})


def outcome_event(code: ExitCode) -> NotifyEvent:
    """The event an exit code stands for (the module doc says why)."""
    if code == ExitCode.OK:
        return "complete"
    return "fatal" if code in _FATAL else "failure"


def fired_events(outcome: RunOutcome) -> list[NotifyEvent]:
    """Every event of this invocation, the outcome's first."""
    events = [outcome_event(outcome.exit_code)]
    quota = outcome.summary.get("quota")
    if isinstance(quota, Mapping) and quota.get("low") is True:
        events.append("quota_low")
    return events


def build_notice(
    job: Job, outcome: RunOutcome, *, now: datetime | None = None
) -> dict[str, object] | None:
    """The notice for ``outcome``, or ``None`` when no event of ``job.notify.on`` fired.

    It holds nothing secret: the outcome's message and fix (built without secrets, see
    :mod:`engine.errors`), counts, paths, the quota block; never the webhook's URL.
    """
    events = [event for event in fired_events(outcome) if event in job.notify.on]
    if not events:
        return None
    summary = outcome.summary
    quota = summary.get("quota")
    return {
        "schema": SCHEMA,
        "event": events[0],
        "events": events,
        "job": job.name,
        "run_id": outcome.run_id,
        "exit_code": int(outcome.exit_code),
        "message": outcome.message,
        "fix": outcome.fix,
        "counts": _counts(summary),
        "feed": _feed(job),
        "report": _existing(job.out / REPORT_FILE),
        "quota": dict(quota) if isinstance(quota, Mapping) else None,
        "engine_version": __version__,
        "host": socket.gethostname(),
        "sent_at": (now or datetime.now(UTC)).isoformat(),
    }


def _counts(summary: Mapping[str, object]) -> dict[str, object] | None:
    """What the run achieved so far; ``None`` when it stopped before it had a run."""
    if not summary:
        return None
    failures = summary.get("failures")
    by_reason = dict(failures) if isinstance(failures, Mapping) else {}
    return {
        "photos": summary.get("images"),
        "searched": summary.get("searched"),
        "reused": summary.get("reused_answers"),
        "failed": sum(by_reason.values()),
        "failed_by_reason": by_reason,
        "calls": summary.get("calls_this_run"),
        "calls_this_invocation": summary.get("calls_this_invocation"),
    }


def _feed(job: Job) -> dict[str, object]:
    """Where the feed is. The manifest is the latest completed run's, which is this one's only
    when ``manifest_run_id`` is the notice's ``run_id``."""
    feed = job_feed(job)
    manifest = feed.read_manifest()
    return {
        "output": job.feed_location,
        "manifest": str(feed.manifest_path) if manifest is not None else None,
        "manifest_run_id": manifest.get("run_id") if manifest is not None else None,
        "shard": f"{job.shard.index}/{job.shard.count}" if job.shard.sharded else None,
    }


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


async def notify(
    job: Job,
    outcome: RunOutcome,
    *,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> None:
    """Deliver the notice of ``outcome`` to ``job.notify``'s webhook and command, if an event
    of ``notify.on`` fired. Never raises but for cancellation: whatever goes wrong is logged,
    since an alert must not change how the run ended. ``environ`` (``os.environ``) expands the
    webhook's URL."""
    if not job.notify.enabled:
        return
    try:
        notice = build_notice(job, outcome, now=now)
        if notice is None:
            return
        await deliver(job.notify, notice, os.environ if environ is None else environ)
    except Exception as exc:  # a bug here must not turn a run's exit code into a traceback
        # The type only: a message could quote the URL.
        log.error("notice not sent: unexpected %s", type(exc).__name__)


async def deliver(
    settings: Notify, notice: Mapping[str, object], environ: Mapping[str, str]
) -> None:
    """Send ``notice`` to the webhook and the command of ``settings`` at once; each logs how
    its delivery went and neither raises for a failed one."""
    body = json.dumps(notice, ensure_ascii=False, default=str).encode()
    event = str(notice.get("event"))
    sends = []
    if settings.has_webhook:
        sends.append(_post(settings, body, event, environ))
    if settings.command:
        sends.append(_run_command(settings.command, body, event, settings.timeout))
    await asyncio.gather(*sends)


class _Undelivered(Exception):
    """One webhook attempt failed; the message says why and never holds the URL."""


class _Retryable(_Undelivered):
    """A failed attempt that another may get past: no answer, no connection, 408, 429, 5xx."""


async def _post(settings: Notify, body: bytes, event: str, environ: Mapping[str, str]) -> None:
    try:
        url = settings.webhook_url(environ)
    except ConfigError as exc:  # the variable went away since the job was read
        log.warning("notice %r not sent: %s", event, exc)
        return
    assert url is not None  # settings.has_webhook
    host = urlsplit(url).hostname
    retrying = AsyncRetrying(
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=BACKOFF_SECONDS, max=BACKOFF_SECONDS * 4),
        retry=retry_if_exception_type(_Retryable),
        reraise=True,
    )
    timeout = aiohttp.ClientTimeout(total=settings.timeout)
    status = 0
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async for attempt in retrying:
                with attempt:
                    status = await _post_once(session, url, body)
    except _Undelivered as exc:
        tries = retrying.statistics.get("attempt_number", 1)
        log.warning(
            "notice %r not delivered to %s after %d attempt(s): %s; the run's outcome stands",
            event,
            host,
            tries,
            exc,
        )
        return
    log.info("notice %r delivered to %s (HTTP %d)", event, host, status)


async def _post_once(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    """One POST; its status when 2xx.

    Raises:
        _Retryable: no answer within the session's timeout, no connection, 408, 429 or 5xx.
        _Undelivered: any other answer (the URL or the receiver is wrong: retrying won't help).
    """
    headers = {"Content-Type": "application/json", "User-Agent": f"img1688/{__version__}"}
    try:
        # A redirect would turn the POST into a GET elsewhere: a webhook answers itself.
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as answer:
            status = answer.status
    except TimeoutError:
        raise _Retryable(f"no answer within {session.timeout.total:g} s") from None
    except aiohttp.ClientError as exc:
        # aiohttp's messages may quote the URL: its type and the OS's reason only.
        reason = getattr(getattr(exc, "os_error", None), "strerror", None)
        raise _Retryable(type(exc).__name__ + (f" ({reason})" if reason else "")) from None
    if 200 <= status < 300:
        return status
    if status in (408, 429) or status >= 500:
        raise _Retryable(f"HTTP {status}")
    raise _Undelivered(f"HTTP {status}")


async def _run_command(argv: tuple[str, ...], body: bytes, event: str, seconds: float) -> None:
    """Run ``argv`` with ``body`` on its stdin; its stdout goes to our stderr, so that the
    summary on our stdout stays parseable. Logs its exit status; kills it after ``seconds``."""
    name = Path(argv[0]).name
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=2
        )
    except OSError as exc:
        log.warning("notice %r not given to %s: it cannot start (%s)", event, name, exc.strerror)
        return
    try:
        async with asyncio.timeout(seconds):
            await process.communicate(body)
    except TimeoutError:
        log.warning(
            "notice %r: %s did not finish within %g s and was killed; the run's outcome stands",
            event,
            name,
            seconds,
        )
        return
    finally:
        if process.returncode is None:  # timed out, or the notice abandoned: no orphan
            process.kill()
            await process.wait()
    if process.returncode == 0:
        log.info("notice %r given to %s (exit status 0)", event, name)
    else:
        log.warning(
            "notice %r: %s exited with status %s; the run's outcome stands",
            event,
            name,
            process.returncode,
        )
