"""Steps that scripts run in the background and describe in a JSON state file (scripts/lib/background.sh): Flux and
Argo CD (scripts/images/gitops, started by scripts/cluster up) and the tools only a few tests need
(scripts/install-tools start-later, started by scripts/setup). The tests that need one wait on its state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.repo import REPO
from support.wait import wait_for

# The state of scripts/install-tools' background build of the later tools (its BACKGROUND_STATE)
LATER_TOOLS_STATE = REPO / ".tools" / "later-tools.json"
# How long a background step may take on a fresh machine: large Go builds at the lowest CPU priority beside the
# cluster's start and the rest of the suite, which runs first (the tests that wait are ordered last: tests/conftest.py).
BACKGROUND_TIMEOUT = 2700


def background_state(path: Path) -> dict:
    """The state a background step writes (JSON: state running|ready|failed, pid, log, detail, run). A step whose
    process is gone, or runs something else, while it says running was killed: failed."""
    state = json.loads(path.read_text())
    pid = state.get("pid") or 0
    if state.get("state") == "running" and pid:
        try:
            alive = state.get("run", "") in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            alive = False
        if not alive:
            state = {
                **state,
                "state": "failed",
                "detail": f"its process {pid} is gone (killed?) while: {state['detail']}",
            }
    return state


def log_tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def wait_for_background(path: Path, script: str, what: str, timeout: float = BACKGROUND_TIMEOUT) -> dict:
    """Waits until the background step of SCRIPT, which does WHAT, has ended (its state file PATH); fails at once
    when it failed, with the end of its log."""

    def explain() -> str:
        state = json.loads(path.read_text()) if path.exists() else {}
        return f"the end of its log ({state.get('log', '?')}):\n{log_tail(state['log'])}" if "log" in state else ""

    state = wait_for(
        lambda: background_state(path),
        f"{script} to {what} (state {path})",
        timeout,
        until=lambda seen: seen.get("state") != "running",
        interval=5,
        tolerate=(FileNotFoundError, json.JSONDecodeError),
        explain=explain,
    )
    if state.get("state") != "ready":
        pytest.fail(f"{script} did not {what}: it says {state.get('state')}: {state.get('detail')}\n{explain()}")
    return state


def wait_for_later_tools(
    name: str | None = None, path: Path = LATER_TOOLS_STATE, timeout: float = BACKGROUND_TIMEOUT
) -> None:
    """Waits for scripts/install-tools' background build of the later tools when it builds NAME (any of them when
    NAME is None). Returns at once when there is no such build: a setup that built every tool in the foreground."""
    if not path.exists():
        return
    tools = json.loads(path.read_text()).get("tools", [])
    if name is None or name in tools:
        wait_for_background(path, "scripts/install-tools start-later", f"build {', '.join(tools)}", timeout)
