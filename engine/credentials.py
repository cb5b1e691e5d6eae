"""App credentials and the access-token store.

Credentials come from environment variables or a TOML file, the environment winning key by key:

=========================  ==================
environment variable       file key
=========================  ==================
``IMG1688_APP_KEY``        ``app_key``
``IMG1688_APP_SECRET``     ``app_secret``
``IMG1688_ACCESS_TOKEN``   ``access_token``
``IMG1688_REFRESH_TOKEN``  ``refresh_token``
=========================  ==================

The file is ``file`` if given, else ``$IMG1688_CREDENTIALS``, else
``~/.config/img1688/credentials.toml`` when it exists.

Access tokens last 10 hours; a refreshed one is kept in the :class:`TokenStore`, a JSON file of
mode 0600 (``$IMG1688_TOKEN_FILE``, else ``~/.config/img1688/tokens.json``), so the next run
starts with it instead of the stale token in the environment.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError

log = logging.getLogger(__name__)

FIELDS: dict[str, str] = {
    "app_key": "IMG1688_APP_KEY",
    "app_secret": "IMG1688_APP_SECRET",
    "access_token": "IMG1688_ACCESS_TOKEN",
    "refresh_token": "IMG1688_REFRESH_TOKEN",
}
"""Credential field -> the environment variable that sets it."""

CREDENTIALS_ENV = "IMG1688_CREDENTIALS"
TOKEN_FILE_ENV = "IMG1688_TOKEN_FILE"


def _mask(value: str | None) -> str:
    return "None" if value is None else "'***'"


@dataclass(frozen=True)
class Credentials:
    """What the gateway needs to know who is calling. Only ``app_key`` is shown by ``repr``."""

    app_key: str
    app_secret: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"Credentials(app_key={self.app_key!r}, app_secret='***', "
            f"access_token={_mask(self.access_token)}, "
            f"refresh_token={_mask(self.refresh_token)})"
        )

    def secrets(self) -> tuple[str, ...]:
        """The values that must never be shown, for :func:`engine.errors.redact`."""
        return tuple(s for s in (self.app_secret, self.access_token, self.refresh_token) if s)


def _config_dir(environ: Mapping[str, str]) -> Path:
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    return home / ".config" / "img1688"


def _credentials_file(environ: Mapping[str, str], file: Path | None) -> Path | None:
    if file is not None:
        return file
    if environ.get(CREDENTIALS_ENV):
        return Path(environ[CREDENTIALS_ENV])
    default = _config_dir(environ) / "credentials.toml"
    return default if default.exists() else None


def _warn_if_shared(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "%s is readable by other users (mode %o): run `chmod 600 %s`",
            path,
            stat.S_IMODE(mode),
            path,
        )


def _read_credentials_file(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"credentials file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"credentials file {path} cannot be read: {type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        # The decoder's message quotes positions, not values: safe to show.
        raise ConfigError(f"credentials file {path} is not valid TOML: {exc}") from None
    _warn_if_shared(path)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"credentials file {path}: unknown key(s) {', '.join(unknown)}; "
            f"expected {', '.join(FIELDS)}"
        )
    values: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"credentials file {path}: {key} must be a string")
        if value:
            values[key] = value
    return values


def load_credentials(
    environ: Mapping[str, str] = os.environ, file: Path | None = None
) -> Credentials:
    """Gather the credentials from ``environ`` and the credentials file (see the module doc).

    Raises:
        ConfigError: the app key or secret is missing (the message names the variables and the
            file that were consulted, never a value), or the file is unreadable or malformed.
    """
    path = _credentials_file(environ, file)
    values = _read_credentials_file(path) if path is not None else {}
    for key, variable in FIELDS.items():
        if environ.get(variable):
            values[key] = environ[variable]
    missing = [f"{FIELDS[key]} / {key}" for key in ("app_key", "app_secret") if key not in values]
    if missing:
        where = f"the environment and {path}" if path else "the environment (no credentials file)"
        raise ConfigError(f"missing {' and '.join(missing)}: looked in {where}")
    return Credentials(
        app_key=values["app_key"],
        app_secret=values["app_secret"],
        access_token=values.get("access_token"),
        refresh_token=values.get("refresh_token"),
    )


@dataclass(frozen=True)
class StoredToken:
    """A token pair as kept by the :class:`TokenStore`. ``repr`` hides both tokens."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float | None
    """Epoch seconds after which the access token is no longer valid, when known."""

    def valid(self, now: float | None = None) -> bool:
        """Whether the access token is not known to have expired."""
        return (
            self.expires_at is None or (now if now is not None else time.time()) < self.expires_at
        )


class TokenStore:
    """Access tokens by app key, in a JSON file that only its owner may read (mode 0600).

    Writes are atomic: a temp file created 0600, fsynced, then renamed over the store.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def default(cls, environ: Mapping[str, str] = os.environ) -> TokenStore:
        """The store at ``$IMG1688_TOKEN_FILE``, else ``~/.config/img1688/tokens.json``."""
        if environ.get(TOKEN_FILE_ENV):
            return cls(Path(environ[TOKEN_FILE_ENV]))
        return cls(_config_dir(environ) / "tokens.json")

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r})"

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("token store %s is unreadable (%s): ignoring it", self.path, exc)
            return {}
        if not isinstance(data, dict):
            log.warning("token store %s is not a JSON object: ignoring it", self.path)
            return {}
        return data

    def load(self, app_key: str) -> StoredToken | None:
        """The token stored for ``app_key``, or ``None`` if there is none (or it is malformed)."""
        entry = self._read().get(app_key)
        if not isinstance(entry, dict) or not isinstance(entry.get("access_token"), str):
            return None
        refresh = entry.get("refresh_token")
        expires = entry.get("expires_at")
        return StoredToken(
            access_token=entry["access_token"],
            refresh_token=refresh if isinstance(refresh, str) else None,
            expires_at=float(expires) if isinstance(expires, int | float) else None,
        )

    def save(
        self,
        app_key: str,
        access_token: str,
        refresh_token: str | None,
        expires_at: float | None,
    ) -> None:
        """Store the token pair of ``app_key``, keeping the other app keys' entries."""
        data = self._read()
        data[app_key] = {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "expires_at": expires_at,
        }
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=2, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            # A leftover temp file from a crash may carry a wider mode: O_CREAT keeps it.
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        os.chmod(self.path, 0o600)
