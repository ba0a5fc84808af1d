"""Headless Chromium for the tests that drive pages: Debian's ``chromium`` through Playwright.

``scripts/setup.sh`` installs the ``chromium`` package like ``redis-server``; Playwright (PyPI)
drives it through ``executable_path`` and never downloads a browser of its own.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Browser, sync_playwright


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for the block; fails (not skips) where it is not installed."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: run scripts/setup.sh (make test does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()
