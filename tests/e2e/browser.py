"""Debian's Chromium driven by Playwright, for the console's browser tests.

Playwright never downloads a browser here: the tests launch /usr/bin/chromium (`apt-get install
chromium`, as .ci/run does). Without it the browser tests skip with that reason, except in CI
(CI set), where they fail: a journey that silently did not run proves nothing.

Screenshots of each page go to CONTACTO_SCREENSHOTS_DIR when it is set (CI keeps them as
artifacts), else to the session's scratch directory, removed at the end like everything else.
Chromium and Playwright's driver write their profiles under TMPDIR, which points into the
scratch directory too: the suite leaves nothing in /tmp.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
from playwright.async_api import Browser, async_playwright

from tests.support.session import scratch_dir

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE: Final = {"width": 390, "height": 844}
DESKTOP: Final = {"width": 1280, "height": 900}


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs it (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")


def screenshots_dir() -> Path:
    configured = os.environ.get("CONTACTO_SCREENSHOTS_DIR")
    path = Path(configured) if configured else scratch_dir() / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium (a playwright Browser), its temporary files in the scratch dir."""
    require_chromium()
    tmp = scratch_dir() / "browser-tmp"
    tmp.mkdir(exist_ok=True)
    saved = os.environ.get("TMPDIR")
    # The driver (a node process) inherits this environment and so does Chromium.
    os.environ["TMPDIR"] = str(tmp)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                env={**os.environ, "TMPDIR": str(tmp)},
            )
            try:
                yield browser
            finally:
                await browser.close()
    finally:
        if saved is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved
