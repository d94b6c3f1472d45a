"""Mutation testing of what mutmut leaves alone: module-level constants and class-level defaults.

mutmut (3.x) only mutates the bodies of functions and methods. A module's limits live outside
them (`MAX_BATCH_EVENTS = 1000`, `TIER_FRACTIONS = {...}`, `OLDEST_OCCURRED_AT = datetime(...)`,
`REQUIRED_FIELDS = frozenset({...})`, a compiled regex, a dataclass default, a shared
`Hold("disabled")`), so a test suite that never pins them still scores well. This script mutates
each of them, one at a time, in a copy of the tree and runs the module's unit tests against it.

Mutations, applied to the value of every module-level or class-level assignment:

* integers: n + 1 and n - 1 (every limit, on both sides); booleans: flipped;
* numeric strings (`Decimal("0.75")`): plus and minus one unit of the last decimal place;
* other strings: "XX" + s + "XX" (mutmut's string mutation);
* regular expressions (the first argument of `re.compile`): each character range narrowed by
  one at each end (`[A-Z]` -> `[B-Z]`, `[A-Y]`), each `{n}` -> `{n+1}`, `{n-1}`, `+` -> `*`,
  `*` -> `+`, each optional `?` removed, each anchor removed;
* sets, lists, tuples, dicts: each element (entry) dropped;
* operators: `|` <-> `&`, `+` <-> `-`, `*` <-> `/`;
* calls: each keyword argument dropped, each positional argument after the first dropped.

Type aliases (`AccountStatus = Literal[...]`, `RunStep = A | B`) have no run-time effect and are
skipped. A mutant that cannot even be imported (`datetime(2000, 0, 1)`) is "invalid": reported,
not counted, since any test kills it.

Run alone: `python tools/mutate_constants.py MODULE=TEST[,TEST...]` (`--list`: only list them).
`make mutation` (tools/mutation.py) runs it after mutmut for every module.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a copy of the tree needs for the unit tests to run against it.
COPIED = ("common", "config", "workers", "tests", "pyproject.toml")
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "--noconftest", "--hypothesis-seed=0")
TIMEOUT_S = 300

_NUMERIC = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


@dataclass(frozen=True)
class Mutant:
    name: str  # "common/usage/decode.py:22:20 MAX_BATCH_EVENTS: 1000 -> 1001"
    line: int
    source: str  # the whole mutated module


@dataclass(frozen=True)
class Result:
    mutant: Mutant
    status: str  # killed, survived, timeout, invalid


# ---------------------------------------------------------------------------------------------
# Generating mutants


def _assignments(tree: ast.Module) -> Iterator[tuple[str, ast.expr]]:
    """(target name, value) of every module-level and class-level assignment."""

    def from_body(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.expr]]:
        for stmt in body:
            if isinstance(stmt, ast.ClassDef) and not prefix:
                yield from from_body(stmt.body, f"{stmt.name}.")
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target = stmt.targets[0]
                if isinstance(target, ast.Name):
                    yield prefix + target.id, stmt.value
            elif (
                isinstance(stmt, ast.AnnAssign)
                and stmt.value is not None
                and isinstance(stmt.target, ast.Name)
            ):
                yield prefix + stmt.target.id, stmt.value

    yield from from_body(tree.body, "")


def _is_type_alias(name: str, value: ast.expr) -> bool:
    short = name.rsplit(".", 1)[-1]
    if short == "__all__":
        return True
    if isinstance(value, ast.Subscript) and ast.unparse(value.value) in {"Literal", "Union"}:
        return True
    # `RunStep = ChargeDecision | RunDone`: a CamelCase name bound to a union of classes.
    return short[:1].isupper() and not short.isupper() and isinstance(value, ast.BinOp)


def _in_regex(node: ast.Constant, parents: dict[ast.AST, ast.AST]) -> bool:
    call = parents.get(node)
    if not isinstance(call, ast.Call) or not call.args or call.args[0] is not node:
        return False
    func = ast.unparse(call.func)
    return func in {"re.compile", "compile"}


def _regex_variants(pattern: str) -> list[tuple[str, str]]:
    """(description, mutated pattern) for each regex mutation."""
    out: list[tuple[str, str]] = []

    def at(i: int, j: int, new: str, what: str) -> None:
        out.append((what, pattern[:i] + new + pattern[j:]))

    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            elif i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
                lo, hi = c, pattern[i + 2]
                if ord(hi) > ord(lo):
                    at(
                        i,
                        i + 3,
                        f"{chr(ord(lo) + 1)}-{hi}",
                        f"[{lo}-{hi}] -> [{chr(ord(lo) + 1)}-{hi}]",
                    )
                    at(
                        i,
                        i + 3,
                        f"{lo}-{chr(ord(hi) - 1)}",
                        f"[{lo}-{hi}] -> [{lo}-{chr(ord(hi) - 1)}]",
                    )
                i += 3
                continue
        elif c == "[":
            in_class = True
        elif c == "{":
            match = re.match(r"\{([0-9]+)\}", pattern[i:])
            if match:
                n = int(match[1])
                end = i + match.end()
                at(i, end, f"{{{n + 1}}}", f"{{{n}}} -> {{{n + 1}}}")
                if n > 1:
                    at(i, end, f"{{{n - 1}}}", f"{{{n}}} -> {{{n - 1}}}")
        elif c == "+":
            at(i, i + 1, "*", "+ -> *")
        elif c == "*":
            at(i, i + 1, "+", "* -> +")
        elif c == "?" and i > 0 and pattern[i - 1] != "(":
            at(i, i + 1, "", "? dropped")
        elif c in "^$":
            at(i, i + 1, "", f"{c} dropped")
        i += 1
    return out


_SWAPPED_OPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.BitOr: ast.BitAnd,
    ast.BitAnd: ast.BitOr,
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
}


def _replacements(
    node: ast.AST, parents: dict[ast.AST, ast.AST], text: str
) -> Iterator[tuple[str, str]]:
    """(description, new source text of `node`) for every mutation of `node` itself."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            yield f"{text} -> {not value}", repr(not value)
        elif isinstance(value, int):
            for new in (value + 1, value - 1):
                yield f"{text} -> {new}", repr(new)
        elif isinstance(value, str):
            if _in_regex(node, parents):
                for what, new in _regex_variants(value):
                    yield f"regex {what}", repr(new)
            elif _NUMERIC.fullmatch(value):
                places = len(value.split(".")[1]) if "." in value else 0
                for sign in (1, -1):
                    new = _shift_decimal(value, sign, places)
                    yield f"{text} -> {new!r}", repr(new)
            else:
                yield f"{text} -> {'XX' + value + 'XX'!r}", repr("XX" + value + "XX")
    elif isinstance(node, ast.Set | ast.List | ast.Tuple) and isinstance(
        getattr(node, "ctx", ast.Load()), ast.Load
    ):
        for index, elt in enumerate(node.elts):
            rest = [e for i, e in enumerate(node.elts) if i != index]
            new_node = (
                type(node)(elts=rest, ctx=ast.Load())
                if not isinstance(node, ast.Set)
                else ast.Set(elts=rest)
            )
            yield f"drop {ast.unparse(elt)}", ast.unparse(new_node)
    elif isinstance(node, ast.Dict):
        for index, key in enumerate(node.keys):
            if key is None:
                continue
            keys = [k for i, k in enumerate(node.keys) if i != index]
            values = [v for i, v in enumerate(node.values) if i != index]
            yield f"drop entry {ast.unparse(key)}", ast.unparse(ast.Dict(keys=keys, values=values))
    elif isinstance(node, ast.BinOp) and type(node.op) in _SWAPPED_OPS:
        swapped = ast.BinOp(left=node.left, op=_SWAPPED_OPS[type(node.op)](), right=node.right)
        new = ast.unparse(swapped)
        yield f"{text} -> {new}", new
    elif isinstance(node, ast.Call):
        for index, kw in enumerate(node.keywords):
            keywords = [k for i, k in enumerate(node.keywords) if i != index]
            call = ast.Call(func=node.func, args=node.args, keywords=keywords)
            yield f"drop {ast.unparse(kw)}", ast.unparse(call)
        for index in range(1, len(node.args)):
            args = [a for i, a in enumerate(node.args) if i != index]
            call = ast.Call(func=node.func, args=args, keywords=node.keywords)
            yield f"drop {ast.unparse(node.args[index])}", ast.unparse(call)


