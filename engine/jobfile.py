"""Job files: what to search, where to write, how to behave. Validated whole before any call.

A job file is TOML. Relative paths are relative to the job file's folder. Credentials never
come from a job file (see :mod:`engine.credentials`). Every key is checked: an unknown key or
a bad value is a :class:`~engine.errors.ConfigError` that names the key.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, overload
from urllib.parse import urlsplit

from engine.catalogue_table import CatalogueEntry, read_catalogue
from engine.clean import FreightFilter, WholesaleFilters
from engine.client import RetryPolicy, SearchFilters
from engine.errors import ConfigError
from engine.ledger import DEFAULT_LOW_SHARE, QuotaSettings
from engine.parsers import PRICE_LIMIT
from engine.preprocess import PHOTO_EXTENSIONS, PreprocessOptions
from engine.protocol import OCEAN_QUERY, OCEAN_UPLOAD, PROTOCOLS, SEED_API, ProtocolName
from engine.ratelimit import Rate
from engine.shard import UNSHARDED, Shard
from engine.storage import S3Url, check_credentials, default_state_dir, parse_location

DEFAULT_EXTENSIONS = PHOTO_EXTENSIONS  # those of every format engine.preprocess decodes
SANDBOX = "sandbox"
MAX_TTL_DAYS = 100_000
"""Largest ``engine.reuse_ttl_days``: about 270 years, far inside what a timedelta holds."""
MAX_FAILURE_TTL_HOURS = 24 * 365
"""Largest ``evidence.failure_ttl_hours``: a year."""

OutputFormat = Literal["parquet", "delta"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
DEFAULT_TARGET_FILE_MB = 128
MAX_TARGET_FILE_MB = 1024 * 1024
"""A terabyte: past any file a reader wants."""

T = TypeVar("T")
S = TypeVar("S", bound=str)

_FREIGHT_FILTERS: tuple[FreightFilter, ...] = get_args(FreightFilter)


@dataclass(frozen=True)
class Inputs:
    paths: tuple[Path, ...]
    """Folders and files to walk; may be empty when ``catalogue`` is given."""
    recursive: bool = True
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = True
    catalogue: Path | None = None
    """The catalogue table (:mod:`engine.catalogue_table`); its rows are :attr:`Job.catalogue`."""
    urls: tuple[str, ...] = ()
    """The ``s3://bucket/prefix`` entries of ``inputs.paths`` (checked): walked after
    :attr:`paths`, by :mod:`engine.discover`."""


@dataclass(frozen=True)
class ApiRates:
    """``[gateway.rates]``: one window per API, for gateways that count each API on its own."""

    upload: Rate | None = None
    query: Rate | None = None
    search: Rate | None = None

    def by_api(self) -> dict[str, Rate]:
        """API name -> its window, for the APIs given."""
        named = {OCEAN_UPLOAD: self.upload, OCEAN_QUERY: self.query, SEED_API: self.search}
        return {api: rate for api, rate in named.items() if rate is not None}

    def __str__(self) -> str:
        named = {"upload": self.upload, "query": self.query, "search": self.search}
        return ", ".join(f"{name} {rate}" for name, rate in named.items() if rate is not None)


@dataclass(frozen=True)
class Gateway:
    endpoint: str
    """``"sandbox"`` (the embedded sandbox) or the gateway's base URL: never assumed, since a
    run against the sandbox publishes a feed of made-up offers."""
    protocol: ProtocolName = "ocean"
    rate: Rate = Rate(10, 60.0)
    page_size: int = 20
    retry: RetryPolicy = RetryPolicy()
    rates: ApiRates | None = None
    """One window per API, instead of ``rate``'s one window for every API of an app."""
    quota: QuotaSettings = QuotaSettings()
    """The daily cap and the package the calls count against (:mod:`engine.ledger`)."""
    send_title: bool = False
    """Send a catalogue row's title with its search, where the protocol has a field for it
    (``ocean``: ``keyword``); see :meth:`Job.search_filters_for`."""

    @property
    def windows(self) -> Rate | dict[str, Rate]:
        """What the call gates of each app enforce: ``rate``, or ``rates`` by API name."""
        return self.rates.by_api() if self.rates is not None else self.rate

    @property
    def rate_text(self) -> str:
        """The allowance of one app, as the summary shows it."""
        return str(self.rates) if self.rates is not None else str(self.rate)


