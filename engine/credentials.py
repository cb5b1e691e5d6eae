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

A file may instead list several apps, one ``[[app]]`` table each (``app[0]`` is the first),
with the same four keys; a job then spreads its searches over them (:func:`load_apps`). The
environment gives exactly one app, so it cannot be combined with such a file: a credential
variable set beside ``[[app]]`` tables is an error rather than silently ignored.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError
from engine.lock import exclusive
from engine.storage import write_atomic

log = logging.getLogger(__name__)

FIELDS: dict[str, str] = {
    "app_key": "IMG1688_APP_KEY",
    "app_secret": "IMG1688_APP_SECRET",
    "access_token": "IMG1688_ACCESS_TOKEN",
    "refresh_token": "IMG1688_REFRESH_TOKEN",
}
"""Credential field -> the environment variable that sets it."""

APP_TABLES = "app"
"""The key of the ``[[app]]`` tables of a file that lists several apps."""
REQUIRED = ("app_key", "app_secret")

CREDENTIALS_ENV = "IMG1688_CREDENTIALS"
TOKEN_FILE_ENV = "IMG1688_TOKEN_FILE"


def _mask(value: str | None) -> str:
    return "None" if value is None else "'***'"


def mask_key(app_key: str) -> str:
    """An app key as logs about several apps show it: its first and last two characters, enough
    to tell one's apps apart (``"app-5521"`` -> ``"ap***21"``); a short key is all masked."""
    return f"{app_key[:2]}***{app_key[-2:]}" if len(app_key) > 6 else "***"


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

    @property
    def masked_key(self) -> str:
        """The app key masked for logs (see :func:`mask_key`)."""
        return mask_key(self.app_key)

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


def _read_credentials_file(path: Path) -> dict[str, object]:
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
    return data


def _app_values(data: Mapping[str, object], where: str) -> dict[str, str]:
    """The non-empty credential values of one app's table; ``where`` prefixes every error."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}unknown key(s) {', '.join(unknown)}; expected {', '.join(FIELDS)}"
        )
    values: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}{key} must be a string")
        if value:
            values[key] = value
    return values


def _credentials(values: Mapping[str, str]) -> Credentials:
    return Credentials(
        app_key=values["app_key"],
        app_secret=values["app_secret"],
        access_token=values.get("access_token"),
        refresh_token=values.get("refresh_token"),
    )


def _apps_from_tables(path: Path, tables: object) -> tuple[Credentials, ...]:
    """The apps of a file's ``[[app]]`` tables, each validated; errors name ``app[i]`` and the
    key, never a value."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"credentials file {path}: {APP_TABLES} must be [[app]] tables")
    if not tables:
        raise ConfigError(f"credentials file {path}: {APP_TABLES} lists no app")
    apps: list[Credentials] = []
    first_of: dict[str, int] = {}
    for index, table in enumerate(tables):
        where = f"credentials file {path}: app[{index}]: "
        values = _app_values(table, where)
        missing = [key for key in REQUIRED if key not in values]
        if missing:
            raise ConfigError(f"{where}missing {' and '.join(missing)}")
        earlier = first_of.setdefault(values["app_key"], index)
        if earlier != index:
            raise ConfigError(f"{where}app_key is the same as app[{earlier}]'s: list each app once")
        apps.append(_credentials(values))
    return tuple(apps)


def load_apps(
    environ: Mapping[str, str] = os.environ, file: Path | None = None
) -> tuple[Credentials, ...]:
    """Every app to call with: the ``[[app]]`` tables of the credentials file, in file order,
    or else the one app of the environment and the file's flat keys (see the module doc).

    Raises:
        ConfigError: an app key or secret is missing (the message names the variables, the
            table and the file consulted, never a value); the file is unreadable or malformed
            (an unknown key, a value that is not a string, flat keys beside ``[[app]]`` tables,
            the same app key twice); or a credential variable is set beside ``[[app]]`` tables.
    """
    path = _credentials_file(environ, file)
    data = _read_credentials_file(path) if path is not None else {}
    if path is not None and APP_TABLES in data:
        flat = sorted(set(data) - {APP_TABLES})
        if flat:
            raise ConfigError(
                f"credentials file {path}: {', '.join(flat)} beside [[app]] tables; put every "
                "app's keys in its own [[app]] table"
            )
        variables = [variable for variable in FIELDS.values() if environ.get(variable)]
        if variables:
            raise ConfigError(
                f"{', '.join(variables)} set, but the credentials file {path} lists its apps as "
                "[[app]] tables: give each app's credentials in its table, or unset the variables"
            )
        return _apps_from_tables(path, data[APP_TABLES])
    values = _app_values(data, f"credentials file {path}: ") if path is not None else {}
    for key, variable in FIELDS.items():
        if environ.get(variable):
            values[key] = environ[variable]
    missing = [f"{FIELDS[key]} / {key}" for key in REQUIRED if key not in values]
    if missing:
        where = f"the environment and {path}" if path else "the environment (no credentials file)"
        raise ConfigError(f"missing {' and '.join(missing)}: looked in {where}")
    return (_credentials(values),)


def load_credentials(
    environ: Mapping[str, str] = os.environ, file: Path | None = None
) -> Credentials:
    """The one app of the environment and the credentials file (see :func:`load_apps`).

    Raises:
        ConfigError: as :func:`load_apps`, or the file lists more than one app.
    """
    apps = load_apps(environ, file)
    if len(apps) > 1:
        raise ConfigError(f"the credentials file lists {len(apps)} apps where one is needed")
    return apps[0]


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

    Writes are atomic (:func:`engine.storage.write_atomic`, the temporary created 0600) and
    serialised across processes by a lock file beside it, so jobs of several apps may share it.
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

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An ``flock`` on ``.NAME.lock`` beside the store for one read-change-replace: the
        store is one file for every app, and two jobs' saves would otherwise each write back
        what they read, the later dropping the earlier's new token. Held for milliseconds."""
        lock = self.path.with_name(f".{self.path.name}.lock")
        with exclusive(os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)):
            yield

    def load(self, app_key: str) -> StoredToken | None:
        """The token stored for ``app_key``, or ``None`` if there is none (or it is malformed)."""
        entry = self._read().get(app_key)
        if not isinstance(entry, dict):
            return None
        access = entry.get("access_token")
        if not isinstance(access, str):
            return None
        refresh = entry.get("refresh_token")
        expires = entry.get("expires_at")
        return StoredToken(
            access_token=access,
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
        """Store the token pair of ``app_key``, keeping the other app keys' entries, even
        when jobs of other apps save theirs at the same moment (see :meth:`_locked`).

        Raises:
            StorageError: the store cannot be written.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._locked():
            data = self._read()
            data[app_key] = {
                "access_token": access_token,
                "refresh_token": refresh_token,
                "expires_at": expires_at,
            }

            def write(temp: Path) -> None:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(data, out, indent=2, sort_keys=True)
                # A leftover temp file from a crash may carry a wider mode: O_CREAT keeps it.
                os.chmod(temp, 0o600)

            write_atomic(self.path, write)
        os.chmod(self.path, 0o600)
