"""``img1688 sandbox``: serve the sandbox gateway until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from engine.errors import ConfigError
from engine.protocol import (
    OCEAN_QUERY,
    OCEAN_UPLOAD,
    OPENAPI_PREFIX,
    SEED_PATH,
    TOKEN_PATH,
    ocean_path,
)
from engine.ratelimit import Rate
from engine.sandbox import Faults, Sandbox, SandboxApp, SandboxConfig
from engine.sandbox.catalogue import DEFAULT_CATALOGUE

DEFAULTS = SandboxConfig()


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``img1688 sandbox``."""
    parser = subparsers.add_parser(
        "sandbox",
        help="serve a local stand-in for the 1688 gateway (no credentials needed)",
        description=(
            "Serve a local gateway that speaks both 1688 protocols (ocean and seed) over a "
            "sample catalogue, with a strict rate window, token expiry and optional injected "
            "faults. It prints its base URL and its credentials on start: they are "
            "sandbox-only credentials, valid for this server alone, so printing them is safe."
        ),
    )
    parser.add_argument("--host", default=DEFAULTS.host, help="address to listen on")
    parser.add_argument("--port", type=int, default=8688, help="port (0 picks a free one)")
    parser.add_argument(
        "--catalogue",
        type=Path,
        default=DEFAULT_CATALOGUE,
        help="catalogue directory: catalogue.json and the images it names (several offers may"
        " share one image); reloaded when catalogue.json changes",
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        default=DEFAULTS.rate,
        help="calls allowed per sliding window, e.g. 10/60s (default %(default)s)",
    )
    parser.add_argument("--app-key", default=DEFAULTS.app_key)
    parser.add_argument("--app-secret", default=DEFAULTS.app_secret)
    parser.add_argument("--access-token", default=DEFAULTS.access_token)
    parser.add_argument("--refresh-token", default=DEFAULTS.refresh_token)
    parser.add_argument(
        "--extra-app",
        action="append",
        type=_extra_app,
        default=[],
        metavar="KEY:SECRET:TOKEN[:REFRESH]",
        help="one more app the sandbox knows, with its own rate window, token and usage"
        " (repeatable; the parts cannot contain ':')",
    )
    parser.add_argument(
        "--token-ttl",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="access token lifetime (default: never expires)",
    )
    parser.add_argument(
        "--allow-ip",
        nargs="+",
        default=[],
        metavar="IP",
        help="only these client IPs may call (default: any)",
    )
    parser.add_argument(
        "--deny-api",
        nargs="+",
        default=[],
        metavar="NAME",
        help=f"answer these APIs with an ACL decline, e.g. {OCEAN_QUERY}",
    )
    parser.add_argument(
        "--usage-limit", type=int, default=None, metavar="N", help="calls before no usage is left"
    )
    faults = parser.add_argument_group("injected faults (shares of admitted calls, 0 to 1)")
    faults.add_argument("--fault-5xx", type=_share, default=0.0, metavar="SHARE")
    faults.add_argument("--fault-slow", type=_share, default=0.0, metavar="SHARE")
    faults.add_argument("--slow-seconds", type=_positive, default=2.0, metavar="S")
    faults.add_argument("--fault-malformed", type=_share, default=0.0, metavar="SHARE")
    faults.add_argument("--fault-drop", type=_share, default=0.0, metavar="SHARE")
    faults.add_argument("--fault-rate-limit", type=_share, default=0.0, metavar="SHARE")
    faults.add_argument("--fault-busy", type=_share, default=0.0, metavar="SHARE")
    faults.add_argument("--fault-seed", type=int, default=0, metavar="N")
    parser.set_defaults(func=handle)


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """The :class:`SandboxConfig` the parsed flags describe. Raises ``ValueError`` if they
    contradict each other (fault shares summing over 1, an app key given twice)."""
    return SandboxConfig(
        host=args.host,
        port=args.port,
        catalogue_dir=args.catalogue,
        rate=args.rate,
        app_key=args.app_key,
        app_secret=args.app_secret,
        access_token=args.access_token,
        refresh_token=args.refresh_token,
        extra_apps=tuple(args.extra_app),
        token_ttl=args.token_ttl,
        allow_ips=tuple(args.allow_ip),
        deny_apis=tuple(args.deny_api),
        usage_limit=args.usage_limit,
        faults=Faults(
            error_5xx=args.fault_5xx,
            slow=args.fault_slow,
            slow_seconds=args.slow_seconds,
            malformed=args.fault_malformed,
            drop=args.fault_drop,
            spurious_rate_limit=args.fault_rate_limit,
            busy=args.fault_busy,
            seed=args.fault_seed,
        ),
    )


def handle(args: argparse.Namespace) -> int:
    """Serve until interrupted; exit code 0 on Ctrl-C, 2 on bad settings."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"img1688 sandbox: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config))
    except KeyboardInterrupt:
        pass
    except (ConfigError, ValueError) as exc:  # no numpy, or the catalogue is unreadable
        print(f"img1688 sandbox: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"img1688 sandbox: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr
        )
        return 1
    print("sandbox stopped", flush=True)
    return 0


async def _serve(config: SandboxConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Where the loop cannot take signals, Ctrl-C still raises KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with Sandbox(config) as sandbox:
        print(_banner(sandbox), flush=True)
        await stop.wait()


def _banner(sandbox: Sandbox) -> str:
    config = sandbox.config
    base = sandbox.url
    openapi = f"{base}{OPENAPI_PREFIX}"
    key = config.app_key
    lines = [
        f"img1688 sandbox listening on {base}",
        "sandbox-only credentials (valid for this server alone):",
        f"  app key       {config.app_key}",
        f"  app secret    {config.app_secret}",
        f"  access token  {config.access_token}",
        f"  refresh token {config.refresh_token}",
        *(
            f"  extra app     {app.app_key}  secret {app.app_secret}  token {app.access_token}"
            + (f"  refresh {app.refresh_token}" if app.refresh_token else "")
            for app in config.extra_apps
        ),
        f"rate limit {config.rate} per app key; stats at {base}/__sandbox__/stats",
        "endpoints:",
        f"  ocean upload  POST {openapi}{ocean_path(OCEAN_UPLOAD, key)}",
        f"  ocean query   POST {openapi}{ocean_path(OCEAN_QUERY, key)}",
        f"  ocean token   POST {openapi}{TOKEN_PATH}/{key}",
        f"  seed search   POST {openapi}{SEED_PATH}",
        f"  offer images  GET  {base}/img/ibank/O1CN01<offerId>.jpg (or ..._<W>x<H>.jpg)",
        f"catalogue {config.catalogue_dir}: reloaded when its catalogue.json changes,"
        f" or on POST {base}/__sandbox__/reload",
        "press Ctrl-C to stop",
    ]
    return "\n".join(lines)


def _rate(text: str) -> Rate:
    try:
        return Rate.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _extra_app(text: str) -> SandboxApp:
    parts = text.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise argparse.ArgumentTypeError(
            "--extra-app takes KEY:SECRET:TOKEN or KEY:SECRET:TOKEN:REFRESH, no part empty"
        )
    key, secret, token, *refresh = parts
    return SandboxApp(key, secret, token, refresh[0] if refresh else None)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value