@dataclass(frozen=True)
class Engine:
    searches: int = 4
    """Searches in flight at once; the call gate, not this, caps the rate."""
    preprocess_workers: int | None = None
    """Processes for preprocessing; ``None`` means one per core."""
    queue_size: int = 64
    part_images: int = 500
    """Images per Parquet part: bounds memory and what a crash can make us rewrite."""
    flush_seconds: float = 60.0
    reuse_ttl_days: float = 7.0
    """Stored answers younger than this are reused for unchanged photos instead of searching."""
    max_consecutive_failures: int = 10
    """Searches in a row that exhaust their retries before the job stops as 'gateway looks
    down'; their photos are retried by the next invocation."""


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/img1688/images``, else ``~/.cache/img1688/images``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification asks.

    Raises:
        ConfigError: naming ``evidence.cache_dir`` when no home directory is known.
    """
    xdg = environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "img1688" / "images"
    home = environ.get("HOME") or os.path.expanduser("~")
    if not os.path.isabs(home):
        raise ConfigError(
            "evidence.cache_dir: no home directory to put the default cache in; set this key"
        )
    return Path(home) / ".cache" / "img1688" / "images"


@dataclass(frozen=True)
class Evidence:
    """``[evidence]``: fetching each offer's main image to judge whether it is the product.
    Its requests go to the offers' image CDN, never to the gateway: no quota is spent."""

    cache_dir: Path
    """The content-addressed image cache, shared by runs (and jobs)."""
    enabled: bool = True
    rate: Rate = Rate(20, 1.0)
    """At most this many image requests in any window."""
    concurrency: int = 4
    """Image requests in flight at once."""
    timeout: float = 20.0
    """Seconds per image request."""
    max_bytes: int = 10_000_000
    """An image larger than this is refused before its body is read."""
    rendition: int = 300
    """Pixels (long side) asked of the CDN where its URL scheme allows; 0 = the original."""
    failure_ttl_hours: float = 24.0
    """An offer image whose answer said there is none (404 or 410, not an image, empty) is not
    asked again within this many hours; 0 asks every run."""

    def fingerprint(self) -> dict[str, object]:
        """What changes the evidence columns: whether there are any, and from which pixels."""
        if not self.enabled:
            return {"enabled": False}
        return {"enabled": True, "rendition": self.rendition}


@dataclass(frozen=True)
class Downloads:
    """``[downloads]``: fetching the catalogue's photo URLs (not the gateway: no quota)."""

    rate: Rate = Rate(10, 1.0)
    """At most this many downloads started in any window."""
    concurrency: int = 4
    """Downloads in flight at once."""
    timeout: float = 30.0
    """Seconds per attempt."""
    max_bytes: int = 50_000_000
    """A photo larger than this is refused before its body is read."""
    attempts: int = 3
    """Attempts per photo, the first included."""


