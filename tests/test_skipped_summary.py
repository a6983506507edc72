"""The end-of-run warning when browser tests were skipped (tests/skipped_summary.py), checked on a
small pytest run in a child process: one browser test that skips, one plain test that passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

INNER_TESTS = """
import pytest

@pytest.mark.browser
def test_page():
    pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")

def test_plain():
    assert True
"""

INNER_CONFTEST = "from tests.skipped_summary import pytest_sessionfinish, pytest_terminal_summary\n"


def run_inner(
    tmp_path: Path, require: bool, with_browser_skip: bool = True
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST, encoding="utf-8")
    tests = INNER_TESTS if with_browser_skip else INNER_TESTS.replace("@pytest.mark.browser", "")
    (tmp_path / "test_inner.py").write_text(tests, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CARID_REQUIRE_BROWSER": "1" if require else "0"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "markers=browser: x"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("require", [False, True])
def test_skipped_browser_tests_are_named_at_the_end_of_the_run(tmp_path: Path, require: bool) -> None:
    result = run_inner(tmp_path, require)
    lines = result.stdout.splitlines()
    warning = next(i for i, line in enumerate(lines) if "WARNING: 1 browser test(s) skipped" in line)
    assert "the web page was NOT tested in a browser" in lines[warning]
    assert "1 x /usr/bin/chromium is not installed (apt-get install chromium)" in lines[warning + 1]
    assert "apt-get install chromium" in lines[warning + 2] and "playwright" in lines[warning + 2]
    assert result.returncode == (1 if require else 0), result.stdout


def test_no_warning_when_no_browser_test_was_skipped(tmp_path: Path) -> None:
    result = run_inner(tmp_path, require=True, with_browser_skip=False)
    assert "WARNING" not in result.stdout and result.returncode == 0, result.stdout


def test_a_module_skipped_at_import_counts_by_its_file_name(tmp_path: Path) -> None:
    """playwright missing: tests/serve/test_browser.py skips as a whole at import."""
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST, encoding="utf-8")
    (tmp_path / "test_browser_page.py").write_text(
        'import pytest\npytest.importorskip("no_such_package_x", reason="playwright is not installed")\n',
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "WARNING: 1 browser test(s) skipped" in result.stdout, result.stdout
    assert "playwright is not installed" in result.stdout
