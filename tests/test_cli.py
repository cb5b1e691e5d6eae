"""The command line starts light: what ``--help``, ``status`` and ``sign`` import, and the
``sandbox`` command whose parser is built only when it is used; and it ends S3 itself.

Each check runs in a fresh interpreter, since this one has imported everything already. It
pins which modules load, not how long they take (``bench/startup.py`` times them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser, main
from engine.commands import sandbox as sandbox_command
from engine.state import StateStore
from tests.paths import REPO

HEAVY = ("pyarrow", "PIL", "pillow_heif", "aiohttp", "numpy", "tenacity", "aiolimiter")
MACHINERY = ("engine.runner", "engine.sandbox", "engine.imaging", "engine.export", "asyncio")

# Runs the command line as the console script does, then reports what it imported on stderr's
# last line (stdout is the command's own).
_RUN_AND_REPORT = """
import json, sys
from engine.cli import console
try:
    code = console(sys.argv[1:])
except SystemExit as exc:  # --help exits
    code = exc.code
loaded = sorted(
    m for m in sys.modules
    if m.split(".")[0] in HEAVY or any(m == x or m.startswith(x + ".") for x in MACHINERY)
)
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def _loaded_by(*argv: str) -> tuple[int, list[str], str]:
    """Run ``img1688 ARGV`` in a fresh interpreter: its exit code, the heavy modules it loaded,
    and its stdout."""
    script = f"HEAVY = {HEAVY!r}\nMACHINERY = {MACHINERY!r}\n{_RUN_AND_REPORT}"
    done = subprocess.run(
        [sys.executable, "-c", script, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["loaded"], done.stdout


def test_building_the_parser_imports_no_machinery() -> None:
    script = (
        "import sys, engine.cli\n"
        "engine.cli.build_parser()\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_help_lists_every_command_and_loads_no_machinery() -> None:
    code, loaded, out = _loaded_by("--help")
    assert code == 0
    assert loaded == []
    for command in ("run", "status", "reclean", "preprocess", "sandbox", "sign"):
        assert f"    {command} " in out
    assert "serve a local stand-in for the 1688 gateway" in out


def test_status_reads_sqlite_without_pyarrow_or_aiohttp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with StateStore(out) as state:
        run = state.start_run("r1", "2024-05-01", "{}")
        state.discovered(run.run_id, "/photos/a.jpg", size=10, mtime_ns=1)
    code, loaded, printed = _loaded_by("status", str(out), "--json")
    assert code == 0
    report = json.loads(printed)  # it really read the checkpoints
    assert (report["run"], report["images"]) == ("r1", {"pending": 1})
    assert loaded == []


def test_sign_loads_no_machinery() -> None:
    code, loaded, printed = _loaded_by("sign", "seed", "--secret", "s", "a=1")
    assert code == 0
    assert len(printed.strip()) == 32  # an MD5 signature in hex
    assert loaded == []


def test_the_program_shuts_s3_down_itself_before_the_interpreter_exits() -> None:
    # pyarrow's own atexit handler is where the shutdown can hang (storage.finalize_s3).
    script = (
        "import pyarrow.fs as pafs\n"
        "from engine.cli import console\n"
        "def s3():\n"
        "    return pafs.S3FileSystem(access_key='k', secret_key='s', region='us-east-1',\n"
        "                             endpoint_override='http://127.0.0.1:9')\n"
        "s3()  # starts the AWS SDK; makes no request\n"
        "code = console(['sign', 'seed', '--secret', 's', 'a=1'])\n"
        "try:\n"
        "    s3()\n"
        "except ValueError as exc:\n"
        "    print(code, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("0 ")
    assert "finalized" in done.stdout


def test_the_sandbox_parser_is_built_when_used_and_is_the_commands_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["sandbox", "--help"])
    assert exit_.value.code == 0
    deferred_help = capsys.readouterr().out
    assert "--fault-5xx" in deferred_help and "Serve a local gateway" in deferred_help

    # Registered directly, the module's own parser reads the same.
    root = argparse.ArgumentParser(prog="img1688")
    sandbox_command.add_parser(root.add_subparsers())
    with pytest.raises(SystemExit):
        root.parse_args(["sandbox", "--help"])
    assert capsys.readouterr().out == deferred_help

    args = build_parser().parse_args(["sandbox", "--port", "0", "--rate", "3/2s"])
    config = sandbox_command.config_from_args(args)
    assert (config.port, str(config.rate)) == (0, "3/2s")
    assert args.func is sandbox_command.handle


def test_the_sandbox_listing_is_the_commands_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, object] = {}

    class Recorder:
        def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
            seen.update(kwargs)
            return argparse.ArgumentParser()

    sandbox_command.add_parser(Recorder())  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())  # argparse wraps long help lines
    assert f"sandbox {seen['help']}" in listing
