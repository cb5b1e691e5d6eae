"""Credentials from environment and file, their redaction, and the 0600 token store."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.credentials import (
    Credentials,
    StoredToken,
    TokenStore,
    load_apps,
    load_credentials,
    mask_key,
)
from engine.errors import ConfigError

SECRET = "app-secret-4f1c"
TOKEN = "access-token-9b2e"
REFRESH = "refresh-token-77aa"


def write_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_environment_alone() -> None:
    env = {
        "IMG1688_APP_KEY": "key1",
        "IMG1688_APP_SECRET": SECRET,
        "IMG1688_ACCESS_TOKEN": TOKEN,
        "HOME": "/nonexistent",
    }
    assert load_credentials(env) == Credentials("key1", SECRET, TOKEN, None)


def test_environment_overrides_the_file_key_by_key(tmp_path: Path) -> None:
    file = write_file(
        tmp_path / "c.toml",
        f'app_key = "file-key"\napp_secret = "file-secret"\nrefresh_token = "{REFRESH}"\n',
    )
    env = {"IMG1688_APP_SECRET": SECRET, "IMG1688_ACCESS_TOKEN": TOKEN}
    creds = load_credentials(env, file=file)
    assert creds == Credentials("file-key", SECRET, TOKEN, REFRESH)


def test_empty_variables_do_not_override(tmp_path: Path) -> None:
    file = write_file(tmp_path / "c.toml", 'app_key = "k"\napp_secret = "file-secret"\n')
    creds = load_credentials({"IMG1688_APP_SECRET": ""}, file=file)
    assert creds.app_secret == "file-secret"


def test_file_from_variable_then_default_location(tmp_path: Path) -> None:
    named = write_file(tmp_path / "named.toml", 'app_key = "named"\napp_secret = "s1"\n')
    home = tmp_path / "home"
    default = home / ".config" / "img1688" / "credentials.toml"
    default.parent.mkdir(parents=True)
    write_file(default, 'app_key = "default"\napp_secret = "s2"\n')
    env = {"HOME": str(home)}
    assert load_credentials(env).app_key == "default"
    assert load_credentials({**env, "IMG1688_CREDENTIALS": str(named)}).app_key == "named"
    assert load_credentials(env, file=named).app_key == "named"


def test_missing_secret_names_the_variable_and_where_it_looked(tmp_path: Path) -> None:
    file = write_file(tmp_path / "c.toml", f'app_key = "k"\naccess_token = "{TOKEN}"\n')
    with pytest.raises(ConfigError) as caught:
        load_credentials({"HOME": str(tmp_path)}, file=file)
    message = str(caught.value)
    assert "IMG1688_APP_SECRET" in message
    assert str(file) in message
    assert "IMG1688_APP_KEY" not in message
    assert TOKEN not in message


def test_missing_both_without_a_file() -> None:
    with pytest.raises(ConfigError) as caught:
        load_credentials({"HOME": "/nonexistent"})
    message = str(caught.value)
    assert "IMG1688_APP_KEY" in message and "IMG1688_APP_SECRET" in message
    assert "no credentials file" in message


def test_a_named_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_credentials({"IMG1688_CREDENTIALS": str(tmp_path / "absent.toml")})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('app_key = "k"\nappsecret = "x"\n', "unknown key(s) appsecret"),
        ('app_key = "k"\napp_secret = 12\n', "app_secret must be a string"),
        ('app_key = "k"\napp_secret = "unterminated\n', "not valid TOML"),
    ],
)
def test_malformed_file(tmp_path: Path, text: str, fragment: str) -> None:
    file = write_file(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_credentials({}, file=file)
    assert fragment in str(caught.value)
    assert "unterminated" not in str(caught.value)


def test_warns_when_the_file_is_readable_by_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = write_file(tmp_path / "c.toml", f'app_key = "k"\napp_secret = "{SECRET}"\n', 0o644)
    with caplog.at_level(logging.WARNING, logger="engine.credentials"):
        load_credentials({}, file=file)
    assert "chmod 600" in caplog.text
    assert SECRET not in caplog.text
    caplog.clear()
    file.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="engine.credentials"):
        load_credentials({}, file=file)
    assert caplog.text == ""


def test_repr_shows_only_the_app_key() -> None:
    creds = Credentials("key1", SECRET, TOKEN, REFRESH)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert "key1" in text
        for secret in (SECRET, TOKEN, REFRESH):
            assert secret not in text
    assert "access_token=None" in repr(Credentials("key1", SECRET))
    assert creds.secrets() == (SECRET, TOKEN, REFRESH)
    assert Credentials("key1", SECRET).secrets() == (SECRET,)


def test_token_store_round_trip_and_mode(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "deep" / "tokens.json")
    assert store.load("key1") is None
    store.save("key1", TOKEN, REFRESH, 1_900_000_000.0)
    store.save("key2", "other-token", None, None)
    assert mode_of(store.path) == 0o600
    assert mode_of(store.path.parent) == 0o700
    assert store.load("key1") == StoredToken(TOKEN, REFRESH, 1_900_000_000.0)
    assert store.load("key2") == StoredToken("other-token", None, None)
    store.save("key1", "newer-token", REFRESH, 1_900_000_100.0)
    assert store.load("key1") == StoredToken("newer-token", REFRESH, 1_900_000_100.0)
    assert store.load("key2") is not None
    assert json.loads(store.path.read_text())["key1"]["access_token"] == "newer-token"
    # No temporary left: the store and its lock file.
    assert sorted(p.name for p in store.path.parent.iterdir()) == [
        ".tokens.json.lock",
        "tokens.json",
    ]


def _save_apps(path: str, prefix: str, count: int) -> None:
    store = TokenStore(Path(path))
    for i in range(count):
        store.save(f"{prefix}{i}", f"token-{prefix}{i}", None, None)


def test_processes_saving_at_once_lose_no_app_s_token(tmp_path: Path) -> None:
    """Jobs of different apps sharing one store (the default one) each read, change and
    replace the whole file: without the store's lock, one's write drops the other's entry."""
    path = tmp_path / "tokens.json"
    context = multiprocessing.get_context("spawn")
    savers = [context.Process(target=_save_apps, args=(str(path), prefix, 40)) for prefix in "abc"]
    for saver in savers:
        saver.start()
    for saver in savers:
        saver.join(timeout=120)
        assert saver.exitcode == 0
    assert sorted(json.loads(path.read_text())) == sorted(
        f"{p}{i}" for p in "abc" for i in range(40)
    )


