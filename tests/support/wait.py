"""The one wait of the tests and the benchmark: poll until something holds, and when it never does, say what was
awaited and what was seen last."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_for(
    observe: Callable[[], Any],
    what: str,
    timeout: float,
    *,
    until: Callable[[Any], bool] = bool,
    interval: float = 2.0,
    tolerate: tuple[type[BaseException], ...] = (),
    explain: Callable[[], str] | None = None,
) -> Any:
    """Calls OBSERVE every INTERVAL seconds until UNTIL(its result) is true (by default: until the result is truthy)
    and returns that result. An exception of a TOLERATE type counts as not yet (a 404 before an object exists).
    After TIMEOUT seconds the test fails with WHAT, what OBSERVE returned (or raised) last, and EXPLAIN()."""
    deadline = time.monotonic() + timeout
    seen: Any = "nothing (never observed)"
    while True:
        try:
            seen = observe()
            if until(seen):
                return seen
        except tolerate as error:
            seen = f"{type(error).__name__}: {str(error).strip()[:300]}"
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    details = ""
    if explain is not None:
        try:
            details = "\n" + explain()
        except Exception as error:  # the explanation must not hide the failure it explains
            details = f"\n(could not explain: {error})"
    pytest.fail(f"waited {timeout:g}s for {what}; saw last: {seen!r}{details}")
