"""scripts/install-tools' background build of the tools only a few tests and scripts/release need (oras, cosign,
kube-score, promtool, cyclonedx-gomod), which scripts/setup starts and does not wait for, and the suite's side of
it: its state file is what those tests wait on, a failure or a stop is written there with the step it happened in,
and those tests run after every other test but the Flux and Argo CD ones. A fake `go` stands in for the compiler:
like the real one it writes the binary named by -o, or fails with a message on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.background import background_state, wait_for_later_tools
from support.repo import REPO
from support.wait import wait_for

INSTALL_TOOLS = REPO / "scripts" / "install-tools"
LATER = ["oras", "cosign", "kube-score", "promtool", "cyclonedx-gomod"]

FAKE_GO = r"""#!/bin/sh
case "$1" in
  env) echo go1.0-fake ;;
  build)
    if [ "$FAKE_GO" = fail ]; then echo "fake go: cannot build $*" >&2; exit 1; fi
    # a build that lasts until the test opens the gate
    while [ -n "$FAKE_GO_GATE" ] && [ ! -e "$FAKE_GO_GATE" ]; do sleep 0.1; done
    out=""
    while [ $# -gt 0 ]; do [ "$1" = -o ] && out="$2"; shift; done
    printf '#!/bin/sh\necho fake tool\n' >"$out" && chmod +x "$out" ;;
  *) echo "fake go: $1 is not faked" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def tools_env(tmp_path):
    """An environment in which scripts/install-tools keeps its tools and state under tmp_path and builds with the
    fake go; gives it and the directory that stands for .tools, and stops a build left running."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text(FAKE_GO)
    go.chmod(0o755)
    tools = tmp_path / "tools"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "TSRELAY_CACHE": str(tmp_path / "cache"),
        "TSRELAY_TOOLS": str(tools),
        "FAKE_GO_GATE": str(tmp_path / "gate"),
    }
    yield env, tools
    # a test that failed before it opened the gate must not leave its build waiting there
    install_tools(env, "stop")


def install_tools(env, *args, timeout=60):
    return subprocess.run([str(INSTALL_TOOLS), *args], env=env, capture_output=True, text=True, timeout=timeout)


def state_of(tools):
    return json.loads((tools / "later-tools.json").read_text())


def started(tools):
    """The state once the background build has written its own pid."""
    return wait_for(
        lambda: state_of(tools),
        "the background build to write its pid",
        30,
        until=lambda state: state["pid"] > 0,
        interval=0.2,
        tolerate=(json.JSONDecodeError,),
    )


def test_start_later_returns_while_the_build_runs_and_wait_returns_once_every_later_tool_is_installed(tools_env):
    env, tools = tools_env
    start = install_tools(env, "start-later")
    assert start.returncode == 0, start.stderr
    running = started(tools)
    assert running["state"] == "running" and running["tools"] == LATER, running
    assert not (tools / "bin" / "oras").exists(), "the build is held at its gate: nothing should be installed yet"
    # its own session is its own scheduler autogroup: only the group's nice puts it below the foreground's work
    autogroup = open(f"/proc/{running['pid']}/autogroup").read()
    assert autogroup.strip().endswith("nice 19"), f"the build should run at the lowest CPU priority: {autogroup}"
    assert os.getpriority(os.PRIO_PROCESS, running["pid"]) == 19, "the build should run at nice 19"
    (tools.parent / "gate").touch()
    waited = install_tools(env, "wait")
    assert waited.returncode == 0, waited.stderr
    assert state_of(tools)["state"] == "ready", state_of(tools)
    missing = [name for name in LATER if not os.access(tools / "bin" / name, os.X_OK)]
    assert not missing, f"wait returned but these later tools are not installed: {missing}"


def test_wait_for_a_tool_of_the_first_group_returns_while_the_later_ones_build(tools_env):
    env, tools = tools_env
    assert install_tools(env, "start-later").returncode == 0
    started(tools)
    waited = install_tools(env, "wait", "helm", timeout=20)
    assert waited.returncode == 0, waited.stderr
    assert state_of(tools)["state"] == "running", "the build is held at its gate: it should still run"


def test_a_failed_background_build_leaves_failed_and_wait_fails_with_the_builds_error(tools_env):
    env, tools = tools_env
    env = {**env, "FAKE_GO": "fail"}
    assert install_tools(env, "start-later").returncode == 0
    waited = install_tools(env, "wait")
    assert waited.returncode != 0, "wait must fail when the background build failed"
    assert "fake go: cannot build" in waited.stderr, f"wait should show the end of the build's log: {waited.stderr}"
    state = state_of(tools)
    assert state["state"] == "failed", state
    assert "building oras cosign kube-score promtool cyclonedx-gomod: failed (exit 1)" in state["detail"], state


def test_the_tests_wait_for_a_failed_build_of_their_tool_and_fail_with_its_log(tools_env):
    env, tools = tools_env
    env = {**env, "FAKE_GO": "fail"}
    assert install_tools(env, "start-later").returncode == 0
    with pytest.raises(pytest.fail.Exception) as failure:
        wait_for_later_tools("promtool", path=tools / "later-tools.json", timeout=60)
    message = str(failure.value)
    assert "scripts/install-tools start-later did not build oras" in message and "it says failed" in message, message
    assert "fake go: cannot build" in message, f"the wait should show the end of the build's log: {message}"


def test_a_tool_the_background_build_does_not_make_is_not_waited_for(tmp_path):
    # a build that says running, by a live process with the run's command line, that never ends
    build = subprocess.Popen(["bash", "-c", 'exec -a "install-tools later" sleep 120'])
    try:
        path = tmp_path / "later-tools.json"
        path.write_text(
            json.dumps(
                {
                    "state": "running",
                    "pid": build.pid,
                    "log": str(tmp_path / "log"),
                    "since": 0,
                    "detail": "building",
                    "run": "install-tools later",
                    "tools": LATER,
                }
            )
        )
        wait_for(
            lambda: background_state(path)["state"],
            "the fake build to look alive",
            10,
            until=lambda state: state == "running",
            interval=0.1,
        )
        wait_for_later_tools("helm", path=path, timeout=1)
        with pytest.raises(pytest.fail.Exception, match="waited 1s for scripts/install-tools start-later"):
            wait_for_later_tools("cosign", path=path, timeout=1)
    finally:
        build.kill()
        build.wait()


def test_stop_ends_a_background_build_and_says_where_it_stopped(tools_env):
    env, tools = tools_env
    assert install_tools(env, "start-later").returncode == 0
    # past its pid, to its first step: on a busy machine a stop can come between the two (seen: "during: starting")
    running = wait_for(
        lambda: state_of(tools),
        "the background build to begin building",
        30,
        until=lambda state: state["pid"] > 0 and state["detail"].startswith("building"),
        interval=0.2,
        tolerate=(json.JSONDecodeError,),
    )
    assert install_tools(env, "stop").returncode == 0
    state = state_of(tools)
    assert state["state"] == "failed", state
    assert "stopped by SIGTERM during: building oras" in state["detail"], state
    assert not os.path.exists(f"/proc/{running['pid']}"), "stop must end the build's process"


def test_the_tests_that_need_the_later_tools_are_collected_after_the_rest_and_before_flux_and_argocd():
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    files = [line.split("::")[0] for line in collected.stdout.splitlines() if "::" in line]
    later = ("tests/integration/test_chart_distribution.py", "tests/unit/test_alerts.py", "tests/unit/test_scanners.py")
    gitops = ("tests/integration/test_flux.py", "tests/integration/test_argocd.py")
    kinds = [2 if f in gitops else 1 if f in later else 0 for f in files]
    assert kinds == sorted(kinds), (
        "the order should be: the rest, then " + ", ".join(later) + ", then Flux and "
        "Argo CD; it is:\n" + "\n".join(dict.fromkeys(files))
    )
    assert set(later) <= set(files), f"tests that need the later tools were not collected: {later}"
