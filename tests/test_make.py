"""``make test`` tells a new user what it will install before it installs anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make") or "make"
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


#: What an outer make (``make test BROWSER=skip``) passes down to every make it starts: its
#: command-line variables would override the ones each test sets.
_OUTER_MAKE = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if key not in _OUTER_MAKE}
    return subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), *args],
                          capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def test_make_test_announces_the_browser_install_first_and_how_to_skip_it() -> None:
    missing = "CHROMIUM=/nonexistent/chromium"
    notice = make("browser-notice", missing)
    assert notice.returncode == 0, notice.stderr
    assert "chromium and chromium-driver" in notice.stdout
    assert "about 130 system packages" in notice.stdout
    assert "make test BROWSER=skip" in notice.stdout
    # ...before anything else `make test` does (the venv, lint, apt-get, pytest).
    plan = make("-n", "test", missing).stdout
    assert plan.index("about 130 system packages") < plan.index("ruff check")
    assert plan.index("about 130 system packages") < plan.index("apt-get install")
    # With the browser present there is nothing to announce.
    present = make("browser-notice", f"CHROMIUM={sys.executable}",
                   f"CHROMEDRIVER={sys.executable}")
    assert present.stdout == ""


def test_browser_skip_installs_nothing_and_skips_the_browser_tests() -> None:
    skipped = make("browser", "BROWSER=skip", "CHROMIUM=/nonexistent/chromium",
                   env={"PATH": "/nonexistent"})  # no apt-get, no sudo: would fail if tried
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "FANOUT_BROWSER=skip" in make("-n", "test", "BROWSER=skip").stdout
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "test_dashboard_browser.py")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "FANOUT_BROWSER": "skip"})
    assert run.returncode == 0, run.stdout
    assert "skipped" in run.stdout and "BROWSER=skip" in run.stdout
    assert "passed" not in run.stdout