def _shift_decimal(value: str, sign: int, places: int) -> str:
    unit = Decimal(1).scaleb(-places)
    return str((Decimal(value) + sign * unit).quantize(unit))


def _offsets(source: str) -> list[int]:
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _span(node: ast.AST, starts: list[int], source: str) -> tuple[int, int]:
    # ast columns are UTF-8 byte offsets; convert through the line's bytes.
    def at(lineno: int, col: int) -> int:
        line_start = starts[lineno - 1]
        line = source[line_start : starts[lineno]]
        return line_start + len(line.encode("utf-8")[:col].decode("utf-8"))

    return (
        at(node.lineno, node.col_offset),  # type: ignore[attr-defined]
        at(node.end_lineno, node.end_col_offset),  # type: ignore[attr-defined]
    )


def generate(path: str, source: str) -> list[Mutant]:
    """Every constant mutant of the module at `path` (repository-relative) with `source`."""
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    starts = _offsets(source)
    seen = {source}
    mutants: list[Mutant] = []
    for name, value in _assignments(tree):
        if _is_type_alias(name, value):
            continue
        for node in ast.walk(value):
            if not hasattr(node, "lineno"):
                continue
            begin, end = _span(node, starts, source)
            text = source[begin:end]
            for what, new in _replacements(node, parents, text):
                mutated = source[:begin] + new + source[end:]
                if mutated in seen:
                    continue
                seen.add(mutated)
                line = node.lineno  # type: ignore[attr-defined]
                where = f"{path}:{line}:{node.col_offset + 1}"  # type: ignore[attr-defined]
                mutants.append(Mutant(f"{where} {name}: {what}", line, mutated))
    return mutants