NotifyEvent = Literal["complete", "failure", "fatal", "quota_low"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = get_args(NotifyEvent)
DEFAULT_NOTIFY_ON: tuple[NotifyEvent, ...] = ("failure", "fatal", "quota_low")
"""What needs a person: every event but ``complete`` (docs/notify.md)."""
MAX_NOTIFY_TIMEOUT = 60.0
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Notify:
    """``[notify]``: whom :mod:`engine.notify` tells how an invocation ended. It holds no
    secret: a webhook's tokens stay in the environment (``webhook_env``, or ``${VAR}``
    placeholders in ``webhook``) and are read only by :meth:`webhook_url`."""

    webhook: str | None = None
    """The URL as written, ``${VAR}`` placeholders unexpanded."""
    webhook_env: str | None = None
    """The environment variable holding the whole webhook URL."""
    command: tuple[str, ...] = ()
    """A program and its arguments, run without a shell, the notice on its stdin."""
    on: tuple[NotifyEvent, ...] = DEFAULT_NOTIFY_ON
    timeout: float = 5.0
    """Seconds per webhook attempt, and for the command."""

    @property
    def enabled(self) -> bool:
        """Whether anyone is to be told at all."""
        return self.has_webhook or bool(self.command)

    @property
    def has_webhook(self) -> bool:
        return self.webhook is not None or self.webhook_env is not None

    def webhook_url(self, environ: Mapping[str, str]) -> str | None:
        """The webhook's URL with its variables taken from ``environ``; ``None`` without one.

        The URL is a secret: keep it out of logs, errors and documents (its host is not).

        Raises:
            ConfigError: naming the key and the variable (never a value) when a variable is
                unset or empty, or when the result is not an http(s) URL.
        """
        if self.webhook_env is not None:
            key = "notify.webhook_env"
            url = _env_value(environ, self.webhook_env, key)
        elif self.webhook is not None:
            key = "notify.webhook"
            url = _PLACEHOLDER.sub(lambda m: _env_value(environ, m[1], key), self.webhook)
        else:
            return None
        if not _is_http_url(url):
            raise ConfigError(f"{key}: the URL, once expanded, is not an http(s) URL with a host")
        return url


@dataclass(frozen=True)
class Job:
    name: str
    source: Path | None
    inputs: Inputs
    out: Path
    """The job's local folder: its checkpoints and lock (``output.state_dir``), and the feed's
    folder too when :attr:`output` is ``None`` (the usual local layout)."""
    gateway: Gateway
    filters: WholesaleFilters = WholesaleFilters()
    preprocess: PreprocessOptions = PreprocessOptions()
    engine: Engine = Engine()
    notify: Notify = Notify()
    evidence: Evidence = field(default_factory=lambda: Evidence(default_cache_dir(os.environ)))
    downloads: Downloads = Downloads()
    catalogue: tuple[CatalogueEntry, ...] = field(default=(), repr=False)
    """The rows of ``inputs.catalogue``, validated when the job was loaded; empty without one."""
    limit: int | None = None
    max_calls: int | None = None
    zstd_level: int = 6
    output_format: OutputFormat = "parquet"
    """``output.format``: the Parquet layout, or Delta Lake tables (:mod:`engine.delta`)."""
    target_file_mb: int = DEFAULT_TARGET_FILE_MB
    """``output.target_file_mb``: the size of the files a completed run is compacted into."""
    shard: Shard = UNSHARDED
    """Which photos this process takes (``--shard I/N``); not result-changing, since each shard
    keeps its own checkpoints."""
    output: str | None = None
    """Where the feed is when not in :attr:`out`: ``s3://bucket/prefix``, or a local folder
    whose checkpoints ``output.state_dir`` puts elsewhere."""
    state_dir: Path | None = None
    """``output.state_dir`` as given (resolved); ``None``: derived from ``output.dir``."""

    @property
    def feed_location(self) -> str:
        """Where the feed is: ``output``, else the folder :attr:`out`."""
        return self.output or str(self.out)

    @property
    def search_filters(self) -> SearchFilters:
        """What the gateway is asked to filter server-side (the rest is filtered on our side)."""
        return SearchFilters(
            price_min=self.filters.price_min,
            price_max=self.filters.price_max,
            min_order_min=self.filters.moq_min,
            freight=self.filters.freight,
            page_size=self.gateway.page_size,
        )

    def search_filters_for(self, title: str | None) -> SearchFilters:
        """What to ask the gateway for a photo whose catalogue title is ``title`` (``None``
        for a photo without one): :attr:`search_filters`, with the title as the keyword when
        ``gateway.send_title`` is on and the protocol (``ocean``) has a field for it."""
        if title is None or not self._sends_title:
            return self.search_filters
        return replace(self.search_filters, keyword=title)

    @property
    def _sends_title(self) -> bool:
        return self.gateway.send_title and self.gateway.protocol == "ocean"

    def request_key(self) -> dict[str, object]:
        """Everything that changes what the gateway answers for one image.

        Stored answers are reused only under the same key.
        """
        filters = self.filters.fingerprint()
        key: dict[str, object] = {
            "protocol": self.gateway.protocol,
            "endpoint": self.gateway.endpoint,
            "page_size": self.gateway.page_size,
            "server_filters": {
                "price_min": filters["price_min"],
                "price_max": filters["price_max"],
                "moq_min": self.filters.moq_min if self.gateway.protocol == "seed" else None,
                "freight": self.filters.freight if self.gateway.protocol == "seed" else "all",
            },
            "preprocess": self.preprocess.fingerprint(),
        }
        if self._sends_title:
            # Only when on: the key of answers stored without it stays what it was.
            key["send_title"] = True
        return key

    def fingerprint(self) -> dict[str, object]:
        """The result-changing parts of the job: a run resumes only under the same fingerprint."""
        fingerprint: dict[str, object] = {
            "request": self.request_key(),
            "filters": self.filters.fingerprint(),
            "evidence": self.evidence.fingerprint(),
        }
        if self.output_format != "parquet":
            # Where a run's parts go (a table format stages them): a run is finished where it
            # started. Only when not the default, so that older runs still resume.
            fingerprint["format"] = self.output_format
        return fingerprint

    def with_overrides(
        self,
        *,
        out: Path | str | None = None,
        limit: int | None = None,
        max_calls: int | None = None,
        rate: Rate | None = None,
        shard: Shard | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Job:
        """The job with the flags' values instead of the file's. ``out`` (``--out``) replaces
        ``output.dir``, checked as it is (a relative path is relative to the current folder);
        ``environ`` (``os.environ``) gives what an ``s3://`` output needs.

        Raises:
            ConfigError: ``out`` is no usable output (see :func:`output_location`).
        """
        job = self
        if shard is not None:
            job = replace(job, shard=shard)
        if out is not None:
            state, output = output_location(
                str(out), self.state_dir, Path.cwd(), os.environ if environ is None else environ
            )
            job = replace(job, out=state, output=output)
        if limit is not None:
            job = replace(job, limit=limit)
        if max_calls is not None:
            job = replace(job, max_calls=max_calls)
        if rate is not None:
            # A flag wins over the file: one window for every API, whatever gateway.rates said.
            job = replace(job, gateway=replace(job.gateway, rate=rate, rates=None))
        return job


def load_job(path: Path) -> Job:
    """Read and validate a job file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"job file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"job file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file {path} is not valid TOML: {exc}") from None
    return parse_job(data, base=path.parent.resolve(), source=path, default_name=path.stem)


def parse_job(
    data: Mapping[str, Any],
    *,
    base: Path,
    source: Path | None = None,
    default_name: str = "job",
    environ: Mapping[str, str] | None = None,
) -> Job:
    """Validate a job mapping (as read from TOML). Relative paths resolve against ``base``;
    the variables a ``[notify]`` webhook names must be set in ``environ`` (``os.environ``)."""
    environ = os.environ if environ is None else environ
    top = _Section(data, "")
    job_section = top.section("job")
    inputs_section = top.section("inputs")
    output_section = top.section("output")
    gateway_section = top.section("gateway")
    filters_section = top.section("filters")
    preprocess_section = top.section("preprocess")
    engine_section = top.section("engine")
    notify_section = top.section("notify") if "notify" in data else None
    evidence_section = top.section("evidence")
    downloads_section = top.section("downloads")
    top.done()

    name = job_section.get("name", str, default_name)
    job_section.done()

    raw_catalogue = inputs_section.get("catalogue", str, None)
    catalogue = None if raw_catalogue is None else _resolve(base, raw_catalogue, "inputs.catalogue")
    raw_paths = inputs_section.get("paths", list, [])
    if not raw_paths and catalogue is None:
        raise ConfigError(
            "inputs.paths: give at least one folder or file to search, a table in"
            " inputs.catalogue, or both"
        )
    paths, urls = _input_locations(raw_paths, base, environ)
    extensions = tuple(
        _of_type(e, str, "inputs.extensions").strip().lower().lstrip(".")
        for e in inputs_section.get("extensions", list, list(DEFAULT_EXTENSIONS))
    )
    if not extensions or not all(extensions):
        raise ConfigError(
            'inputs.extensions: give at least one extension, none empty (e.g. ["jpg", "png"])'
        )
    inputs = Inputs(
        paths=paths,
        recursive=inputs_section.get("recursive", bool, True),
        extensions=extensions,
        exclude=tuple(
            _of_type(g, str, "inputs.exclude") for g in inputs_section.get("exclude", list, [])
        ),
        follow_symlinks=inputs_section.get("follow_symlinks", bool, True),
        catalogue=catalogue,
        urls=urls,
    )
    inputs_section.done()

    raw_state_dir = output_section.get("state_dir", str, None)
    state_dir = None if raw_state_dir is None else _resolve(base, raw_state_dir, "output.state_dir")
    out, output = output_location(
        output_section.get("dir", str, None, required=True), state_dir, base, environ
    )
    zstd_level = output_section.get("zstd_level", int, 6, check=_between(1, 22))
    output_format = output_section.choice("format", OUTPUT_FORMATS, "parquet")
    target_file_mb = output_section.get(
        "target_file_mb", int, DEFAULT_TARGET_FILE_MB, check=_between(1, MAX_TARGET_FILE_MB)
    )
    output_section.done()
    if output_format == "delta":
        from engine.delta import require_deltalake

        require_deltalake()

    gateway = _parse_gateway(gateway_section)
    filters = _parse_filters(filters_section)
    preprocess = _parse_preprocess(preprocess_section)
    engine = _parse_engine(engine_section)
    notify = Notify() if notify_section is None else _parse_notify(notify_section, base, environ)
    evidence = _parse_evidence(evidence_section, base, environ)
    downloads = _parse_downloads(downloads_section)
    # Last, once every key is valid: the table may be large, and nothing is searched before
    # it validates.
    entries = () if catalogue is None else _read_catalogue(catalogue)
    job = Job(
        name=name,
        source=source,
        inputs=inputs,
        out=out,
        output=output,
        state_dir=state_dir,
        gateway=gateway,
        filters=filters,
        preprocess=preprocess,
        engine=engine,
        notify=notify,
        evidence=evidence,
        downloads=downloads,
        catalogue=entries,
        zstd_level=zstd_level,
        output_format=output_format,
        target_file_mb=target_file_mb,
    )
    # A guard, not a check: the filters above leave SearchFilters nothing to refuse.
    job.search_filters  # noqa: B018
    return job


def _input_locations(
    raw: list[Any], base: Path, environ: Mapping[str, str]
) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """``inputs.paths``: the local paths (resolved against ``base``) and the ``s3://`` URLs
    (credentials configured in ``environ``), each in the order given.

    Raises:
        ConfigError: naming the entry: not a string, another scheme, no credentials.
    """
    paths: list[Path] = []
    urls: list[str] = []
    for i, entry in enumerate(raw):
        name = f"inputs.paths[{i}]"
        text = _of_type(entry, str, name)
        where = parse_location(text, name)
        if isinstance(where, S3Url):
            check_credentials(environ, name, where)
            urls.append(str(where))
        else:
            paths.append(_resolve(base, text, name))
    return tuple(paths), tuple(urls)


def output_location(
    text: str, state_dir: Path | None, base: Path, environ: Mapping[str, str]
) -> tuple[Path, str | None]:
    """``output.dir`` (``text``) and ``output.state_dir`` as :attr:`Job.out` (the job's local
    folder) and :attr:`Job.output` (the feed's place when not that folder). A local ``text``
    resolves against ``base``; an ``s3://`` one must have credentials configured in
    ``environ``, and its checkpoints go to ``state_dir``, else to
    :func:`~engine.storage.default_state_dir`. Makes no network call.

    Raises:
        ConfigError: naming ``output.dir`` (another scheme, no credentials) or
            ``output.state_dir`` (no folder to derive it in).
    """
    where = parse_location(text, "output.dir")
    if isinstance(where, Path):
        folder = _resolve(base, text, "output.dir")
        if state_dir is None or state_dir == folder:
            return folder, None
        return state_dir, str(folder)
    check_credentials(environ, "output.dir", where)
    return state_dir or default_state_dir(where, environ), str(where)


def _parse_gateway(section: _Section) -> Gateway:
    protocol = section.choice("protocol", PROTOCOLS, "ocean")
    endpoint = section.get("endpoint", str, None)
    if endpoint is None:
        raise ConfigError(
            'gateway.endpoint: missing (required): write endpoint = "sandbox" to try the engine'
            " against its embedded sandbox (made-up offers), or the gateway's URL, e.g."
            ' endpoint = "https://gw.open.1688.com"'
        )
    if endpoint != SANDBOX and not _is_http_url(endpoint):
        raise ConfigError(
            f"gateway.endpoint: {endpoint!r} is neither 'sandbox' nor an http(s) URL"
            " such as 'https://gw.open.1688.com'"
        )
    rate = _rate(section.get("rate", str, "10/60s"), "gateway.rate")
    rates = None
    if "rates" in section.data:
        if "rate" in section.data:
            raise ConfigError(
                "gateway.rates: give gateway.rate (one window for every API) or gateway.rates"
                " (one window per API), not both"
            )
        rates = _parse_rates(section.section("rates"), protocol)
    defaults = RetryPolicy()
    attempts = section.get("attempts", int, defaults.attempts, check=_between(1, 100))
    base_delay = section.get("backoff_base", float, defaults.base_delay, check=_positive)
    max_delay = section.get("backoff_max", float, defaults.max_delay, check=_positive)
    timeout = section.get("timeout", float, defaults.timeout, check=_positive)
    if base_delay > max_delay:
        raise ConfigError(
            "gateway.backoff_base: must not exceed gateway.backoff_max"
            f" (got {base_delay:g} > {max_delay:g})"
        )
    retry = RetryPolicy(
        attempts=attempts, base_delay=base_delay, max_delay=max_delay, timeout=timeout
    )
    page_size = section.get("page_size", int, 20, check=_between(1, 50))
    quota = _parse_quota(section)
    send_title = section.get("send_title", bool, False)
    section.done()
    return Gateway(
        protocol=protocol,
        endpoint=endpoint.rstrip("/"),
        rate=rate,
        page_size=page_size,
        retry=retry,
        rates=rates,
        quota=quota,
        send_title=send_title,
    )


def _parse_quota(section: _Section) -> QuotaSettings:
    """``gateway.daily_calls``, ``package_calls`` with ``package_start``, ``quota_low_share``."""
    daily = section.get("daily_calls", int, None, check=_between(1, 10**12))
    package = section.get("package_calls", int, None, check=_between(1, 10**12))
    start = _iso_date(section.get("package_start", object, None), "gateway.package_start")
    if package is not None and start is None:
        raise ConfigError(
            "gateway.package_start: missing (required with gateway.package_calls): the gateway"
            " day (GMT+8) the package's calls count from, e.g. 2026-01-15"
        )
    if start is not None and package is None:
        raise ConfigError(
            "gateway.package_calls: missing (required with gateway.package_start): the calls"
            " the package holds, e.g. 500000"
        )
    share = section.get("quota_low_share", float, None, check=_share)
    if share is not None and package is None:
        raise ConfigError(
            "gateway.quota_low_share: applies to a package: give gateway.package_calls and"
            " gateway.package_start too, or leave it out"
        )
    return QuotaSettings(daily, package, start, DEFAULT_LOW_SHARE if share is None else share)


def _iso_date(value: object, name: str) -> date | None:
    """A TOML date (``2026-01-15``) or an ISO date string (``"2026-01-15"``)."""
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ConfigError(f"{name}: expected a date such as 2026-01-15, got {value!r}")


def _rate(text: str, name: str) -> Rate:
    try:
        rate = Rate.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if not math.isfinite(rate.period):
        raise ConfigError(f"{name}: the period of {text!r} must be a finite number")
    return rate


def _parse_rates(section: _Section, protocol: ProtocolName) -> ApiRates:
    """``[gateway.rates]``: a window for each call the protocol makes, and for no other."""
    calls = ("upload", "query") if protocol == "ocean" else ("search",)
    rates: dict[str, Rate] = {}
    for key in ("upload", "query", "search"):
        name = f"gateway.rates.{key}"
        text = section.get(key, str, None)
        if text is None and key in calls:
            raise ConfigError(
                f"{name}: missing (required with protocol {protocol}, whose calls are"
                f" {' and '.join(calls)})"
            )
        if text is not None and key not in calls:
            raise ConfigError(
                f"{name}: protocol {protocol} makes no {key} call (its calls: {', '.join(calls)})"
            )
        if text is not None:
            rates[key] = _rate(text, name)
    section.done()
    return ApiRates(**rates)


def _parse_filters(section: _Section) -> WholesaleFilters:
    price_min = section.get("price_min", Decimal, None, check=_price)
    price_max = section.get("price_max", Decimal, None, check=_price)
    moq_min = section.get("moq_min", int, None, check=_between(1, 10**9))
    moq_max = section.get("moq_max", int, None, check=_between(1, 10**9))
    freight = section.choice("freight", _FREIGHT_FILTERS, "all")
    section.done()
    if price_min is not None and price_max is not None and price_min > price_max:
        raise ConfigError(
            f"filters.price_min: must not exceed filters.price_max (got {price_min} > {price_max})"
        )
    if moq_min is not None and moq_max is not None and moq_min > moq_max:
        raise ConfigError(
            f"filters.moq_min: must not exceed filters.moq_max (got {moq_min} > {moq_max})"
        )
    return WholesaleFilters(
        price_min=price_min,
        price_max=price_max,
        moq_min=moq_min,
        moq_max=moq_max,
        freight=freight,
    )


def _parse_preprocess(section: _Section) -> PreprocessOptions:
    d = PreprocessOptions()
    quality = section.get("quality", int, d.quality, check=_between(20, 100))
    min_quality = section.get("min_quality", int, d.min_quality, check=_between(10, 100))
    if min_quality > quality:
        raise ConfigError(
            "preprocess.min_quality: must not exceed preprocess.quality"
            f" (got {min_quality} > {quality})"
        )
    options = PreprocessOptions(
        max_side=section.get("max_side", int, d.max_side, check=_between(64, 10_000)),
        max_bytes=section.get("max_bytes", int, d.max_bytes, check=_between(10_000, 10**8)),
        quality=quality,
        min_quality=min_quality,
        trim_border=section.get("trim_border", bool, d.trim_border),
        autocontrast=section.get("autocontrast", bool, d.autocontrast),
        max_pixels=section.get("max_pixels", int, d.max_pixels, check=_between(1, 10**10)),
        max_input_bytes=section.get(
            "max_input_bytes", int, d.max_input_bytes, check=_between(1, 10**11)
        ),
        timeout=section.get("timeout", float, d.timeout, check=_positive),
    )
    section.done()
    return options


def _parse_engine(section: _Section) -> Engine:
    d = Engine()
    engine = Engine(
        searches=section.get("searches", int, d.searches, check=_between(1, 256)),
        preprocess_workers=section.get("preprocess_workers", int, None, check=_between(1, 256)),
        queue_size=section.get("queue_size", int, d.queue_size, check=_between(1, 100_000)),
        part_images=section.get("part_images", int, d.part_images, check=_between(1, 10**6)),
        flush_seconds=section.get("flush_seconds", float, d.flush_seconds, check=_positive),
        reuse_ttl_days=section.get(
            "reuse_ttl_days", float, d.reuse_ttl_days, check=_between(0, MAX_TTL_DAYS)
        ),
        max_consecutive_failures=section.get(
            "max_consecutive_failures", int, d.max_consecutive_failures, check=_between(1, 10**6)
        ),
    )
    section.done()
    return engine


def _read_catalogue(path: Path) -> tuple[CatalogueEntry, ...]:
    try:
        return tuple(read_catalogue(path))
    except ConfigError as exc:
        raise ConfigError(f"inputs.catalogue: {exc}") from None


def _parse_evidence(section: _Section, base: Path, environ: Mapping[str, str]) -> Evidence:
    raw_cache = section.get("cache_dir", str, None)
    rendition = section.get(
        "rendition",
        int,
        Evidence.rendition,
        check=lambda v: (
            None
            if v == 0 or 64 <= v <= 10_000
            else "must be 0 (the original) or between 64 and 10000"
        ),
    )
    evidence = Evidence(
        cache_dir=(
            default_cache_dir(environ)
            if raw_cache is None
            else _resolve(base, raw_cache, "evidence.cache_dir")
        ),
        enabled=section.get("enabled", bool, Evidence.enabled),
        rate=_rate(section.get("rate", str, str(Evidence.rate)), "evidence.rate"),
        concurrency=section.get("concurrency", int, Evidence.concurrency, check=_between(1, 256)),
        timeout=section.get("timeout", float, Evidence.timeout, check=_positive),
        max_bytes=section.get("max_bytes", int, Evidence.max_bytes, check=_between(1, 10**9)),
        rendition=rendition,
        failure_ttl_hours=section.get(
            "failure_ttl_hours",
            float,
            Evidence.failure_ttl_hours,
            check=_between(0, MAX_FAILURE_TTL_HOURS),
        ),
    )
    section.done()
    return evidence


def _parse_downloads(section: _Section) -> Downloads:
    d = Downloads()
    downloads = Downloads(
        rate=_rate(section.get("rate", str, str(d.rate)), "downloads.rate"),
        concurrency=section.get("concurrency", int, d.concurrency, check=_between(1, 256)),
        timeout=section.get("timeout", float, d.timeout, check=_positive),
        max_bytes=section.get("max_bytes", int, d.max_bytes, check=_between(1, 10**11)),
        attempts=section.get("attempts", int, d.attempts, check=_between(1, 100)),
    )
    section.done()
    return downloads


def _parse_notify(section: _Section, base: Path, environ: Mapping[str, str]) -> Notify:
    """``[notify]``: a webhook, a command or both; ``on`` a subset of :data:`NOTIFY_EVENTS`.
    Never echoes the webhook's value: it may hold a token despite the rules."""
    webhook = section.get("webhook", str, None)
    webhook_env = section.get("webhook_env", str, None)
    raw_command = section.get("command", list, None)
    raw_on = section.get("on", list, list(DEFAULT_NOTIFY_ON))
    timeout = section.get(
        "timeout",
        float,
        Notify.timeout,
        check=lambda v: None if 0 < v <= MAX_NOTIFY_TIMEOUT else "must be in (0, 60]",
    )
    section.done()
    if webhook is not None and webhook_env is not None:
        raise ConfigError(
            "notify.webhook: give notify.webhook or notify.webhook_env (the variable holding the"
            " whole URL), not both"
        )
    if webhook is not None:
        _check_webhook_template(webhook)
    if webhook_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", webhook_env):
        raise ConfigError(
            f"notify.webhook_env: {webhook_env!r} is not a variable name (e.g. IMG1688_WEBHOOK_URL)"
        )
    command = () if raw_command is None else _notify_command(raw_command, base)
    if webhook is None and webhook_env is None and not command:
        raise ConfigError(
            "notify: give notify.webhook (or notify.webhook_env) and/or notify.command,"
            " or leave the [notify] table out"
        )
    events = [_of_type(e, str, "notify.on") for e in raw_on]
    if not events or any(e not in NOTIFY_EVENTS for e in events):
        raise ConfigError(
            f"notify.on: give one or more of {', '.join(NOTIFY_EVENTS)} (got {raw_on!r})"
        )
    on = tuple(event for event in NOTIFY_EVENTS if event in events)
    notify = Notify(webhook, webhook_env, command, on, timeout)
    notify.webhook_url(environ)  # every variable set, and an http(s) URL: before any call
    return notify


def _check_webhook_template(template: str) -> None:
    """Refuse credentials written into the file: a user or password, or a query value, that
    is not a ``${VAR}`` placeholder. A token in the path cannot be told from a path: the docs
    ask for a placeholder there, and the URL is never logged but for its host."""
    if "$" in _PLACEHOLDER.sub("", template):
        raise ConfigError("notify.webhook: write environment variables as ${NAME}")
    try:
        scheme = urlsplit(_PLACEHOLDER.sub("x", template)).scheme
        literal = urlsplit(template)  # placeholders kept, to see which parts are literal
    except ValueError:
        raise ConfigError("notify.webhook: not a URL") from None
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"notify.webhook: must be an http:// or https:// URL (got scheme {scheme!r})"
        )
    userinfo = literal.netloc.rpartition("@")[0]
    if userinfo and _PLACEHOLDER.sub("", userinfo).replace(":", ""):
        raise ConfigError(
            "notify.webhook: a user or password in the URL must come from the environment:"
            " write ${VARIABLE} for it, or the whole URL in the variable notify.webhook_env names"
        )
    for pair in filter(None, literal.query.split("&")):
        value = pair.partition("=")[2]
        if value and not _PLACEHOLDER.fullmatch(value):
            raise ConfigError(
                "notify.webhook: query values may carry tokens, so they must come from the"
                " environment: write them as ${VARIABLE} (e.g. ?token=${HOOK_TOKEN}), or the"
                " whole URL in the variable notify.webhook_env names"
            )


def _notify_command(raw: list[Any], base: Path) -> tuple[str, ...]:
    """The argv of ``notify.command``; its program must exist now, not when a run has ended.
    A program given as a relative path is relative to the job file's folder."""
    argv = [_of_type(arg, str, f"notify.command[{i}]") for i, arg in enumerate(raw)]
    if not argv or not argv[0].strip() or any("\0" in arg for arg in argv):
        raise ConfigError(
            'notify.command: give a program and its arguments, e.g. ["/usr/local/bin/page-me",'
            ' "--team", "data"]'
        )
    program = argv[0]
    if "/" in program:
        program = str(_resolve(base, program, "notify.command[0]"))
    if shutil.which(program) is None:
        raise ConfigError(
            f"notify.command[0]: {argv[0]!r} is not an executable program"
            + ("" if "/" in argv[0] else " found on PATH")
        )
    return (program, *argv[1:])


def _env_value(environ: Mapping[str, str], name: str, key: str) -> str:
    value = environ.get(name)
    if not value:
        raise ConfigError(f"{key}: the environment variable {name} is not set (or empty)")
    return value


# -- validation helpers -------------------------------------------------------------------


@dataclass
class _Section:
    """A TOML table being validated; remembers which keys were read so leftovers are errors."""

    data: Mapping[str, Any]
    prefix: str
    seen: set[str] = field(default_factory=set)

    def section(self, key: str) -> _Section:
        value = self.get(key, dict, {})
        return _Section(value, f"{self.prefix}{key}.")

    @overload
    def get(
        self,
        key: str,
        kind: type[T],
        default: None,
        *,
        required: Literal[True],
        check: Callable[[Any], str | None] | None = None,
    ) -> T: ...
    @overload
    def get(
        self,
        key: str,
        kind: type[T],
        default: None,
        *,
        required: Literal[False] = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> T | None: ...
    @overload
    def get(
        self,
        key: str,
        kind: type[T],
        default: T,
        *,
        required: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> T: ...
    def get(
        self,
        key: str,
        kind: type[T],
        default: T | None,
        *,
        required: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> T | None:
        """The value of ``key`` as a ``kind``, checked by ``check``; ``default`` when absent.

        Raises ConfigError when the value is of the wrong type or fails ``check``, or when
        it is absent and ``required``.
        """
        self.seen.add(key)
        name = self.prefix + key
        if key not in self.data:
            if required:
                raise ConfigError(f"{name}: missing (required)")
            return default
        value = _coerce(self.data[key], kind, name)
        if check is not None and (problem := check(value)):
            raise ConfigError(f"{name}: {problem} (got {self.data[key]!r})")
        return value

    def choice(self, key: str, choices: tuple[S, ...], default: S) -> S:
        """The value of ``key``, which must be one of ``choices``, typed as that choice."""
        value = self.get(key, str, default, check=_one_of(*choices))
        return next(choice for choice in choices if choice == value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            names = ", ".join(self.prefix + k for k in unknown)
            raise ConfigError(f"{names}: unknown key{'s' if len(unknown) > 1 else ''}")


def _coerce(value: Any, kind: type[T], name: str) -> T:
    if kind is float and isinstance(value, float | int) and not isinstance(value, bool):
        # TOML has inf and nan, and integers of any size: neither is a usable setting.
        if isinstance(value, int) and abs(value) > 2**53:
            raise ConfigError(f"{name}: expected a number of usable size, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        # mypy cannot narrow the TypeVar T from `kind is float` (nor Decimal below).
        return float(value)  # type: ignore[return-value]
    if kind is Decimal:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if not number.is_finite():
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        return number  # type: ignore[return-value]
    return _of_type(value, kind, name)


def _of_type(value: Any, kind: type[T], name: str) -> T:
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{name}: expected {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}")
    return value


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


def _resolve(base: Path, text: str, name: str) -> Path:
    if not text.strip() or "\0" in text:
        raise ConfigError(f"{name}: expected a path, got {text!r}")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~user" of no known user
        raise ConfigError(f"{name}: cannot expand {text!r}: no such home directory") from None
    # normpath, not resolve(): '..' goes, but symlinked folders keep the name the user gave.
    return Path(os.path.normpath(base / path))


def _between(low: int, high: int) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def _share(value: float) -> str | None:
    return None if 0 < value < 1 else "must be a share between 0 and 1, e.g. 0.1"


def _price(value: Decimal) -> str | None:
    if value < 0:
        return "must not be negative"
    return None if value < PRICE_LIMIT else f"must be below {PRICE_LIMIT:,} CNY"


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
