"""The Procfile, parsed once, for whoever needs its processes: the demo, the tests, the bench.

A line is `name: command`, matched exactly as honcho matches it (other lines, comments
included, are ignored). honcho hands the command to `/bin/sh -c`, so it may start with
`VAR=value` assignments and use `${VAR:-default}`; `Entry.argv` is the command without those
assignments, `Entry.env` the assignments as written, `expand()` what the shell makes of them.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROCFILE = REPO / "Procfile"
# honcho.environ.PROCFILE_LINE
_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$", re.S)
_PARAMETER = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


@dataclass(frozen=True)
class Entry:
    name: str
    command: str  # as written after "name:", what honcho runs through the shell
    argv: tuple[str, ...]  # the command's words, its leading VAR=value assignments left out
    env: dict[str, str] = field(default_factory=dict)  # those assignments, unexpanded

    def option(self, *flags: str) -> str | None:
        """The value of the first of `flags` in argv (`--threads 64` or `--threads=64`)."""
        for i, word in enumerate(self.argv):
            for flag in flags:
                if word == flag and i + 1 < len(self.argv):
                    return self.argv[i + 1]
                if word.startswith(f"{flag}="):
                    return word.split("=", 1)[1]
        return None

    def program(self) -> str:
        """What runs: `M` of `python -m M`, else the command's own name (`dramatiq`)."""
        if not self.argv:
            return ""
        return self.option("-m") or Path(self.argv[0]).name


def parse(text: str) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        name, command = match.group(1), match.group(2).strip()
        words = shlex.split(command, comments=True)
        env: dict[str, str] = {}
        while words and (assignment := _ASSIGNMENT.match(words[0])):
            env[assignment["name"]] = assignment["value"]
            words.pop(0)
        entries[name] = Entry(name, command, tuple(words), env)
    return entries


def read(path: Path = PROCFILE) -> dict[str, Entry]:
    """The processes of the Procfile at `path`, by name, in the file's order."""
    return parse(path.read_text())


def expand(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`$VAR`, `${VAR}` and `${VAR:-default}` as the shell expands them (unset or empty
    VAR: the default, or nothing). The only expansions the Procfile uses."""
    env = os.environ if environ is None else environ

    def one(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"]
        value = env.get(name, "")
        if match["default"] is not None and not value:
            return match["default"]
        return value

    return _PARAMETER.sub(one, text)
