"""What a pod's container uses, read as the kubelet reads it: CPU and working-set memory from the container runtime
on its kind node (crictl stats), for the benchmarks."""

from __future__ import annotations

import json
import subprocess
import time
from typing import NamedTuple

from kubernetes import client


class ContainerUsage(NamedTuple):
    cid: str  # the container's id in its node's runtime
    cpu_ns: int  # core-nanoseconds, cumulative since the container started
    memory_bytes: int  # working set (what the kubelet compares with the memory limit)
    at: float  # time.monotonic() when read


def container_usage(pod: str, namespace: str, container: str = "tailscale") -> ContainerUsage:
    """CONTAINER of POD's usage now; IndexError while it has no running container."""
    node = client.CoreV1Api().read_namespaced_pod(pod, namespace).spec.node_name  # type: ignore[union-attr]
    assert node, f"pod {namespace}/{pod} is not scheduled"
    listed = subprocess.run(
        [
            "docker",
            "exec",
            node,
            "crictl",
            "ps",
            "-q",
            "--name",
            f"^{container}$",
            "--label",
            f"io.kubernetes.pod.name={pod}",
            "--label",
            f"io.kubernetes.pod.namespace={namespace}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    cid = listed[0]
    stats = json.loads(
        subprocess.run(
            ["docker", "exec", node, "crictl", "stats", "-o", "json", "--id", cid],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["stats"][0]
    return ContainerUsage(
        cid=cid,
        cpu_ns=int(stats["cpu"]["usageCoreNanoSeconds"]["value"]),
        memory_bytes=int(stats["memory"]["workingSetBytes"]["value"]),
        at=time.monotonic(),
    )
