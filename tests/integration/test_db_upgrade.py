"""`db upgrade` on a database of its own: says whether it created it and what it applied."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.cli.main import main
from common.db.schema import head_revision, revisions_between
from config.settings import get_settings
from tests.support.databases import fresh_database


@pytest.fixture
def absent_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with fresh_database(create=False) as (name, url):
        monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        yield name
    get_settings.cache_clear()


def upgrade(capsys: pytest.CaptureFixture[str], *revision: str) -> str:
    assert main(["db", "upgrade", *revision]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def test_creates_migrates_then_has_nothing_to_do(
    absent_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name, head = absent_database, head_revision()
    every = ", ".join(revisions_between(None, head))
    assert every.startswith("0001, 0002, 0003, 0004")
    assert upgrade(capsys) == f"created database {name}; applied {every} (now at {head})\n"
    assert upgrade(capsys) == f"database {name} is up to date ({head}); nothing applied\n"


def test_applies_only_what_is_missing(
    absent_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name, head = absent_database, head_revision()
    assert upgrade(capsys, "0002") == f"created database {name}; applied 0001, 0002 (now at 0002)\n"
    rest = ", ".join(revisions_between("0002", head))
    assert upgrade(capsys) == f"database {name}: applied {rest} (now at {head})\n"


def test_an_unknown_revision_is_refused(
    absent_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade", "9999"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("contacto-billing: error: migration: ") and err.count("\n") == 1
