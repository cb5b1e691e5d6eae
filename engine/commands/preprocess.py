"""``img1688 preprocess``: show what would be sent to the gateway for each photo, and why not.

Runs the same preparation as a job (:mod:`engine.preprocess` in an :mod:`engine.pool` pool)
without calling the gateway. Inputs are found as a job finds them (:mod:`engine.discover`):
directories walked recursively for image extensions, files named explicitly always tried.
``--out DIR`` keeps the JPEGs (original stem + ``.jpg``, relative structure kept). Exit status 0
when it ran, whatever each file's outcome; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from engine.preprocess import (
    PHOTO_EXTENSIONS,
    Prepared,
    PreparedImage,
    PreprocessFailure,
    PreprocessOptions,
)

# asyncio, discovery (the job file's inputs) and the pool are imported where they are used:
# other commands build this parser without loading them.

_DEFAULTS = PreprocessOptions()


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``preprocess``."""
    parser = subparsers.add_parser(
        "preprocess",
        help="show what each photo becomes before it is sent (no gateway call)",
        description=(
            "Prepare photos exactly as a job would and show, per file, the JPEG that would be "
            "sent (size, bytes, quality, steps) or why it cannot be. Directories are walked "
            "recursively for " + ", ".join(PHOTO_EXTENSIONS) + "."
        ),
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_DIR")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write the prepared JPEGs here")
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per file on stdout (the summary goes to stderr)",
    )
    parser.add_argument(
        "--max-side",
        type=_positive_int,
        default=_DEFAULTS.max_side,
        metavar="N",
        help="longest side in pixels (default %(default)s)",
    )
    parser.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=_DEFAULTS.max_bytes,
        metavar="N",
        help="largest JPEG in bytes (default %(default)s)",
    )
    parser.add_argument(
        "--quality",
        type=_quality,
        default=_DEFAULTS.quality,
        metavar="N",
        help="JPEG quality tried first, 1-100 (default %(default)s)",
    )
    parser.add_argument(
        "--trim-border", action="store_true", help="crop a uniform background around the product"
    )
    parser.add_argument("--autocontrast", action="store_true", help="mild automatic contrast")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare every photo named or found under ``args.paths`` and report each outcome."""
    missing = [path for path in args.paths if not path.exists()]
    if missing:
        _usage_error(f"no such file or directory: {missing[0]}")
        return 2
    options = PreprocessOptions(
        max_side=args.max_side,
        max_bytes=args.max_bytes,
        quality=args.quality,
        min_quality=min(_DEFAULTS.min_quality, args.quality),
        trim_border=args.trim_border,
        autocontrast=args.autocontrast,
    )
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _usage_error(f"cannot create --out {args.out}: {exc.strerror or exc}")
            return 2
    import asyncio

    return asyncio.run(_main(args.paths, options, args.out, args.json))


async def _main(
    paths: list[Path], options: PreprocessOptions, out: Path | None, as_json: bool
) -> int:
    from engine.discover import DiscoveryReport, discover
    from engine.jobfile import Inputs

    report = DiscoveryReport()
    found: list[tuple[Path, Path]] = []
    for root in paths:
        # One root at a time: names under --out are relative to the root they were found in.
        async for candidate in discover(Inputs(paths=(root,)), report):
            path = Path(candidate.path)  # local inputs only: a Path
            relative = path.relative_to(root) if root.is_dir() else Path(root.name)
            found.append((path, relative))
    for problem in report.unreadable:
        print(f"skipped (unreadable): {problem}", file=sys.stderr)
    return await _prepare_all(list(_output_names(found)), options, out, as_json)


def _output_names(jobs: Iterable[tuple[Path, Path]]) -> Iterator[tuple[Path, Path]]:
    """Turn each relative name into a unique ``.jpg`` name (``a.png`` and ``a.jpg`` both exist)."""
    taken: set[Path] = set()
    for path, relative in jobs:
        name = relative.with_suffix(".jpg")
        if name in taken:
            name = relative.with_name(relative.name + ".jpg")
        counter = 2
        while name in taken:
            name = relative.with_name(f"{relative.stem}-{counter}.jpg")
            counter += 1
        taken.add(name)
        yield path, name


async def _prepare_all(
    jobs: list[tuple[Path, Path]], options: PreprocessOptions, out: Path | None, as_json: bool
) -> int:
    import asyncio

    from engine.pool import PreprocessPool

    outcomes: Counter[str] = Counter()
    write_errors = 0
    async with PreprocessPool(options=options) as pool:
        # The pool bounds the work in flight; tasks only queue. Reported in input order.
        tasks = [asyncio.create_task(pool.prepare(path)) for path, _ in jobs]
        for (path, name), task in zip(jobs, tasks, strict=True):
            result = await task
            outcomes["ok" if isinstance(result, PreparedImage) else result.reason] += 1
            written: Path | None = None
            if out is not None and isinstance(result, PreparedImage):
                written = out / name
                try:
                    written.parent.mkdir(parents=True, exist_ok=True)
                    written.write_bytes(result.jpeg)
                except OSError as exc:
                    print(f"cannot write {written}: {exc.strerror or exc}", file=sys.stderr)
                    written = None
                    write_errors += 1
            print(_render(path, result, written, as_json), flush=True)
    print(_summary(outcomes), file=sys.stderr if as_json else sys.stdout)
    return 1 if write_errors else 0


def _render(path: Path, result: Prepared, written: Path | None, as_json: bool) -> str:
    if as_json:
        record: dict[str, object] = {"path": str(path), "ok": result.ok}
        if isinstance(result, PreparedImage):
            record |= {
                "width": result.width,
                "height": result.height,
                "bytes": len(result.jpeg),
                "quality": result.quality,
                "steps": list(result.steps),
                "sha256": result.sha256,
                "source_format": result.source_format,
                "source_mode": result.source_mode,
                "source_size": list(result.source_size),
                "source_bytes": result.source_bytes,
                "elapsed_ms": result.elapsed_ms,
                "out": str(written) if written else None,
            }
        else:
            record |= {"reason": result.reason, "message": result.message, "sha256": result.sha256}
        return json.dumps(record, ensure_ascii=False)
    if isinstance(result, PreprocessFailure):
        return f"FAIL  {path}  {result.reason}: {result.message}"
    steps = ", ".join(result.steps) or "as is"
    line = (
        f"ok    {path}  {result.width}x{result.height}  {len(result.jpeg):,} B  "
        f"q{result.quality}  {steps}"
    )
    return f"{line}  -> {written}" if written else line


def _summary(outcomes: Counter[str]) -> str:
    ok = outcomes.pop("ok", 0)
    failed = sum(outcomes.values())
    detail = ", ".join(f"{reason} {count}" for reason, count in sorted(outcomes.items()))
    return f"{ok} ok, {failed} failed" + (f" ({detail})" if detail else "")


def _usage_error(message: str) -> None:
    print(f"img1688 preprocess: error: {message}", file=sys.stderr)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _quality(text: str) -> int:
    value = _positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be at most 100, got {value}")
    return value
