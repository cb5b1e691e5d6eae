"""Job files: what to search, where to write, how to behave. Validated whole before any call.

A job file is TOML. Relative paths are relative to the job file's folder. Credentials never
come from a job file (see :mod:`engine.credentials`). Every key is checked: an unknown key or
a bad value is a :class:`~engine.errors.ConfigError` that names the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from engine.clean import WholesaleFilters
from engine.client import RetryPolicy, SearchFilters
from engine.errors import ConfigError
from engine.preprocess import PreprocessOptions
from engine.protocol import PROTOCOLS, ProtocolName
from engine.ratelimit import Rate

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff")
SANDBOX = "sandbox"

T = TypeVar("T")


@dataclass(frozen=True)
class Inputs:
    paths: tuple[Path, ...]
    recursive: bool = True
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = True


@dataclass(frozen=True)
class Gateway:
    protocol: ProtocolName = "ocean"
    endpoint: str = SANDBOX
    rate: Rate = Rate(10, 60.0)
    page_size: int = 20
    retry: RetryPolicy = RetryPolicy()


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


@dataclass(frozen=True)
class Job:
    name: str
    source: Path | None
    inputs: Inputs
    out: Path
    gateway: Gateway
    filters: WholesaleFilters = WholesaleFilters()
    preprocess: PreprocessOptions = PreprocessOptions()
    engine: Engine = Engine()
    limit: int | None = None
    max_calls: int | None = None
    zstd_level: int = 6

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

    def request_key(self) -> dict[str, object]:
        """Everything that changes what the gateway answers for one image.

        Stored answers are reused only under the same key.
        """
        filters = self.filters.fingerprint()
        return {
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

    def fingerprint(self) -> dict[str, object]:
        """The result-changing parts of the job: a run resumes only under the same fingerprint."""
        return {"request": self.request_key(), "filters": self.filters.fingerprint()}

    def with_overrides(
        self,
        *,
        out: Path | None = None,
        limit: int | None = None,
        max_calls: int | None = None,
        rate: Rate | None = None,
    ) -> Job:
        job = self
        if out is not None:
            job = replace(job, out=out)
        if limit is not None:
            job = replace(job, limit=limit)
        if max_calls is not None:
            job = replace(job, max_calls=max_calls)
        if rate is not None:
            job = replace(job, gateway=replace(job.gateway, rate=rate))
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
) -> Job:
    """Validate a job mapping (as read from TOML). Relative paths resolve against ``base``."""
    top = _Section(data, "")
    job_section = top.section("job")
    inputs_section = top.section("inputs")
    output_section = top.section("output")
    gateway_section = top.section("gateway")
    filters_section = top.section("filters")
    preprocess_section = top.section("preprocess")
    engine_section = top.section("engine")
    top.done()

    name = job_section.get("name", str, default_name)
    job_section.done()

    raw_paths = inputs_section.get("paths", list, None)
    if not raw_paths:
        raise ConfigError("inputs.paths: give at least one folder or file to search")
    paths = tuple(
        _resolve(base, _of_type(p, str, f"inputs.paths[{i}]")) for i, p in enumerate(raw_paths)
    )
    extensions = tuple(
        _of_type(e, str, "inputs.extensions").lower().lstrip(".")
        for e in inputs_section.get("extensions", list, list(DEFAULT_EXTENSIONS))
    )
    inputs = Inputs(
        paths=paths,
        recursive=inputs_section.get("recursive", bool, True),
        extensions=extensions,
        exclude=tuple(
            _of_type(g, str, "inputs.exclude") for g in inputs_section.get("exclude", list, [])
        ),
        follow_symlinks=inputs_section.get("follow_symlinks", bool, True),
    )
    inputs_section.done()

    out = _resolve(base, output_section.get("dir", str, None, required=True))
    zstd_level = output_section.get("zstd_level", int, 6, check=_between(1, 22))
    output_section.done()

    gateway = _parse_gateway(gateway_section)
    filters = _parse_filters(filters_section)
    preprocess = _parse_preprocess(preprocess_section)
    engine = _parse_engine(engine_section)
    job = Job(
        name=name,
        source=source,
        inputs=inputs,
        out=out,
        gateway=gateway,
        filters=filters,
        preprocess=preprocess,
        engine=engine,
        zstd_level=zstd_level,
    )
    try:
        job.search_filters  # noqa: B018 - validates the server-side view of the filters
    except ValueError as exc:
        raise ConfigError(f"filters: {exc}") from None
    return job


def _parse_gateway(section: _Section) -> Gateway:
    protocol = section.get("protocol", str, "ocean", check=_one_of(*PROTOCOLS))
    endpoint = section.get("endpoint", str, SANDBOX)
    if endpoint != SANDBOX and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"gateway.endpoint: {endpoint!r} is neither 'sandbox' nor an http(s) URL")
    rate_text = section.get("rate", str, "10/60s")
    try:
        rate = Rate.parse(rate_text)
    except ValueError as exc:
        raise ConfigError(f"gateway.rate: {exc}") from None
    defaults = RetryPolicy()
    try:
        retry = RetryPolicy(
            attempts=section.get("attempts", int, defaults.attempts, check=_between(1, 100)),
            base_delay=section.get("backoff_base", float, defaults.base_delay, check=_positive),
            max_delay=section.get("backoff_max", float, defaults.max_delay, check=_positive),
            timeout=section.get("timeout", float, defaults.timeout, check=_positive),
        )
    except ValueError as exc:
        raise ConfigError(f"gateway: {exc}") from None
    page_size = section.get("page_size", int, 20, check=_between(1, 50))
    section.done()
    return Gateway(
        protocol=protocol,  # type: ignore[arg-type]  # checked by _one_of above
        endpoint=endpoint.rstrip("/"),
        rate=rate,
        page_size=page_size,
        retry=retry,
    )


def _parse_filters(section: _Section) -> WholesaleFilters:
    price_min = section.get("price_min", Decimal, None, check=_non_negative)
    price_max = section.get("price_max", Decimal, None, check=_non_negative)
    moq_min = section.get("moq_min", int, None, check=_between(1, 10**9))
    moq_max = section.get("moq_max", int, None, check=_between(1, 10**9))
    freight = section.get("freight", str, "all", check=_one_of("all", "free", "paid"))
    section.done()
    if price_min is not None and price_max is not None and price_min > price_max:
        raise ConfigError("filters.price_min: must not exceed filters.price_max")
    if moq_min is not None and moq_max is not None and moq_min > moq_max:
        raise ConfigError("filters.moq_min: must not exceed filters.moq_max")
    return WholesaleFilters(
        price_min=price_min,
        price_max=price_max,
        moq_min=moq_min,
        moq_max=moq_max,
        freight=freight,  # type: ignore[arg-type]
    )


def _parse_preprocess(section: _Section) -> PreprocessOptions:
    d = PreprocessOptions()
    options = PreprocessOptions(
        max_side=section.get("max_side", int, d.max_side, check=_between(64, 10_000)),
        max_bytes=section.get("max_bytes", int, d.max_bytes, check=_between(10_000, 10**8)),
        quality=section.get("quality", int, d.quality, check=_between(20, 100)),
        min_quality=section.get("min_quality", int, d.min_quality, check=_between(10, 100)),
        trim_border=section.get("trim_border", bool, d.trim_border),
        autocontrast=section.get("autocontrast", bool, d.autocontrast),
        max_pixels=section.get("max_pixels", int, d.max_pixels, check=_between(1, 10**10)),
        max_input_bytes=section.get(
            "max_input_bytes", int, d.max_input_bytes, check=_between(1, 10**11)
        ),
        timeout=section.get("timeout", float, d.timeout, check=_positive),
    )
    section.done()
    if options.min_quality > options.quality:
        raise ConfigError("preprocess.min_quality: must not exceed preprocess.quality")
    return options


def _parse_engine(section: _Section) -> Engine:
    d = Engine()
    engine = Engine(
        searches=section.get("searches", int, d.searches, check=_between(1, 256)),
        preprocess_workers=section.get("preprocess_workers", int, None, check=_between(1, 256)),
        queue_size=section.get("queue_size", int, d.queue_size, check=_between(1, 100_000)),
        part_images=section.get("part_images", int, d.part_images, check=_between(1, 10**6)),
        flush_seconds=section.get("flush_seconds", float, d.flush_seconds, check=_positive),
        reuse_ttl_days=section.get("reuse_ttl_days", float, d.reuse_ttl_days, check=_non_negative),
        max_consecutive_failures=section.get(
            "max_consecutive_failures", int, d.max_consecutive_failures, check=_between(1, 10**6)
        ),
    )
    section.done()
    return engine


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

    def get(
        self,
        key: str,
        kind: type[T],
        default: T | None,
        *,
        required: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        self.seen.add(key)
        name = self.prefix + key
        if key not in self.data:
            if required:
                raise ConfigError(f"{name}: missing (required)")
            return default  # type: ignore[return-value]
        value = _coerce(self.data[key], kind, name)
        if check is not None and (problem := check(value)):
            raise ConfigError(f"{name}: {problem} (got {self.data[key]!r})")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            names = ", ".join(self.prefix + k for k in unknown)
            raise ConfigError(f"{names}: unknown key{'s' if len(unknown) > 1 else ''}")


def _coerce(value: Any, kind: type[T], name: str) -> T:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
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


def _resolve(base: Path, text: str) -> Path:
    # normpath, not resolve(): '..' goes, but symlinked folders keep the name the user gave.
    return Path(os.path.normpath(base / Path(text).expanduser()))


def _between(low: int, high: int) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def _non_negative(value: float | Decimal) -> str | None:
    return None if value >= 0 else "must not be negative"
