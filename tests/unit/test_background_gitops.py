"""scripts/images/gitops, which scripts/cluster up runs in the background to build and deploy Flux and Argo CD, and
the suite's side of it: its state file is what the Flux and Argo CD tests wait on, a failure or a stop is written
there with the step it happened in, and those tests run after every other test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.background import background_state
from support.cluster import wait_for_gitops
from support.repo import REPO
from support.wait import wait_for

GITOPS = REPO / "scripts" / "images" / "gitops"
CLUSTER = "gitops-unit"


@pytest.fixture
def gitops_env(tmp_path):
    """An environment in which scripts/images/gitops keeps its state under tmp_path, and a docker whose daemon
    never answers: `docker info` fails at once (FAKE_DOCKER=fail) or hangs (FAKE_DOCKER=hang)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(
        '#!/bin/sh\n[ "$FAKE_DOCKER" = hang ] && exec sleep 300\n'
        'echo "Cannot connect to the Docker daemon" >&2\nexit 1\n'
    )
    docker.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "TSRELAY_CACHE": str(tmp_path / "cache"),
        "KIND_CLUSTER_NAME": CLUSTER,
        "FAKE_DOCKER": "fail",
    }
    env.pop("KUBECONFIG", None)
    return env, tmp_path / "cache" / f"gitops-{CLUSTER}.json"


def gitops(env, *args, timeout=60):
    return subprocess.run([str(GITOPS), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_failed_run_leaves_failed_and_the_step_it_was_in(gitops_env):
    env, state_file = gitops_env
    result = gitops(env, "run")
    assert result.returncode != 0, "a run without a docker daemon must fail"
    state = json.loads(state_file.read_text())
    assert state["state"] == "failed", state
    assert "starting: failed (exit 1)" in state["detail"], state


def test_a_background_run_returns_at_once_and_the_tests_wait_see_its_failure_with_its_log(gitops_env, monkeypatch):
    env, state_file = gitops_env
    result = gitops(env, "start")
    assert result.returncode == 0, result.stderr
    assert json.loads(state_file.read_text())["state"] in ("running", "failed"), "start must leave a state behind"
    monkeypatch.setenv("GITOPS_STATE", str(state_file))
    with pytest.raises(pytest.fail.Exception) as failure:
        wait_for_gitops(timeout=60)
    message = str(failure.value)
    assert "scripts/images/gitops did not build and deploy Flux and Argo CD" in message, message
    assert "it says failed" in message, message
    assert "docker daemon is not reachable" in message, f"the wait should show the end of the run's log: {message}"


def test_stop_ends_a_background_run_and_says_where_it_stopped(gitops_env):
    env, state_file = gitops_env
    env = {**env, "FAKE_DOCKER": "hang"}
    assert gitops(env, "start").returncode == 0
    running = wait_for(
        lambda: json.loads(state_file.read_text()),
        "the background run to write its pid",
        30,
        until=lambda state: state["pid"] > 0,
        interval=0.2,
        tolerate=(json.JSONDecodeError,),
    )
    assert running["state"] == "running", running
    assert gitops(env, "stop").returncode == 0
    state = json.loads(state_file.read_text())
    assert state["state"] == "failed", state
    assert "stopped by SIGTERM during: starting" in state["detail"], state
    assert not os.path.exists(f"/proc/{running['pid']}"), "stop must end the run's process"


def test_a_run_whose_process_is_gone_while_it_says_running_counts_as_failed(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(
            {
                "state": "running",
                "pid": int(gone.stdout),
                "log": str(tmp_path / "log"),
                "since": 0,
                "detail": "deploying Flux (scripts/images/flux)",
            }
        )
    )
    state = background_state(path)
    assert state["state"] == "failed", state
    assert "deploying Flux" in state["detail"], state


def test_the_flux_and_argocd_tests_are_collected_after_every_other_test():
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/integration"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    gitops_files = ("tests/integration/test_flux.py", "tests/integration/test_argocd.py")
    first = next(i for i, test_id in enumerate(ids) if test_id.startswith(gitops_files))
    assert first > 0 and all(test_id.startswith(gitops_files) for test_id in ids[first:]), (
        "the Flux and Argo CD tests should come last; the order is:\n" + "\n".join(ids)
    )
    assert {test_id.split("::")[0] for test_id in ids[first:]} == set(gitops_files), ids[first:]