def imports(path: str, source: str) -> bool:
    """Does the mutated module even import? (`datetime(2000, 0, 1)` does not.)"""
    module_name = f"_mutant_{uuid.uuid4().hex}"
    module = types.ModuleType(module_name)
    module.__file__ = str(ROOT / path)
    sys.modules[module_name] = module
    try:
        exec(compile(source, str(ROOT / path), "exec"), module.__dict__)
    except Exception:
        return False
    finally:
        del sys.modules[module_name]
    return True


# ---------------------------------------------------------------------------------------------
# Running them


def _copy_tree(into: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, into / name, ignore=ignore)
        else:
            shutil.copy2(src, into / name)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a stale .pyc must never stand in for a mutant
    env.pop("PYTHONPATH", None)
    return env


def _pytest(workdir: Path, tests: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _check_copy_is_imported(workdir: Path, path: str) -> None:
    module = path.removesuffix(".py").replace("/", ".")
    probe = f"import {module} as m; print(m.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=workdir, env=_env(), capture_output=True, text=True
    )
    if Path(out.stdout.strip()).resolve() != (workdir / path).resolve():
        raise SystemExit(f"tests would import {module} from {out.stdout.strip()!r}, not the copy")


def run(path: str, tests: list[str], *, jobs: int, log: Path | None = None) -> list[Result]:
    """Generate the constant mutants of `path` and run `tests` against each, `jobs` at once."""
    original = (ROOT / path).read_text("utf-8")
    candidates = generate(path, original)
    results: list[Result] = []
    valid: list[Mutant] = []
    for mutant in candidates:
        if imports(path, mutant.source):
            valid.append(mutant)
        else:
            results.append(Result(mutant, "invalid"))
    with contextlib.ExitStack() as stack:
        workdirs: list[Path] = []
        for _ in range(max(1, min(jobs, len(valid)))):
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mutconst-")))
            _copy_tree(workdir)
            workdirs.append(workdir)
        if valid:
            _check_copy_is_imported(workdirs[0], path)
            clean = _pytest(workdirs[0], tests)
            if clean.returncode != 0:
                raise SystemExit(f"the unit tests fail without any mutation:\n{clean.stdout}")
        chunks = [valid[i :: len(workdirs)] for i in range(len(workdirs))]

        def worker(workdir: Path, mine: list[Mutant]) -> list[Result]:
            out: list[Result] = []
            target = workdir / path
            for mutant in mine:
                target.write_text(mutant.source, "utf-8")
                try:
                    proc = _pytest(workdir, tests)
                except subprocess.TimeoutExpired:
                    out.append(Result(mutant, "timeout"))
                    continue
                finally:
                    target.write_text(original, "utf-8")
                if proc.returncode in (1, 2, 3):
                    out.append(Result(mutant, "killed"))
                elif proc.returncode == 0:
                    out.append(Result(mutant, "survived"))
                else:
                    raise SystemExit(
                        f"pytest exited {proc.returncode} on {mutant.name}:\n{proc.stdout}"
                    )
            return out

        with ThreadPoolExecutor(len(workdirs)) as pool:
            for part in pool.map(worker, workdirs, chunks):
                results.extend(part)
    results.sort(key=lambda r: candidates.index(r.mutant))
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(f"{r.status:9} {r.mutant.name}\n" for r in results), "utf-8")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="+", metavar="MODULE=TEST[,TEST...]")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--list", action="store_true", help="only list the mutants")
    args = parser.parse_args()
    for spec in args.modules:
        path, _, tests = spec.partition("=")
        if args.list:
            for mutant in generate(path, (ROOT / path).read_text("utf-8")):
                valid = "" if imports(path, mutant.source) else "  (invalid)"
                print(mutant.name + valid)
            continue
        for result in run(path, tests.split(","), jobs=args.jobs):
            print(f"{result.status:9} {result.mutant.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
