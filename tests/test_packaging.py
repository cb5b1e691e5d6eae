"""The wheel works outside the checkout.

The wheel is built from a copy of the checkout (an in-tree build would leave ``build/`` behind),
installed with its ``sandbox`` extra into a fresh virtualenv, and run from a folder outside the
checkout without PYTHONPATH: its ``img1688 sandbox`` must serve the catalogue it ships. The seed
request is signed here with hashlib, not with ``engine.signing``, so that it checks the installed
server independently.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from engine.sandbox.catalogue import DEFAULT_CATALOGUE
from tests.paths import REPO, SAMPLES

# Whatever the checkout holds that is not source: environments, caches, build output.
NOT_SOURCE = (
    ".git",
    ".venv",
    "build",
    "out",
    "*.egg-info",
    "__pycache__",
    "*_cache",
    ".hypothesis",
)
PIP_TIMEOUT = 600
START_TIMEOUT = 60.0
QUERY = "queries/q001.jpg"


def _env() -> dict[str, str]:
    """The environment without anything that would point Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return env | {"PYTHONNOUSERSITE": "1"}


def _run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel . --no-deps`` of the checkout as it stands."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE), symlinks=True)
    result = _run(
        sys.executable, "-m", "pip", "wheel", source, "--no-deps", "-v", "-w", work, cwd=work
    )
    # The build backend's warnings (such as a deprecated `project.license` table) show with -v.
    assert "deprecat" not in (result.stdout + result.stderr).lower()
    (built,) = work.glob("img1688-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv outside the checkout with the wheel and its sandbox extra installed."""
    root = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", root / "env", cwd=root)
    python = root / "env" / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", f"{wheel}[sandbox]", cwd=root)
    return root / "env"


def test_wheel_ships_the_engine_and_its_catalogue_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    # Neither tools/ (the sample generator), tests/ nor bench/.
    assert {name.split("/")[0] for name in names} == {"engine", dist_info}
    assert not [name for name in names if "samplegen" in name]
    catalogue = json.loads((DEFAULT_CATALOGUE / "catalogue.json").read_text(encoding="utf-8"))
    data = "engine/sandbox/data/catalogue/"
    assert {n for n in names if n.startswith(data)} == {
        data + name for name in ["catalogue.json", *(p["image"] for p in catalogue)]
    }


def test_installed_wheel_serves_its_catalogue_outside_the_checkout(
    venv: Path, tmp_path: Path
) -> None:
    where = _run(
        venv / "bin" / "python", "-c", "import engine; print(engine.__file__)", cwd=tmp_path
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)
    command = [str(venv / "bin" / "img1688"), "sandbox", "--port", "0"]
    with subprocess.Popen(
        command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            banner = _banner(proc)
            items = _seed_search(banner, _query_jpeg())
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and out.endswith("sandbox stopped\n")
    catalogue = json.loads((DEFAULT_CATALOGUE / "catalogue.json").read_text(encoding="utf-8"))
    titles = {p["offer_id"]: p["title"] for p in catalogue}
    found = [(int(item["item_id"]), item["title"]) for item in items]
    assert found and all(titles.get(offer) == title for offer, title in found)
    truth = json.loads((SAMPLES / "truth.json").read_text(encoding="utf-8"))
    assert found[0][0] == truth[QUERY]


def _banner(proc: subprocess.Popen[str]) -> dict[str, str]:
    """Wait for the sandbox's start banner (printed in one write) and read its URL and
    credentials."""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=START_TIMEOUT):
            pytest.fail(f"the sandbox printed nothing within {START_TIMEOUT} s")
    wanted = {
        "url": "img1688 sandbox listening on ",
        "app_key": "  app key ",
        "secret": "  app secret ",
        "token": "  access token ",
    }
    found: dict[str, str] = {}
    while len(found) < len(wanted):
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the sandbox exited {proc.wait()}: {proc.stderr.read()}")
        for key, prefix in wanted.items():
            if line.startswith(prefix):
                found[key] = line.split()[-1]
    return found


def _query_jpeg() -> bytes:
    """A sample buyer photo within the seed's image rules (long side at most 800 px)."""
    with Image.open(SAMPLES / QUERY) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
    upright.thumbnail((800, 800))
    out = io.BytesIO()
    upright.save(out, "JPEG", quality=90)
    return out.getvalue()


def _seed_search(banner: dict[str, str], jpeg: bytes) -> list[dict[str, object]]:
    """One seed search, TOP-signed: MD5(secret + k1v1 k2v2 ... sorted by key + secret)."""
    method = "alibaba.image.search.item"
    params = {
        "app_key": banner["app_key"],
        "method": method,
        "format": "json",
        "v": "2.0",
        "timestamp": (datetime.now(UTC) + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S"),
        "access_token": banner["token"],
        "image": base64.b64encode(jpeg).decode("ascii"),
        "page_size": "5",
    }
    signed = banner["secret"] + "".join(k + v for k, v in sorted(params.items()))
    params["sign"] = hashlib.md5((signed + banner["secret"]).encode()).hexdigest().upper()
    request = urllib.request.Request(
        f"{banner['url']}/openapi/param2/1/{method}/2.0",
        data=urllib.parse.urlencode(params).encode("ascii"),
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        body = json.loads(answer.read())
    assert "error_response" not in body, body
    return body["image_search_item_response"]["items"]["item"]
