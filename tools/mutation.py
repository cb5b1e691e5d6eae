"""Mutation testing of the modules that carry the engine's promises (``make mutation``).

``python -m tools.mutation [GROUP ...]`` runs mutmut once per group below, each in a private
work directory ``build/mutation/GROUP/`` (git-ignored, made afresh every run so that nothing
stale survives a change to the code), mutating only the group's modules and running each
mutant against only the tests that mirror them. It then prints, per module,
``engine/x.py: killed K of N (P%)``, and as its last line the total in the same form. A
mutant counts as killed when a test failed or timed out under it; every other verdict
(survived, no tests, suspicious) counts against the score and is listed by name, so that
``mutmut show NAME`` in the group's directory prints its diff.

Exit status: 0 when every group was measured, 1 when mutmut failed on a group (its log is
``build/mutation/GROUP/mutmut.log``; the other groups are still measured). A low score is not
a failure: docs/testing.md lists the survivors that are equivalent to the original code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "mutation"
# The checkout's parts the mirrored tests need besides engine/ and tests/: the sample
# generator (imported as tools.samplegen) and the committed sample photos (conftest).
LINKED = ("engine", "tests", "tools", "sample_images")
# Verdicts that mean a test noticed the mutant (mutmut's names for them).
DETECTED = frozenset({"killed", "timeout"})


@dataclass(frozen=True)
class Group:
    """Modules mutated together, and the test files that mirror them."""

    name: str
    modules: tuple[str, ...]
    tests: tuple[str, ...]


GROUPS = (
    # The budget's call log and its cap (a CallCap) exist for the call ledger, and are tested
    # there, against the ledger's daily cap.
    Group(
        "ratelimit",
        ("engine/ratelimit.py",),
        ("tests/test_ratelimit.py", "tests/test_ledger.py"),
    ),
    Group(
        "signing",
        ("engine/signing.py",),
        ("tests/test_signing.py", "tests/test_client_requests.py"),
    ),
    Group(
        "state",
        ("engine/state.py",),
        ("tests/test_state.py", "tests/test_lifecycle.py", "tests/test_reuse.py"),
    ),
    Group(
        "feed",
        ("engine/feed.py", "engine/export.py"),
        ("tests/test_feed.py", "tests/test_export.py", "tests/test_lifecycle.py"),
    ),
    Group(
        "stops",
        ("engine/outcome.py", "engine/breaker.py"),
        ("tests/test_outcome.py", "tests/test_breaker.py"),
    ),
)


@dataclass(frozen=True)
class Tally:
    """One module's (or the total's) mutants: how many, how many a test killed."""

    killed: int
    total: int

    def line(self, label: str) -> str:
        """``label: killed K of N (P%)``; a module with no mutants reads 100%."""
        percent = 100.0 * self.killed / self.total if self.total else 100.0
        return f"{label}: killed {self.killed} of {self.total} ({percent:.1f}%)"


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def prepare(group: Group) -> Path:
    """Make the group's work directory afresh: links to the checkout's parts, and the
    project's pyproject.toml (pytest's settings) with the group's mutmut settings added.

    Raises RuntimeError if the project's pyproject.toml already has mutmut settings, which
    would clash with the group's.
    """
    work = WORK / group.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in LINKED:
        (work / name).symlink_to(REPO / name, target_is_directory=True)
    project = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    if "[tool.mutmut]" in project:
        raise RuntimeError("pyproject.toml has a [tool.mutmut] table: tools/mutation.py owns it")
    settings = "\n".join(
        [
            "",
            "[tool.mutmut]",
            'source_paths = ["engine"]',
            f"only_mutate = {_toml_list(group.modules)}",
            f"pytest_add_cli_args_test_selection = {_toml_list(group.tests)}",
            # tests/ and pyproject.toml are copied by default; conftest needs these too.
            'also_copy = ["tools", "sample_images"]',
            # mutmut runs pytest several times in one process: with pytest's capture, a
            # default argument bound to sys.stderr at import (engine.progress) would outlive
            # the session that replaced it, and write to a closed file in the next.
            'pytest_add_cli_args = ["--capture=no"]',
            # A fresh directory each run: there is no earlier run to compare against.
            "use_git_change_detection = false",
            "",
        ]
    )
    (work / "pyproject.toml").write_text(project + settings, encoding="utf-8")
    return work


def mutmut(work: Path, *args: str, log: Path | None = None) -> str:
    """Run the venv's mutmut in ``work``; its output, or (with ``log``) an empty string after
    writing the output there. Raises RuntimeError, with mutmut's errors or the log's name, if
    mutmut fails."""
    command = [str(Path(sys.executable).with_name("mutmut")), *args]
    # The mutated copy must be the one imported: a PYTHONPATH naming the checkout would not do.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if log is None:
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"mutmut {' '.join(args)} failed in {work}:\n{done.stderr}")
        return done.stdout
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.run(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code.returncode != 0:
        raise RuntimeError(f"mutmut {' '.join(args)} failed: see {log}")
    return ""


def verdicts(work: Path) -> dict[str, str]:
    """Every mutant's name -> mutmut's verdict, from ``mutmut results --all true``."""
    found: dict[str, str] = {}
    for line in mutmut(work, "results", "--all", "true").splitlines():
        name, sep, verdict = line.strip().rpartition(": ")
        if sep and name.startswith("engine."):
            found[name] = verdict
    return found


def module_of(mutant: str) -> str:
    """``engine.state.xǁStateStoreǁopen__mutmut_3`` -> ``engine/state.py``."""
    dotted = mutant.split(".x_")[0].split(".xǁ")[0]
    return dotted.replace(".", "/") + ".py"


def run_group(group: Group, jobs: int) -> dict[str, tuple[Tally, list[str]]]:
    """Mutate and test one group; per module, its tally and its undetected mutants.

    Raises RuntimeError if mutmut failed (a mirrored test failing without any mutant, say),
    or made no mutant of a module (a path that is not the module's any more).
    """
    work = prepare(group)
    started = time.monotonic()
    print(f"[{group.name}] mutating {', '.join(group.modules)} ...", flush=True)
    mutmut(work, "run", "--max-children", str(jobs), log=work / "mutmut.log")
    found = verdicts(work)
    result: dict[str, tuple[Tally, list[str]]] = {}
    for module in group.modules:
        mine = {name: v for name, v in found.items() if module_of(name) == module}
        if not mine:
            raise RuntimeError(f"mutmut made no mutant of {module}: see {work / 'mutmut.log'}")
        missed = sorted(f"{name}: {v}" for name, v in mine.items() if v not in DETECTED)
        result[module] = (Tally(len(mine) - len(missed), len(mine)), missed)
    counts = Counter(found.values())
    print(
        f"[{group.name}] {time.monotonic() - started:.0f} s; "
        + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())),
        flush=True,
    )
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutation", description=__doc__)
    names = [g.name for g in GROUPS]
    parser.add_argument("groups", nargs="*", help=f"any of {', '.join(names)} (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    options = parser.parse_args(argv)
    unknown = sorted(set(options.groups) - set(names))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}: choose from {', '.join(names)}")
    chosen = [g for g in GROUPS if not options.groups or g.name in options.groups]
    started = time.monotonic()
    tallies: dict[str, Tally] = {}
    failed: list[str] = []
    for group in chosen:
        try:
            per_module = run_group(group, options.jobs)
        except RuntimeError as error:
            print(f"[{group.name}] {error}", file=sys.stderr, flush=True)
            failed.append(group.name)
            continue
        for module, (tally, missed) in per_module.items():
            tallies[module] = tally
            for name in missed:
                print(f"  not killed: {name}")
        if any(missed for _, missed in per_module.values()):
            print(f"  (mutmut show NAME, in {WORK / group.name}, prints a mutant's diff)")
    print(f"\nmutation testing took {time.monotonic() - started:.0f} s")
    for name in failed:
        print(f"group {name}: not measured (see above)")
    for module, tally in tallies.items():
        print(tally.line(module))
    total = Tally(sum(t.killed for t in tallies.values()), sum(t.total for t in tallies.values()))
    print(total.line("total"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
