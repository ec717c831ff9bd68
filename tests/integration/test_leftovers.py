"""A test run killed before its teardown leaves nothing the next run sees: its namespaces (and the relays in them) are
removed and the node it cordoned is uncordoned when the next session starts, and a session that is still running keeps
its own (support.namespaces)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.cluster import worker_node
from support.namespaces import SESSION_LABEL, remove_leftovers, remove_namespace, uncordon_node
from support.repo import REPO
from support.tailnet import relay_pods

pytestmark = pytest.mark.integration

RELAY = {"app.kubernetes.io/component": "relay"}
# A test session of its own: makes a test namespace with a pod labelled as a relay, prints the namespace's name, and
# runs until its stdin closes or it is killed.
SESSION = f"""
import sys
from kubernetes import client, config
from support.namespaces import create_namespace
from support.pods import toolbox_pod
config.load_kube_config()
core = client.CoreV1Api()
name = create_namespace(core)
toolbox_pod(core, name, "relay", "exec sleep 3600", labels={RELAY!r})
print(name, flush=True)
sys.stdin.read()
"""


# A test session of its own that cordons the worker as a drain does (support.cluster.cordon), then waits likewise.
CORDONING_SESSION = """
import sys
from support.cluster import cordon, worker_node
cordon(worker_node())
print(worker_node(), flush=True)
sys.stdin.read()
"""


def start_session(program: str = SESSION) -> tuple[subprocess.Popen, str]:
    """A test session running PROGRAM in another process, and what it printed (the namespace it made)."""
    session = subprocess.Popen(
        [sys.executable, "-c", program],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "tests")},
    )
    name = session.stdout.readline().strip()  # type: ignore[union-attr]  # stdout=PIPE
    assert name, f"the other test session printed nothing (exit {session.poll()})"
    return session, name


def relays_in(core, namespace: str) -> list[str]:
    """The relay pods (support.tailnet.relay_pods) of NAMESPACE, by name."""
    return [pod.split("/", 1)[1] for pod in relay_pods(core) if pod.startswith(f"{namespace}/")]


def test_a_killed_runs_namespace_and_relay_are_removed_and_a_running_sessions_are_kept(core, leftovers_removed):
    killed, killed_namespace = start_session()
    running, running_namespace = start_session()
    try:
        killed.kill()
        killed.wait()
        removed = remove_leftovers(core)
        assert killed_namespace in removed, f"the killed run's namespace {killed_namespace} was not removed"
        assert running_namespace not in removed, "the namespace of a session still running was removed"
        assert relays_in(core, killed_namespace) == [], "the killed run's relay is still there"
        assert relays_in(core, running_namespace) == ["relay"], "the running session's relay is gone"
    finally:
        for session in (killed, running):
            session.kill()
            session.wait()
        for namespace in (killed_namespace, running_namespace):
            remove_namespace(core, namespace)


def test_the_node_a_killed_run_cordoned_is_uncordoned(core, leftovers_removed):
    killed, node = start_session(CORDONING_SESSION)
    try:
        assert core.read_node(node).spec.unschedulable, f"the other session did not cordon {node}"
        killed.kill()
        killed.wait()
        assert f"node/{node}" in remove_leftovers(core), f"{node}, cordoned by the killed run, was not uncordoned"
        after = core.read_node(node)
        assert not after.spec.unschedulable, f"{node} is still cordoned"
        assert SESSION_LABEL not in (after.metadata.annotations or {}), "the killed run's mark is still on the node"
    finally:
        killed.kill()
        killed.wait()
        uncordon_node(core, worker_node())
