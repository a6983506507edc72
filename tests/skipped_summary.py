"""A loud line at the end of a test run when whole kinds of tests were skipped.

A skip is easy to miss among hundreds of dots: a newcomer without Chromium runs `make test`, sees
"passed", and never learns that the web page was not tested. `pytest_terminal_summary` (both hooks imported by
tests/conftest.py) counts the skipped tests of each watched marker (`browser`) and prints, after
pytest's own summary, how many were skipped, why, and how to run them. With
`CARID_REQUIRE_BROWSER=1` a skipped browser test fails the run instead (exit status 1).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

# marker -> what a user misses when its tests are skipped, and how to get them
WATCHED: dict[str, tuple[str, str]] = {
    "browser": (
        "the web page was NOT tested in a browser",
        "install Debian's chromium (apt-get install chromium) and the playwright package",
    ),
}
REQUIRE_ENV = "CARID_REQUIRE_BROWSER"


def _marker_of(report: pytest.TestReport) -> str | None:
    """The watched marker of a skipped test; a whole module skipped at import (a missing package,
    no keywords on its report) counts by its file name, tests/.../test_<marker>*.py."""
    keywords = getattr(report, "keywords", {}) or {}
    file_name = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
    return next((name for name in WATCHED if name in keywords or file_name.startswith(f"test_{name}")), None)


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def skipped_by_marker(reports: list[pytest.TestReport]) -> dict[str, Counter[str]]:
    """marker -> Counter of skip reasons, for the skipped reports of the watched markers."""
    found: dict[str, Counter[str]] = {}
    for report in reports:
        marker = _marker_of(report)
        if marker is not None:
            found.setdefault(marker, Counter())[_reason(report)] += 1
    return found


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    found = skipped_by_marker(terminalreporter.stats.get("skipped", []))
    for marker, reasons in found.items():
        missed, remedy = WATCHED[marker]
        count = sum(reasons.values())
        terminalreporter.write_sep("!", f"WARNING: {count} {marker} test(s) skipped: {missed}", yellow=True)
        for reason, times in reasons.most_common():
            terminalreporter.write_line(f"  {times} x {reason}")
        terminalreporter.write_line(f"  to run them: {remedy}")
    if "browser" in found and os.environ.get(REQUIRE_ENV) == "1":
        terminalreporter.write_line(f"{REQUIRE_ENV}=1: the skipped browser tests fail this run", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With CARID_REQUIRE_BROWSER=1, a skipped browser test turns a passing run into a failing one."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or os.environ.get(REQUIRE_ENV) != "1":
        return
    if "browser" in skipped_by_marker(reporter.stats.get("skipped", [])) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