def test_token_store_tightens_a_wider_file(tmp_path: Path) -> None:
    path = write_file(tmp_path / "tokens.json", "{}", 0o644)
    TokenStore(path).save("key1", TOKEN, None, None)
    assert mode_of(path) == 0o600


def test_token_store_ignores_a_corrupt_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_file(tmp_path / "tokens.json", "{not json")
    store = TokenStore(path)
    assert store.load("key1") is None
    assert "unreadable" in caplog.text
    store.save("key1", TOKEN, None, None)
    assert store.load("key1") == StoredToken(TOKEN, None, None)


def test_token_store_default_location(tmp_path: Path) -> None:
    assert TokenStore.default({"IMG1688_TOKEN_FILE": str(tmp_path / "t.json")}).path == (
        tmp_path / "t.json"
    )
    assert TokenStore.default({"HOME": str(tmp_path)}).path == (
        tmp_path / ".config" / "img1688" / "tokens.json"
    )


def test_stored_token_validity_and_repr() -> None:
    token = StoredToken(TOKEN, REFRESH, 1000.0)
    assert token.valid(now=999.0) and not token.valid(now=1000.0)
    assert StoredToken(TOKEN, None, None).valid()
    assert TOKEN not in repr(token) and REFRESH not in repr(token)


def test_token_store_file_is_never_created_wider(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = TokenStore(tmp_path / "tokens.json")
        store.save("key1", TOKEN, None, None)
    finally:
        os.umask(old)
    assert mode_of(store.path) == 0o600


# --- several apps ---------------------------------------------------------------------------


def apps_file(path: Path, *tables: dict[str, object], extra: str = "") -> Path:
    """A credentials file of ``[[app]]`` tables (values written as TOML strings or numbers)."""
    lines = [extra] if extra else []
    for table in tables:
        lines.append("[[app]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in table.items())
    return write_file(path, "\n".join(lines) + "\n")


def test_several_apps_in_file_order(tmp_path: Path) -> None:
    file = apps_file(
        tmp_path / "c.toml",
        {"app_key": "key1", "app_secret": SECRET, "access_token": TOKEN, "refresh_token": REFRESH},
        {"app_key": "key2", "app_secret": "secret-two", "access_token": ""},
    )
    assert load_apps({"HOME": str(tmp_path)}, file=file) == (
        Credentials("key1", SECRET, TOKEN, REFRESH),
        Credentials("key2", "secret-two", None, None),
    )
    with pytest.raises(ConfigError, match="lists 2 apps where one is needed"):
        load_credentials({}, file=file)


def test_a_flat_file_and_the_environment_still_give_one_app(tmp_path: Path) -> None:
    file = write_file(tmp_path / "c.toml", f'app_key = "k"\napp_secret = "{SECRET}"\n')
    assert load_apps({"IMG1688_ACCESS_TOKEN": TOKEN}, file=file) == (
        Credentials("k", SECRET, TOKEN, None),
    )
    env = {"IMG1688_APP_KEY": "e", "IMG1688_APP_SECRET": SECRET, "HOME": "/nonexistent"}
    assert load_apps(env) == (Credentials("e", SECRET),)


GOOD = {"app_key": "key1", "app_secret": SECRET}


@pytest.mark.parametrize(
    ("tables", "extra", "fragments"),
    [
        ((GOOD, {"app_key": "key2"}), "", ["app[1]: missing app_secret"]),
        (({"app_secret": SECRET},), "", ["app[0]: missing app_key"]),
        ((GOOD, {**GOOD, "token": TOKEN}), "", ["app[1]: unknown key(s) token", "expected"]),
        ((GOOD, {"app_key": "key2", "app_secret": 12}), "", ["app[1]: app_secret must be"]),
        (
            (GOOD, {"app_key": "key2", "app_secret": "s2"}, {**GOOD, "app_secret": "other"}),
            "",
            ["app[2]: app_key is the same as app[0]'s"],
        ),
        ((GOOD,), 'app_key = "flat"', ["app_key beside [[app]] tables"]),
        ((), 'app = "key1"', ["app must be [[app]] tables"]),
        ((), "app = []", ["lists no app"]),
    ],
)
def test_malformed_app_tables_name_the_table_and_the_key(
    tmp_path: Path, tables: tuple[dict[str, object], ...], extra: str, fragments: list[str]
) -> None:
    file = apps_file(tmp_path / "c.toml", *tables, extra=extra)
    with pytest.raises(ConfigError) as caught:
        load_apps({}, file=file)
    message = str(caught.value)
    assert str(file) in message
    for fragment in fragments:
        assert fragment in message
    for secret in (SECRET, TOKEN, "other"):
        assert secret not in message


def test_a_credential_variable_beside_app_tables_is_an_error(tmp_path: Path) -> None:
    file = apps_file(tmp_path / "c.toml", GOOD)
    with pytest.raises(ConfigError) as caught:
        load_apps({"IMG1688_ACCESS_TOKEN": TOKEN}, file=file)
    assert "IMG1688_ACCESS_TOKEN set" in str(caught.value) and TOKEN not in str(caught.value)


_keys = st.text(st.characters(categories=("L", "N"), max_codepoint=0x7F), min_size=1, max_size=12)


@settings(max_examples=50)
@given(keys=st.lists(_keys, min_size=1, max_size=6))
def test_any_list_of_apps_loads_in_order_or_names_its_first_duplicate(
    tmp_path_factory: pytest.TempPathFactory, keys: list[str]
) -> None:
    folder = tmp_path_factory.mktemp("apps")
    tables = [{"app_key": key, "app_secret": f"{SECRET}-{i}"} for i, key in enumerate(keys)]
    file = apps_file(folder / "c.toml", *tables)
    duplicate = next((i for i, key in enumerate(keys) if key in keys[:i]), None)
    if duplicate is None:
        assert [app.app_key for app in load_apps({}, file=file)] == keys
        return
    with pytest.raises(ConfigError) as caught:
        load_apps({}, file=file)
    first = keys.index(keys[duplicate])
    assert f"app[{duplicate}]: app_key is the same as app[{first}]'s" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_masked_keys_tell_apps_apart_without_showing_them() -> None:
    assert Credentials("app-5521", SECRET).masked_key == "ap***21"
    assert mask_key("abc") == "***"
    assert SECRET not in Credentials("app-5521", SECRET).masked_key
