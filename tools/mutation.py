"""`make mutation`: mutation testing of pure modules against their own unit tests.

For each `MODULE=TEST[,TEST...]` argument (the Makefile's MUTATION_MODULES):

1. mutmut mutates the module's functions and runs the module's unit tests against each mutant.
   It runs in a work directory of its own, .mutation/<module>/, whose pyproject.toml is the
   project's with `[tool.mutmut]` completed by `only_mutate = [MODULE]` and the module's tests,
   so that each module is judged by its own tests only. The directory is made anew every run.
2. tools/mutate_constants.py mutates the module-level constants and class-level defaults,
   which mutmut leaves alone, and runs the same tests against each mutant.

Then it prints, per module, killed/total and the percentage for each kind, lists the survivors,
and exits 1 if any is below the threshold (95 %). Equivalent mutants, listed with the reason
in tools/mutation_equivalents.toml, are not counted; an entry that no longer matches a
surviving mutant fails the run (the code changed: look again). A timeout counts as killed, as
mutmut counts it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mutate_constants

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
EQUIVALENTS = Path(__file__).resolve().parent / "mutation_equivalents.toml"
MUTMUT = Path(sys.executable).parent / "mutmut"

# mutmut's exit codes (mutmut/stats.py): what counts as a kill.
KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout"}
KILLED[255] = "timeout"
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}
SKIPPED = {34: "skipped"}


@dataclass
class Tally:
    killed: list[str] = field(default_factory=list)
    survived: dict[str, str] = field(default_factory=dict)  # name -> what changed
    equivalent: dict[str, str] = field(default_factory=dict)  # name -> why
    invalid: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.killed) + len(self.survived)

    @property
    def percent(self) -> float:
        return 100.0 * len(self.killed) / self.total if self.total else 100.0

    def line(self) -> str:
        return f"{len(self.killed):>4}/{self.total:<4} {self.percent:6.1f} %"


def _slug(path: str) -> str:
    return path.removesuffix(".py").replace("/", "_")


def _mutmut_pyproject(path: str, tests: list[str]) -> str:
    """The project's pyproject.toml, its [tool.mutmut] table completed for one module."""
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    shared = tomllib.loads(text).get("tool", {}).get("mutmut", {})
    settings = {**shared, "only_mutate": [path], "pytest_add_cli_args_test_selection": tests}
    lines = text.splitlines()
    kept: list[str] = []
    skipping = False
    for line in lines:
        if line.strip().startswith("["):
            skipping = line.strip() == "[tool.mutmut]"
        if not skipping:
            kept.append(line)
    # JSON strings, lists, numbers and booleans are valid TOML values.
    table = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join([*kept, "", "[tool.mutmut]", *table, ""])


def run_mutmut(path: str, tests: list[str], jobs: int) -> tuple[dict[str, str], Path]:
    """mutmut on one module: {mutant name: status}, and the work directory."""
    workdir = WORK / _slug(path)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    for name in ("common", "tests"):
        (workdir / name).symlink_to(ROOT / name, target_is_directory=True)
    (workdir / "pyproject.toml").write_text(_mutmut_pyproject(path, tests), "utf-8")
    log = workdir / "mutmut.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [str(MUTMUT), "run", "--max-children", str(jobs)],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    meta = workdir / "mutants" / (path + ".meta")
    if proc.returncode != 0 or not meta.exists():
        raise SystemExit(f"mutmut failed on {path} (exit {proc.returncode}); see {log}")
    codes: dict[str, int | None] = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
    statuses: dict[str, str] = {}
    for name, code in codes.items():
        if code is None:
            raise SystemExit(f"mutmut did not check {name}; see {log}")
        statuses[name] = KILLED.get(code) or SURVIVED.get(code) or SKIPPED.get(code) or str(code)
    return statuses, workdir


