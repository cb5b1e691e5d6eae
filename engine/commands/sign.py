"""``img1688 sign``: print the signature of given parameters, to debug signature errors.

``img1688 sign ocean --secret S --path param2/1/system/currentTime/1000000 b=2 a=1`` prints
the ``_aop_signature``; ``img1688 sign seed --secret S key=value ...`` prints the ``sign``.
Each pair is split at its first ``=``, so values may contain ``=``. ``--show-base-string``
also prints the exact string that was hashed, with the secret shown as ``<secret>``.
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

from engine.signing import (
    OCEAN_SIGNATURE_PARAM,
    SEED_SIGNATURE_PARAM,
    ocean_signature,
    seed_signature,
)

SECRET_ENV = "IMG1688_APP_SECRET"
SECRET_MARK = "<secret>"


class UsageError(ValueError):
    """A malformed command line; the message is shown as is, with exit status 2."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sign ocean`` and ``sign seed``."""
    parser = subparsers.add_parser(
        "sign",
        help="print the signature of given parameters",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--secret", help=f"the app secret (default: ${SECRET_ENV}, which keeps it out of ps)"
    )
    common.add_argument(
        "--show-base-string",
        action="store_true",
        help="also print the exact string that was hashed, the secret shown as <secret>",
    )
    common.add_argument("pairs", nargs="*", metavar="key=value", help="the parameters sent")
    # One subparser per protocol, so that options may sit between it and the pairs.
    protocols = parser.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    ocean = protocols.add_parser("ocean", parents=[common], help="the official gateway")
    ocean.add_argument(
        "--path",
        required=True,
        help="the url path, e.g. param2/1/system/currentTime/1000000 ('/' or 'openapi/' "
        "in front is dropped)",
    )
    protocols.add_parser("seed", parents=[common], help="the TOP-style protocol")
    parser.set_defaults(func=handle)


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """``key=value`` strings -> a mapping, split at the first ``=``."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"parameter {pair!r} is not of the form key=value")
        if key in params:
            raise UsageError(f"parameter {key!r} is given twice")
        params[key] = value
    return params


def normalise_path(path: str) -> str:
    """The signed form of an ocean url path: no scheme or host, no ``/``, no ``openapi/``."""
    signed = urlsplit(path).path if "://" in path else path
    signed = signed.lstrip("/")
    if signed.startswith("openapi/"):
        signed = signed[len("openapi/") :]
    return signed


def ocean_base_string(url_path: str, params: dict[str, str]) -> str:
    """The message HMAC-SHA1 signs, keyed with the secret (which the message leaves out)."""
    pieces = sorted(k + v for k, v in params.items() if k != OCEAN_SIGNATURE_PARAM)
    return url_path + "".join(pieces)


def seed_base_string(params: dict[str, str], secret: str = SECRET_MARK) -> str:
    """The string MD5 hashes: the pairs sorted by key, between two copies of ``secret``."""
    body = "".join(k + params[k] for k in sorted(params) if k != SEED_SIGNATURE_PARAM)
    return secret + body + secret


def _sign(args: argparse.Namespace) -> tuple[str, str]:
    """The signature, and the line that describes its base string."""
    secret = args.secret if args.secret is not None else os.environ.get(SECRET_ENV)
    if not secret:
        raise UsageError(f"no secret: pass --secret or set {SECRET_ENV}")
    params = parse_pairs(args.pairs)
    if args.protocol == "seed":
        skipped = SEED_SIGNATURE_PARAM
        signature = seed_signature(params, secret)
        shown = f"base string (MD5): {seed_base_string(params)}"
    else:
        path = normalise_path(args.path)
        if path != args.path:
            print(f"note: signing the url path as {path!r}", file=sys.stderr)
        skipped = OCEAN_SIGNATURE_PARAM
        signature = ocean_signature(path, params, secret)
        shown = (
            f"base string (HMAC-SHA1 keyed with {SECRET_MARK}): {ocean_base_string(path, params)}"
        )
    if skipped in params:
        print(f"note: {skipped} is the signature itself and is not signed", file=sys.stderr)
    return signature, shown


def handle(args: argparse.Namespace) -> int:
    """Print the signature (and the base string when asked); 2 on a malformed command line."""
    try:
        signature, shown = _sign(args)
    except UsageError as exc:
        print(f"img1688 sign: {exc}", file=sys.stderr)
        return 2
    print(signature)
    if args.show_base_string:
        print(shown)
    return 0
