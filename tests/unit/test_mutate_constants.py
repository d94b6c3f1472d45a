"""tools/mutate_constants.py (make mutation) mutates what it claims to, and nothing else."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOL = Path(__file__).resolve().parents[2] / "tools" / "mutate_constants.py"

SOURCE = """
import re
from decimal import Decimal
from typing import Final, Literal

LIMIT: Final = 3
FRACTIONS = {0: Decimal("0.75")}
FIELDS = frozenset({"a"}) | {"b"}
CODE = re.compile(r"[A-Z]{3}", re.ASCII)
Kind = Literal["x", "y"]


class Hold:
    reason: str = "why"
    flag = True


def body() -> int:
    return 5  # mutmut's business, not this tool's
"""


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutate_constants", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_constant_is_mutated_once_per_operator_and_functions_are_not() -> None:
    mutants = load_tool().generate("m.py", SOURCE)
    assert [m.name.split(" ", 1)[1] for m in mutants] == [
        "LIMIT: 3 -> 4",
        "LIMIT: 3 -> 2",
        "FRACTIONS: drop entry 0",
        "FRACTIONS: 0 -> 1",
        "FRACTIONS: 0 -> -1",
        "FRACTIONS: \"0.75\" -> '0.76'",
        "FRACTIONS: \"0.75\" -> '0.74'",
        "FIELDS: frozenset({\"a\"}) | {\"b\"} -> frozenset({'a'}) & {'b'}",
        "FIELDS: drop 'b'",
        "FIELDS: drop 'a'",
        "FIELDS: \"b\" -> 'XXbXX'",
        "FIELDS: \"a\" -> 'XXaXX'",
        "CODE: drop re.ASCII",
        "CODE: regex [A-Z] -> [B-Z]",
        "CODE: regex [A-Z] -> [A-Y]",
        "CODE: regex {3} -> {4}",
        "CODE: regex {3} -> {2}",
        "Hold.reason: \"why\" -> 'XXwhyXX'",
        "Hold.flag: True -> False",
    ]
    assert all("return 5" in m.source for m in mutants)
    by_name = {m.name.split(" ", 1)[1]: m for m in mutants}
    assert "CODE = re.compile('[A-Y]{3}', re.ASCII)" in by_name["CODE: regex [A-Z] -> [A-Y]"].source
    assert "LIMIT: Final = 2\n" in by_name["LIMIT: 3 -> 2"].source


def test_a_mutant_that_cannot_be_imported_is_told_apart() -> None:
    tool = load_tool()
    assert tool.imports("m.py", "from datetime import datetime\nX = datetime(2000, 1, 1)\n")
    assert not tool.imports("m.py", "from datetime import datetime\nX = datetime(2000, 0, 1)\n")