def mutmut_diff(workdir: Path, name: str) -> str:
    """The changed lines of a mutmut mutant (the diff's '+' lines, without the header)."""
    out = subprocess.run(
        [str(MUTMUT), "show", name], cwd=workdir, capture_output=True, text=True, check=False
    ).stdout
    added = [
        line[1:].strip()
        for line in out.splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    return " | ".join(added) or "(no added line: a line was removed)"


def load_equivalents() -> list[dict[str, str]]:
    data = tomllib.loads(EQUIVALENTS.read_text("utf-8"))
    entries: list[dict[str, str]] = data.get("equivalent", [])
    return entries


def apply_equivalents(
    tally: Tally, entries: list[dict[str, str]], known: set[str], problems: list[str]
) -> None:
    for entry in entries:
        name = entry["mutant"]
        if name not in known:
            continue  # another module's entry
        if name not in tally.survived:
            problems.append(f"listed as equivalent but killed (remove the entry): {name}")
            continue
        fragment = entry.get("mutated", "")
        if fragment and fragment not in tally.survived[name]:
            problems.append(
                f"listed as equivalent but the mutant is now a different one: {name}\n"
                f"      listed: {fragment}\n      now:    {tally.survived[name]}"
            )
            continue
        del tally.survived[name]
        tally.equivalent[name] = entry["why"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="+", metavar="MODULE=TEST[,TEST...]")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threshold", type=float, default=95.0)
    parser.add_argument("--skip-mutmut", action="store_true")
    parser.add_argument("--skip-constants", action="store_true")
    args = parser.parse_args()

    equivalents = load_equivalents()
    problems: list[str] = []
    known: set[str] = set()  # every mutant of the modules run
    prefixes: list[str] = []  # the names a run of mutmut or of the constants gives
    rows: list[tuple[str, Tally | None, Tally | None, float]] = []
    for spec in args.modules:
        path, _, test_list = spec.partition("=")
        tests = [t for t in test_list.split(",") if t]
        if not (ROOT / path).is_file() or not tests:
            raise SystemExit(f"expected MODULE=TEST[,TEST...], got {spec!r}")
        started = time.monotonic()
        mm: Tally | None = None
        if not args.skip_mutmut:
            print(f"mutmut: {path} against {', '.join(tests)} ...", flush=True)
            statuses, workdir = run_mutmut(path, tests, args.jobs)
            mm = Tally()
            for name, status in statuses.items():
                if status in ("killed", "timeout"):
                    mm.killed.append(name)
                elif status != "skipped":
                    mm.survived[name] = f"[{status}] " + mutmut_diff(workdir, name)
            apply_equivalents(mm, equivalents, set(statuses), problems)
            known |= set(statuses)
            prefixes.append(path.removesuffix(".py").replace("/", ".") + ".")
        const: Tally | None = None
        if not args.skip_constants:
            print(f"constants: {path} against {', '.join(tests)} ...", flush=True)
            log = WORK / _slug(path) / "constants.log"
            results = mutate_constants.run(path, tests, jobs=args.jobs, log=log)
            const = Tally()
            for result in results:
                name = result.mutant.name
                if result.status in ("killed", "timeout"):
                    const.killed.append(name)
                elif result.status == "invalid":
                    const.invalid.append(name)
                else:
                    const.survived[name] = ""
            apply_equivalents(const, equivalents, {r.mutant.name for r in results}, problems)
            known |= {r.mutant.name for r in results}
            prefixes.append(path + ":")
        rows.append((path, mm, const, time.monotonic() - started))
    for entry in equivalents:
        name = entry["mutant"]
        if name not in known and name.startswith(tuple(prefixes)):
            problems.append(f"listed as equivalent but there is no such mutant: {name}")

    print()
    print("Mutation testing: killed/total (equivalent mutants not counted)")
    print(f"{'module':<32} {'mutmut':<26} {'constants':<26} time")
    failed = False
    for path, mm, const, elapsed in rows:
        cells = []
        for tally in (mm, const):
            if tally is None:
                cells.append(f"{'skipped':<26}")
                continue
            failed |= tally.percent < args.threshold
            extra = f" +{len(tally.equivalent)} eq" if tally.equivalent else ""
            cells.append(f"{tally.line() + extra:<26}")
        print(f"{path:<32} {cells[0]} {cells[1]} {elapsed:4.0f} s")
    for _path, mm, const, _ in rows:
        for kind, tally in (("mutmut", mm), ("constants", const)):
            if tally is None:
                continue
            for name, what in tally.survived.items():
                print(f"  SURVIVED ({kind}) {name}" + (f"\n      {what}" if what else ""))
            for name, why in tally.equivalent.items():
                print(f"  equivalent ({kind}) {name}: {why}")
            for name in tally.invalid:
                print(f"  invalid, not counted (does not import) {name}")
    for problem in problems:
        print(f"  STALE {problem}")
    if problems:
        print("tools/mutation_equivalents.toml no longer matches the mutants: review it.")
        return 1
    if failed:
        print(f"FAILED: below {args.threshold:g} % killed")
        return 1
    print(f"OK: every module at or above {args.threshold:g} % killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
