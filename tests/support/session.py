"""What one test session owns: its ids, its database and key names, and its scratch directory.

Nothing here connects to anything: the unit tier imports it too. The scratch directory holds
everything the session writes (worker logs, demo state, pytest's tmp_path, embedded servers);
tests/conftest.py removes it when the session ends.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

RUN_ID = uuid.uuid4().hex[:10]
TEST_DB = f"contacto_test_{RUN_ID}"
NAMESPACE_PREFIX = f"contacto-test-{RUN_ID}"

_scratch: Path | None = None


def scratch_dir() -> Path:
    """The session's own temporary directory, created on first use.

    Kept short (PostgreSQL's unix socket may live below it: 107 bytes at most).
    """
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix=f"contacto-tests-{RUN_ID}-")).resolve()
    return _scratch


def remove_scratch_dir() -> None:
    global _scratch
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)
        _scratch = None
