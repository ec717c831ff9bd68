"""The tests' namespaces, and the nodes they cordon: which test session made or cordoned one, so that a later session
can tell the leftovers of a run that ended without its teardown (killed, interrupted, its machine powered off) from
those of a session still running.

A session is this host, the pytest process's id and that process's start time (the start time tells a reused process
id from the process that made the namespace). create_namespace labels each namespace with them, and
support.cluster.cordon annotates the node; at its start a session removes the test namespaces and uncordons the nodes
whose session is over (remove_leftovers). A leftover namespace's relay would serve the next tests' paths or leave the
tailnet fixture waiting for it to go; a leftover cordon leaves one node for every relay."""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from support.kube import metadata, name_of, pod_status
from support.wait import wait_for

if TYPE_CHECKING:  # the kubernetes client is imported where it is used: the unit tests of this module need none of it
    from kubernetes import client

SESSION_LABEL = "tailscale-relay-chart.test/session"
HOST_LABEL = "tailscale-relay-chart.test/host"
# create_namespace's names: "it-" and 8 hex digits
TEST_NAMESPACE = re.compile(r"it-[0-9a-f]{8}")


def process_start(pid: int) -> str | None:
    """The start time of process PID (clock ticks since boot, /proc/PID/stat's 22nd field), or None when no process
    has that id."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) is in parentheses and may hold spaces: count the fields after its last ")"
    return stat.rsplit(")", 1)[1].split()[19]


def host() -> str:
    """This host's name as a label value (letters, digits, '-', '_' and '.'; at most 63 characters)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:63].strip("-_.") or "unknown"


def session_labels(pid: int | None = None) -> dict[str, str]:
    """The labels naming the session of process PID (by default this one) on this host."""
    pid = os.getpid() if pid is None else pid
    return {SESSION_LABEL: f"{pid}-{process_start(pid)}", HOST_LABEL: host()}


def session_over(marks: dict[str, str]) -> str | None:
    """Why the test session MARKS (session_labels, as labels or annotations) is over, or None when it may still be
    running: this host's process is alive, or another host's session made it."""
    if marks.get(HOST_LABEL) != host():
        return None
    pid, _, start = marks.get(SESSION_LABEL, "").partition("-")
    if not pid.isdigit() or process_start(int(pid)) != start:
        return f"its test session (process {pid} on this host) is over"
    return None


def leftover_reason(name: str, labels: dict[str, str] | None) -> str | None:
    """Why namespace NAME (with LABELS) is a leftover of a test session that is over, or None when it is not a test
    namespace, or its session may still be running (session_over)."""
    if not TEST_NAMESPACE.fullmatch(name):
        return None
    labels = labels or {}
    if SESSION_LABEL not in labels:
        return "a test namespace with no session label (made before test sessions labelled theirs)"
    return session_over(labels)


def cordon_left_reason(node: client.V1Node) -> str | None:
    """Why NODE (a V1Node) is cordoned by a test session that is over, or None: not cordoned, cordoned by no test
    session (a person's cordon is theirs), or by one that may still be running."""
    annotations = metadata(node).annotations or {}
    if not (node.spec and node.spec.unschedulable) or SESSION_LABEL not in annotations:
        return None
    return session_over(annotations)


def create_namespace(core: client.CoreV1Api) -> str:
    """Creates a test namespace (a fresh TEST_NAMESPACE name, labelled with this session) and returns its name."""
    from kubernetes import client

    name = f"it-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=session_labels())))
    return name


def delete_cluster_scoped_objects_of(api: client.ApiClient, namespace: str) -> None:
    """Deletes the cluster-scoped objects Helm made for the releases of NAMESPACE (the chart's admission policies and
    their bindings, found by Helm's release-namespace annotation): they outlive the namespace, and a warm test
    cluster would gather them run after run."""
    from kubernetes import client

    admission = client.AdmissionregistrationV1Api(api)
    for list_objects, delete in (
        (admission.list_validating_admission_policy_binding, admission.delete_validating_admission_policy_binding),
        (admission.list_validating_admission_policy, admission.delete_validating_admission_policy),
    ):
        for item in list_objects().items:
            if (metadata(item).annotations or {}).get("meta.helm.sh/release-namespace") == namespace:
                delete(name_of(item))


def remove_namespace(core: client.CoreV1Api, name: str) -> None:
    """Deletes namespace NAME and the cluster-scoped objects of its releases, and waits until its pods are gone."""
    from kubernetes import client

    try:
        core.delete_namespace(name, propagation_policy="Background")
    except client.ApiException as error:
        # 409: already terminating (a run killed during its teardown), 404: gone since it was listed
        if error.status not in (404, 409):
            raise
    delete_cluster_scoped_objects_of(core.api_client, name)
    # Nothing of a test may run on into the next (a relay still terminating would serve its path too): wait until
    # the namespace's pods are gone. The namespace object itself goes some seconds later (the namespace controller
    # requeues its cleanup: about 10 s here, which 60-odd tests would pay again each).
    wait_for(
        lambda: [f"{name_of(p)} {pod_status(p).phase}" for p in core.list_namespaced_pod(name).items],
        f"the pods of namespace {name} to be gone (seen: the pods left)",
        300,
        until=lambda left: not left,
    )


def uncordon_node(core: client.CoreV1Api, name: str) -> None:
    """Makes node NAME schedulable again, as `kubectl uncordon` does, and drops the cordoning session's marks."""
    core.patch_node(
        name, {"spec": {"unschedulable": False}, "metadata": {"annotations": {SESSION_LABEL: None, HOST_LABEL: None}}}
    )


def remove_leftovers(core: client.CoreV1Api) -> list[str]:
    """Removes what test sessions that are over left on the (warm, reused) test cluster, when a run was killed before
    its teardown: their namespaces (leftover_reason), whose relays would serve the next run's paths or keep every
    tailnet test waiting for them to go, and their cordons (cordon_left_reason), which leave one node for every
    relay. Returns what it removed: namespace names and "node/NAME"."""
    removed: list[str] = []
    for node in core.list_node().items:
        reason = cordon_left_reason(node)
        if reason is not None:
            print(f"\nuncordoning node {name_of(node)}, cordoned by an earlier test run: {reason}")
            uncordon_node(core, name_of(node))
            removed.append(f"node/{name_of(node)}")
    for item in core.list_namespace().items:
        name = name_of(item)
        reason = leftover_reason(name, metadata(item).labels)
        if reason is not None:
            print(f"\nremoving namespace {name}, left by an earlier test run: {reason}")
            remove_namespace(core, name)
            removed.append(name)
    return removed
