"""Installs the chart into a test namespace with the cluster's images, and reads relays back."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client
from kubernetes.stream import stream

from support.cluster import cluster_values
from support.helm import run_helm
from support.kube import (
    container_status,
    event_time,
    load_balancer_ingress,
    metadata,
    name_of,
    node_name,
    pod_status,
)
from support.render import chart_names
from support.repo import CHART, HELM
from support.values import deep_merge, endpoint
from support.wait import wait_for


class Release:
    """One Helm release of the chart in one namespace. CHART is what helm installs (the chart directory, a package,
    oci://…, repo/name), HELM_BINARY which helm (Helm 4 by default; .tools/bin/helm3 for Helm 3) and BASE_VALUES()
    the values every call's go over (cluster_values)."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str = "relay",
        chart: str = str(CHART),
        helm_binary: str = HELM,
        chart_args: tuple[str, ...] = (),
        base_values: Callable[[], dict] = cluster_values,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace
        self.name = name
        # the names the chart gives this release's objects, from its render (support.render.ChartNames)
        self.names = chart_names(name)
        self.fullname = self.names.fullname
        self.chart = chart
        self.helm_binary = helm_binary
        self.chart_args = chart_args
        # what the release's values go over: the cluster's images and credentials (another chart version may need
        # them in its own words)
        self.base_values = base_values

    def helm(
        self, *args: str, values: dict | None = None, check: bool = True, timeout: int = 600
    ) -> subprocess.CompletedProcess[str]:
        """Runs helm in the release's namespace; VALUES are merged over the cluster's images and credentials."""
        merged = deep_merge(self.base_values(), values) if values is not None else None
        result = run_helm(*args, "--namespace", self.namespace, values=merged, timeout=timeout, helm=self.helm_binary)
        if check and result.returncode != 0:
            pytest.fail(f"helm {' '.join(args[:2])} failed:\n{result.stdout}\n{result.stderr}\n{self.describe()}")
        return result

    def install(
        self, values: dict | None = None, check: bool = True, wait: bool = True, timeout: str = "5m"
    ) -> subprocess.CompletedProcess[str]:
        return self.helm(
            "install",
            self.name,
            self.chart,
            *self.chart_args,
            "--timeout",
            timeout,
            *(["--wait"] if wait else []),
            values=values or {},
            check=check,
        )

    def upgrade(self, values: dict | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.helm(
            "upgrade",
            self.name,
            self.chart,
            *self.chart_args,
            "--wait",
            "--timeout",
            "5m",
            values=values or {},
            check=check,
        )

    def rollback(self, revision: int) -> subprocess.CompletedProcess[str]:
        return self.helm("rollback", self.name, str(revision), "--wait", "--timeout", "5m")

    def test(self) -> subprocess.CompletedProcess[str]:
        return self.helm("test", self.name, "--timeout", "5m", "--logs")

    def uninstall(self) -> subprocess.CompletedProcess[str]:
        return self.helm("uninstall", self.name, "--wait", "--timeout", "5m")

    def status(self) -> dict:
        return json.loads(self.helm("status", self.name, "--output", "json").stdout)

    def pod(self, index: int) -> str:
        return self.names.pod(index)

    def exec(self, pod: str, command: list[str], container: str = "tailscale") -> str:
        return stream(
            self.core.connect_get_namespaced_pod_exec,
            pod,
            self.namespace,
            container=container,
            command=command,
            stderr=True,
            stdin=False,
            stdout=True,
            tty=False,
            _preload_content=True,
        )

    def tailscale(self, pod: str, *args: str) -> str:
        return self.exec(pod, ["tailscale", f"--socket={self.names.socket}", *args]).strip()

    def relay_settings(self, pod: str) -> tuple[str, set[str]]:
        port = self.tailscale(pod, "get", "relay-server-port")
        endpoints = self.tailscale(pod, "get", "relay-server-static-endpoints")
        return port, {e for e in endpoints.split(",") if e}

    def node_identity(self, pod: str) -> tuple[str, tuple[str, ...]]:
        """The node's public key and tailnet addresses."""
        status = json.loads(self.tailscale(pod, "status", "--json"))
        return status["Self"]["PublicKey"], tuple(sorted(status["Self"]["TailscaleIPs"]))

    def service_addresses(self, service: str) -> list[str]:
        """The load balancer IPs of SERVICE in the release's namespace."""
        found = self.core.read_namespaced_service(service, self.namespace)
        return [i.ip for i in load_balancer_ingress(found) if i.ip]

    def service_endpoints(self, index: int, port: int, service: str | None = None) -> set[str]:
        """What a relay behind replica INDEX's Service (or SERVICE) should advertise: each address with PORT."""
        return {endpoint(a, port) for a in self.service_addresses(service or self.pod(index))}

    def all_service_endpoints(self, replicas: int, port: int) -> set[str]:
        """What the release's REPLICAS relays advertise together: every replica Service's addresses with PORT."""
        return set().union(*(self.service_endpoints(i, port) for i in range(replicas)))

    def free_pool_address(self, ip: str) -> str:
        """An address of IP's family after it in the MetalLB pool that no Service uses."""
        used = {
            i.ip for s in self.core.list_service_for_all_namespaces().items for i in load_balancer_ingress(s) if i.ip
        }
        candidate = ipaddress.ip_address(ip)
        for _ in range(40):
            candidate += 1
            if str(candidate) not in used:
                return str(candidate)
        pytest.fail(f"no free pool address after {ip}")

    def pod_nodes(self, replicas: int) -> dict[int, str]:
        """The node each of the REPLICAS relay pods is scheduled on, by replica index."""
        return {i: node_name(self.core.read_namespaced_pod(self.pod(i), self.namespace)) for i in range(replicas)}

    def pod_condition(self, pod: str) -> tuple[str, str | None]:
        """POD's readiness ("Ready", "not Ready", "terminating" or "absent") and uid."""
        try:
            found = self.core.read_namespaced_pod(pod, self.namespace)
        except client.ApiException as error:
            if error.status != 404:
                raise
            return "absent", None
        assert found.metadata is not None and found.status is not None, "the API server fills both"
        if found.metadata.deletion_timestamp:
            return "terminating", found.metadata.uid
        ready = {c.type: c.status for c in found.status.conditions or []}.get("Ready")
        return ("Ready" if ready == "True" else "not Ready"), found.metadata.uid

    def wait_pod_ready(self, pod: str, timeout: int = 180) -> client.V1Pod:
        wait_for(
            lambda: self.pod_condition(pod),
            f"relay pod {pod} to be Ready (seen: its state and uid)",
            timeout,
            until=lambda seen: seen[0] == "Ready",
            explain=self.describe,
        )
        return self.core.read_namespaced_pod(pod, self.namespace)

    def wait_ready_since(self, pod: str, since: datetime.datetime, timeout: int = 300) -> client.V1Pod:
        """Waits until POD turned Ready after SINCE (UTC): after its node came back, the API shows the Ready condition
        from before the node went away until the kubelet has restarted the pod's containers and probed them."""
        since = since.replace(microsecond=0)
        wait_for(
            lambda: self.readiness(pod)[:2],
            f"relay pod {pod} to turn Ready after {since.isoformat()} (seen: its "
            "Ready condition and when it last changed)",
            timeout,
            until=lambda seen: seen[0] == "True" and seen[1] >= since,
            tolerate=(client.ApiException,),
            explain=self.describe,
        )
        return self.core.read_namespaced_pod(pod, self.namespace)

    def readiness(self, pod: str) -> tuple[str | None, datetime.datetime | None, str | None, int]:
        """POD's Ready condition (its status and when it last changed), its uid and its containers' restarts: all
        the same before and after an event means the pod never left its Service's endpoints."""
        found = self.core.read_namespaced_pod(pod, self.namespace)
        assert found.metadata is not None and found.status is not None, "the API server fills both"
        ready = next((c for c in found.status.conditions or [] if c.type == "Ready"), None)
        restarts = sum(s.restart_count for s in found.status.container_statuses or [])
        if ready is None:
            return None, None, found.metadata.uid, restarts
        return ready.status, ready.last_transition_time, found.metadata.uid, restarts

    def wait_replaced(self, pod: str, old_uid: str | None, timeout: int = 180) -> client.V1Pod:
        """Waits until POD is a new pod (not OLD_UID) and Ready: after a deletion the StatefulSet made the next one."""
        wait_for(
            lambda: self.pod_condition(pod),
            f"relay pod {pod} to be replaced by a new pod that is Ready (seen: its state and uid)",
            timeout,
            until=lambda seen: seen[0] == "Ready" and seen[1] != old_uid,
            explain=self.describe,
        )
        return self.core.read_namespaced_pod(pod, self.namespace)

    def replace_pod(self, pod: str, timeout: int = 180) -> client.V1Pod:
        """Deletes POD (a crash, an eviction, kubectl delete pod) and waits until the StatefulSet's next one is
        Ready."""
        old_uid = metadata(self.core.read_namespaced_pod(pod, self.namespace)).uid
        self.core.delete_namespaced_pod(pod, self.namespace)
        return self.wait_replaced(pod, old_uid, timeout)

    def agent_log(self, pod: str) -> str:
        """The agent's log (what it saw and set), for people reading a failure."""
        try:
            return self.core.read_namespaced_pod_log(pod, self.namespace, container="agent", tail_lines=40)
        except client.ApiException as error:
            return f"(no agent log: {error.reason})"

    def status_configmap(self, index: int) -> str:
        """Replica INDEX's status ConfigMap, by the name the StatefulSet gives its agent (STATUS_CONFIGMAP)."""
        return self.names.status_configmap(index)

    def agent_status(self, index: int) -> dict:
        """What replica INDEX's agent reports in its status ConfigMap ({} before its first report)."""
        found = self.core.read_namespaced_config_map(self.status_configmap(index), self.namespace)
        return json.loads((found.data or {}).get("status.json", "{}"))

    def agent_live_status(self, pod: str, port: int = 9003) -> dict:
        """What POD's agent says right now (its /status, through the API server's pod proxy): also while the agent
        cannot write its status ConfigMap."""
        body = self.core.connect_get_namespaced_pod_proxy_with_path(
            f"{pod}:{port}", self.namespace, "status", _preload_content=False
        )
        # the client declares str, the body read; with _preload_content=False it returns urllib3's response unread
        return json.loads(body.data)  # type: ignore[attr-defined]

    def agent_events(self, pod: str) -> list[tuple[str | None, str | None]]:
        """(reason, message) of the Events the agent posted on POD, oldest first (by their last time). The agent
        aggregates repeats as Kubernetes' recorders do (one object, its count): an Event of count N is listed N
        times."""
        events = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={pod}").items
        events.sort(key=event_time)
        return [
            (e.reason, e.message)
            for e in events
            if (e.source and e.source.component) == "relay-agent"
            for _ in range(e.count or 1)
        ]

    def _on_node(self, pod: str, container: str, script: str) -> subprocess.CompletedProcess:
        """Runs SCRIPT with sh on the kind node of POD, with $CID set to CONTAINER's runtime id (crictl's): what an
        event on the node does to one container (its process killed, its connections cut), not through the API."""
        found = self.core.read_namespaced_pod(pod, self.namespace)
        status = container_status(found, container)
        assert status.container_id is not None, f"{container} of {pod} has not started"
        cid = status.container_id.split("://", 1)[1]
        return subprocess.run(
            ["docker", "exec", "-e", f"CID={cid}", node_name(found), "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop_container(self, pod: str, container: str) -> None:
        """Stops one container of POD on its node (as a crash would); the kubelet starts it again."""
        result = self._on_node(pod, container, 'crictl stop --timeout 5 "$CID"')
        assert result.returncode == 0, f"crictl stop {container} of {pod}: {result.stderr}"

    def cut_connections(self, pod: str, container: str, address: str) -> str:
        """Closes every TCP connection of POD's network namespace to ADDRESS (ss -K), as a network change would."""
        result = self._on_node(
            pod,
            container,
            'nsenter -t "$(crictl inspect -o go-template --template '
            f'\'{{{{.info.pid}}}}\' "$CID")" -n ss -K dst {address}',
        )
        assert result.returncode == 0, f"ss -K dst {address} in {pod}: {result.stderr}"
        return result.stdout

    def black_hole(self, pod: str, address: str, port: int) -> contextlib.AbstractContextManager[None]:
        """For the duration of the with block, POD's network namespace drops every TCP packet it sends to ADDRESS:PORT
        (iptables DROP in its OUTPUT chain, set from its node): a network partition or an overloaded server as
        production has them, where nothing is refused and every call waits for its own timeout. Only this pod is
        cut off; what it already sent is not taken back."""
        return self._blocked(pod, address, port, "DROP")

    def refused(self, pod: str, address: str, port: int) -> contextlib.AbstractContextManager[None]:
        """As black_hole, but every connection to ADDRESS:PORT is refused at once (a TCP reset): a server whose host is
        up and whose process is not (restarting, crash-looping)."""
        return self._blocked(pod, address, port, "REJECT --reject-with tcp-reset")

    @contextlib.contextmanager
    def _blocked(self, pod: str, address: str, port: int, target: str) -> Iterator[None]:
        tool = "ip6tables" if ":" in address else "iptables"
        rule = f"OUTPUT -p tcp -d {address} --dport {port} -j {target}"
        netns = 'nsenter -t "$(crictl inspect -o go-template --template \'{{.info.pid}}\' "$CID")" -n'
        result = self._on_node(pod, "agent", f"{netns} {tool} -w -I {rule}")
        assert result.returncode == 0, f"{tool} -I {rule} in {pod}: {result.stderr}"
        try:
            yield
        finally:
            result = self._on_node(pod, "agent", f"{netns} {tool} -w -D {rule}")
            assert result.returncode == 0, f"{tool} -D {rule} in {pod}: {result.stderr}"

    def container_status(self, pod: str, container: str) -> client.V1ContainerStatus:
        return container_status(self.core.read_namespaced_pod(pod, self.namespace), container)

    def state_identities(self) -> dict[str, tuple[str | bytes, str | bytes]]:
        """Per state Secret, the identity tailscaled keeps there: its machine key and the login profile it points at.
        (Other keys, such as device_fqdn and the preferences, change as the node runs.) A Secret whose data was
        wiped maps to empty strings."""
        secrets = self.core.list_namespaced_secret(self.namespace, label_selector="app.kubernetes.io/component=relay")
        identities = {}
        for secret in secrets.items:
            data = secret.data or {}
            name = metadata(secret).name
            if name is not None and self.names.is_state_secret(name):
                identities[name] = (data.get("_machinekey", ""), data.get("_current-profile", ""))
        return identities

    def hook_jobs_created_since(self, since: datetime.datetime) -> list[str | None]:
        """Hook Jobs the Job controller reported created after SINCE (an aware datetime), from the namespace's events:
        a succeeded hook Job is deleted at once, so listing Jobs cannot tell whether one ran."""
        return [
            e.involved_object.name
            for e in self.core.list_namespaced_event(self.namespace).items
            if e.involved_object.kind == "Job" and e.reason == "SuccessfulCreate" and event_time(e) > since
        ]

    def hook_log(self) -> str:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector="app.kubernetes.io/component=hook").items
        return "\n".join(self.core.read_namespaced_pod_log(name_of(p), self.namespace) for p in pods)

    def describe(self) -> str:
        """Pod states and recent events, for failure messages."""
        lines = []
        for pod in self.core.list_namespaced_pod(self.namespace).items:
            states = [
                (s.name, s.ready, s.state.waiting.reason if s.state and s.state.waiting else "")
                for s in pod_status(pod).container_statuses or []
            ]
            lines.append(f"pod {name_of(pod)}: {pod_status(pod).phase} {states}")
        for event in self.core.list_namespaced_event(self.namespace).items[-15:]:
            lines.append(
                f"event {event.involved_object.kind}/{event.involved_object.name}: {event.reason} {event.message}"
            )
        return "\n".join(lines)

    def udp_ports_bound(self, pod: str) -> set[int]:
        """UDP ports bound in the pod's network namespace, read from an ephemeral container of the hook image."""
        name = f"udp-check-{int(time.time())}"
        hook_image = os.environ["TOOLBOX_IMAGE"]
        # it stops on SIGTERM: a plain `sleep` as its container's PID 1 would hold the pod for its grace period
        debug = {
            "name": name,
            "image": hook_image,
            "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"],
            "imagePullPolicy": "IfNotPresent",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        }
        self.core.patch_namespaced_pod_ephemeralcontainers(
            pod, self.namespace, {"spec": {"ephemeralContainers": [debug]}}
        )
        wait_for(
            lambda: [
                (s.name, s.state)
                for s in pod_status(self.core.read_namespaced_pod(pod, self.namespace)).ephemeral_container_statuses
                or []
                if s.name == name
            ],
            f"ephemeral container {name} in {pod} to run",
            60,
            interval=1,
            until=lambda seen: any(state.running for _, state in seen),
        )
        table = self.exec(pod, ["cat", "/proc/net/udp", "/proc/net/udp6"], container=name)
        ports = set()
        for line in table.splitlines():
            fields = line.split()
            if len(fields) > 2 and ":" in fields[1] and fields[0].rstrip(":").isdigit():
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports


def benchmark_release(namespace: str) -> Release:
    """The benchmarks' release in NAMESPACE on the kubeconfig's cluster: the namespace made if missing, a release an
    earlier run left there uninstalled, and no relay left running anywhere in the cluster (they would serve paths the
    benchmark measures)."""
    from kubernetes import config

    from support.tailnet import wait_for_no_relays

    config.load_kube_config()
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    except client.ApiException as error:
        if error.status != 409:  # it exists
            raise
    relay = Release(api, namespace)
    if relay.helm("status", relay.name, check=False).returncode == 0:
        relay.helm("uninstall", relay.name, "--wait")
    wait_for_no_relays(core)
    return relay
