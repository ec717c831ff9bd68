"""The tailnet in a box (scripts/images/tailnet): a LAN device outside the cluster and a workload pod.

The LAN device is a docker container on the kind network behind a firewall that lets UDP reach only Headscale and the
MetalLB address ranges, so it reaches the workload via DERP or via a peer relay's LoadBalancer address, never
directly. These helpers run the same commands a person would: `docker exec $LAN_CLIENT tailscale ping …`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import pytest

from support.cluster import control_plane_node, setting
from support.kube import metadata, name_of, node_name
from support.repo import REPO
from support.wait import wait_for

if TYPE_CHECKING:  # for the annotations only
    from kubernetes import client

    from support.release import Release

TAILNET_SCRIPT = str(REPO / "scripts" / "images" / "tailnet")
# the workload's tailscaled socket, as its manifest sets it
_SOCKET_SETTING = re.search(
    r"name: TS_SOCKET, value: ([^}\s]+)", (REPO / "scripts" / "images" / "workload.yaml").read_text()
)
assert _SOCKET_SETTING, "scripts/images/workload.yaml sets the workload's TS_SOCKET"
WORKLOAD_SOCKET = _SOCKET_SETTING[1]

# cli/ping.go: "pong from workload (100.64.0.2, 41641) via DERP(headscale) in 3ms"
#              "pong from workload (100.64.0.2) via peer-relay(172.18.255.193:61441:vni:1) in 1ms"
#              "pong from workload (100.64.0.2, 41641) via 172.18.0.2:41641 in 1ms"
PONG = re.compile(
    r"^pong from (?P<node>\S+) \((?P<ips>[^)]*)\) via (?P<via>\S+) in (?P<rtt>[\d.]+)(?P<unit>µs|us|ms|s)\s*$"
)
UNIT_MS = {"µs": 0.001, "us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Pong:
    via: str  # DERP(<region>), peer-relay(<ip>:<port>:vni:<n>) or <ip>:<port>
    rtt_ms: float

    @property
    def path(self) -> str:
        if self.via.startswith("DERP("):
            return "derp"
        if self.via.startswith("peer-relay("):
            return "peer-relay"
        return "direct"

    @property
    def relay_endpoint(self) -> str | None:
        """The relay address a peer-relay pong came through: '172.18.255.193:61441' or '[fc00::c1]:61441'."""
        match = re.fullmatch(r"peer-relay\((?P<addr>.+):vni:\d+\)", self.via)
        return match.group("addr") if match else None


def parse_pongs(output: str) -> list[Pong]:
    pongs = []
    for line in output.splitlines():
        match = PONG.match(line.strip())
        if match:
            pongs.append(Pong(match.group("via"), float(match.group("rtt")) * UNIT_MS[match.group("unit")]))
    return pongs


def run_headscale(*args: str) -> subprocess.CompletedProcess:
    """The test Headscale's CLI (its container is <cluster>-headscale)."""
    container = f"{os.environ.get('KIND_CLUSTER_NAME', 'relay-test')}-headscale"
    return subprocess.run(["docker", "exec", container, "headscale", *args], capture_output=True, text=True, timeout=60)


def headscale(*args: str) -> str:
    """run_headscale's output; fails the test if the command fails."""
    result = run_headscale(*args)
    assert result.returncode == 0, f"headscale {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def forget_offline_relays() -> list[str]:
    """Deletes the offline tag:relay nodes of earlier tests from Headscale, as an admin tidies a tailnet, so the LAN
    device's peer relay list holds only relays that run; returns their names. (Each earlier install left one: 40 by
    the end of a CI run, every one a candidate that each relay path discovery asks for an allocation.)"""
    gone = []
    for node in json.loads(headscale("nodes", "list", "-o", "json")):
        if "tag:relay" in (node.get("tags") or []) and not node.get("online"):
            result = run_headscale("nodes", "delete", "--identifier", str(node["id"]), "--force")
            # another test session may have just deleted it
            assert result.returncode == 0 or "node not found" in result.stderr, (
                f"headscale could not delete node {node['given_name']}: {result.stderr}"
            )
            gone.append(node["given_name"])
    return gone


# The relay pods a wait_for_no_relays already timed out on. A later wait that finds only these fails at once: a relay
# that outlived one whole wait is stuck (a namespace no test session of ours made, a pod that cannot terminate), and
# each tailnet test after it waiting again would add minutes to the run, not a chance of passing.
STUCK_RELAYS: set[str] = set()


class PodLister(Protocol):
    """What relay_pods needs of a CoreV1Api (the unit tests pass a stand-in)."""

    def list_pod_for_all_namespaces(self, *, label_selector: str) -> client.V1PodList: ...


def relay_pods(core: PodLister) -> list[str]:
    """Every relay pod in the cluster, as namespace/name."""
    return [
        f"{metadata(p).namespace}/{name_of(p)}"
        for p in core.list_pod_for_all_namespaces(label_selector="app.kubernetes.io/component=relay").items
    ]


def wait_for_no_relays(core: PodLister, timeout: int = 180) -> None:
    """Waits until no relay pod of an earlier test is left in the cluster (one still terminating in another namespace
    would serve the path too). Fails at once when the only ones left are those an earlier wait timed out on."""
    left = relay_pods(core)
    if left and set(left) <= STUCK_RELAYS:
        pytest.fail(
            f"relay pods an earlier test already waited {timeout}s for are still there: {left}; remove "
            "them (or their namespaces) by hand"
        )
    try:
        wait_for(
            lambda: relay_pods(core),
            "the relays of earlier tests to be gone (seen: relay pods left)",
            timeout,
            until=lambda pods: not pods,
        )
    except pytest.fail.Exception:
        STUCK_RELAYS.update(relay_pods(core))
        raise


def relay_side(release: Release, replicas: int = 1) -> Callable[[], str]:
    """For a failure message: where each relay runs, what it advertises and serves, and the namespace's events
    (MetalLB's nodeAssigned names the node that announces the LoadBalancer address)."""

    def explain() -> str:
        lines = [release.describe()]
        for index in range(replicas):
            pod = release.pod(index)
            try:
                node = node_name(release.core.read_namespaced_pod(pod, release.namespace))
                lines += [
                    f"relay {pod} on node {node}: settings {release.relay_settings(pod)}",
                    release.tailscale(pod, "debug", "peer-relay-sessions"),
                    release.agent_log(pod),
                ]
            except Exception as error:  # the explanation must not hide the failure it explains
                lines.append(f"relay {pod}: {error}")
        return "\n".join(lines)

    return explain


def relayed(endpoints: set[str]) -> Callable[[Pong], bool]:
    """A pong predicate: came via a peer relay at one of ENDPOINTS."""
    return lambda pong: pong.relay_endpoint in endpoints


def device_tailscale(container: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """`tailscale ARGS` on the LAN device (or a session peer) in docker container CONTAINER."""
    return subprocess.run(
        ["docker", "exec", container, "tailscale", *args], capture_output=True, text=True, timeout=timeout
    )


def device_ping(container: str, target: str, count: int = 5) -> list[Pong]:
    """`tailscale ping --until-direct=false -c COUNT` from the device in CONTAINER to TARGET; the pongs."""
    result = device_tailscale(container, "ping", "--until-direct=false", "-c", str(count), "--timeout", "2s", target)
    return parse_pongs(result.stdout)


def device_pid(container: str) -> str:
    """The process id on the host of the device in CONTAINER: `nsenter -t PID -n` runs host tools in its network
    namespace (the relay image has no shell or iproute2)."""
    return subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", container],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()


def device_icmp_echo(container: str, ip: str, count: int, interval: float = 0.05) -> list[float]:
    """COUNT ICMP echoes to IP (a tailnet address) through the tunnel from CONTAINER's network namespace; the round
    trips in ms of those answered (ping's `time=` fields)."""
    out = subprocess.run(
        [
            "nsenter",
            "-t",
            device_pid(container),
            "-n",
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            "2",
            ip,
        ],
        capture_output=True,
        text=True,
        timeout=count * interval + 60,
    ).stdout
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]


def session_peer_pairs(pairs: int) -> list[tuple[str, str]]:
    """The containers of the session peers scripts/images/tailnet peers 2*PAIRS starts, as pairs: (peer-0, peer-1),
    (peer-2, peer-3), …"""
    prefix = f"{os.environ.get('KIND_CLUSTER_NAME', 'relay-test')}-peer"
    return [(f"{prefix}-{2 * i}", f"{prefix}-{2 * i + 1}") for i in range(pairs)]


def pings_until(
    container: str, target: str, wanted: Callable[[Pong], bool], max_pings: int
) -> tuple[int | None, list[str]]:
    """Pings from CONTAINER to TARGET, five at a time, until a pong satisfies WANTED: (the pings it took, or None
    after MAX_PINGS; the paths seen)."""
    seen: list[str] = []
    for sent in range(0, max_pings, 5):
        pongs = device_ping(container, target)
        for index, pong in enumerate(pongs):
            if wanted(pong):
                return sent + index + 1, seen + [pong.via]
        seen += [p.via for p in pongs]
    return None, seen


class Tailnet:
    """The LAN device and the workload node, as scripts/cluster env names them."""

    def __init__(self) -> None:
        self.lan = setting("LAN_CLIENT")
        self.workload = setting("WORKLOAD_NODE")
        self.workload_namespace = setting("WORKLOAD_NAMESPACE")
        # the round trip scripts/images/derp-delay adds between each client and the DERP server
        self.derp_delay_ms = float(setting("DERP_DELAY_MS"))
        self._workload_container: tuple[str, str] | None = None

    def lan_tailscale(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return device_tailscale(self.lan, *args, timeout=timeout)

    def ping(self, count: int = 5) -> list[Pong]:
        """`tailscale ping --until-direct=false -c COUNT` from the LAN device to the workload; the pongs."""
        return device_ping(self.lan, self.workload, count)

    def ping_until(
        self,
        wanted: Callable[[Pong], bool],
        max_pings: int = 120,
        what: str = "the wanted path",
        explain: Callable[[], str] = lambda: "",
    ) -> tuple[int, Pong]:
        """Pings (a few at a time) until a pong satisfies WANTED; returns (pings sent, that pong).
        Fails after MAX_PINGS with the paths seen, this tailnet's diagnostics and EXPLAIN() (the relay's side)."""
        sent, seen = 0, []
        while sent < max_pings:
            pongs = self.ping(5)
            sent += 5
            for index, pong in enumerate(pongs):
                if wanted(pong):
                    return sent - len(pongs) + index + 1, pong
            seen += [p.via for p in pongs]
            if not pongs:
                time.sleep(1)
        pytest.fail(
            f"no pong via {what} from {self.workload} within {max_pings} pings; "
            f"paths seen (latest last): {seen[-20:]}\n{self.diagnostics()}\n{explain()}"
        )

    def lan_peer(self, timeout: int = 120) -> tuple[dict | None, dict]:
        """The workload's entry in the LAN device's `tailscale status --json` (None if it has none), and the status."""
        status = json.loads(self.lan_tailscale("status", "--json", timeout=timeout).stdout)
        for peer in (status.get("Peer") or {}).values():
            if peer.get("HostName") == self.workload or peer.get("DNSName", "").split(".")[0] == self.workload:
                return peer, status
        return None, status

    def workload_tailscale(self, *args: str, timeout: int = 30) -> subprocess.CompletedProcess:
        """`tailscale ARGS` in the workload's container, through its node's container runtime (crictl exec), not the
        API server: it answers while the API server restarts."""
        if self._workload_container is None:
            self._workload_container = self._find_workload_container()
        node, container = self._workload_container
        result = subprocess.run(
            ["docker", "exec", node, "crictl", "exec", container, "tailscale", f"--socket={WORKLOAD_SOCKET}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:  # the container may be another one now: look it up again next time
            self._workload_container = None
        return result

    def _find_workload_container(self) -> tuple[str, str]:
        """The kind node the workload runs on (the control plane: its manifest's nodeSelector), and its tailscale
        container's runtime id."""
        node = control_plane_node()
        found = subprocess.run(
            [
                "docker",
                "exec",
                node,
                "crictl",
                "ps",
                "-q",
                "--state",
                "running",
                "--name",
                "^tailscale$",
                "--label",
                f"io.kubernetes.pod.namespace={self.workload_namespace}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if not found:
            raise OSError(f"no running workload container in namespace {self.workload_namespace} on {node}")
        return node, found[0]

    def workload_peer(self, public_key: str) -> dict | None:
        """The workload's entry for the peer with PUBLIC_KEY (the LAN device's) in its `tailscale status --json`."""
        status = json.loads(self.workload_tailscale("status", "--json").stdout)
        return (status.get("Peer") or {}).get(public_key)

    def lan_peer_status(self) -> dict:
        """The workload's entry in the LAN device's `tailscale status --json`."""
        peer, status = self.lan_peer()
        if peer is None:
            pytest.fail(f"the LAN device does not see {self.workload} as a peer: {sorted(status.get('Peer') or {})}")
        return peer

    def firewall(self, mode: str, *deny: str) -> None:
        """The LAN device's firewall: 'closed' (UDP only to Headscale and the LoadBalancer ranges, and never to DENY)
        or 'open' (direct paths work)."""
        result = subprocess.run([TAILNET_SCRIPT, "firewall", mode, *deny], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"scripts/images/tailnet firewall {mode} failed: {result.stderr}"

    def diagnostics(self) -> str:
        status = self.lan_tailscale("status").stdout
        relays = self.lan_tailscale("debug", "peer-relay-servers").stdout
        # Which MAC the LAN device sends each LoadBalancer address to: a stale entry points at a node that no
        # longer announces it (MetalLB L2 moves the address with the relay pod under externalTrafficPolicy Local).
        neighbours = self.lan_netns("ip", "neigh", "show")
        firewall = self.lan_netns("iptables", "-L", "TSRELAY-LAN", "-v", "-n") + self.lan_netns(
            "ip6tables", "-L", "TSRELAY-LAN", "-v", "-n"
        )
        return (
            f"LAN device `tailscale status`:\n{status}\nLAN device `tailscale debug peer-relay-servers`:\n{relays}\n"
            f"LAN device `ip neigh`:\n{neighbours}\nLAN device firewall (packet counts):\n{firewall}"
        )

    def lan_pid(self) -> str:
        """The LAN device's process id on the host (device_pid)."""
        return device_pid(self.lan)

    def icmp_echo(self, ip: str, count: int, interval: float = 0.05) -> list[float]:
        """COUNT ICMP echoes to IP through the tunnel from the LAN device (device_icmp_echo)."""
        return device_icmp_echo(self.lan, ip, count, interval)

    def workload_ip(self) -> str:
        """The workload's tailnet IPv4 address, as the LAN device knows it."""
        return self.lan_tailscale("ip", "-4", self.workload).stdout.strip()

    def lan_netns(self, *command: str) -> str:
        """COMMAND's output (or its error) in the LAN device's network namespace, run from the host."""
        result = subprocess.run(
            ["nsenter", "-t", self.lan_pid(), "-n", *command], capture_output=True, text=True, timeout=30
        )
        return result.stdout + result.stderr


def relay_through(net: Tailnet, release: Release, replicas: int, port: int, index: int) -> set[str]:
    """Makes the LAN device relay through replica INDEX of RELEASE, so that an event on that relay hits the relay in
    use: the LAN device's firewall drops the other relays' addresses until it relays through that one, then opens
    again (the LAN device keeps the path it has; the others stay candidates). Returns that relay's endpoints."""
    wanted = release.service_endpoints(index, port)
    elsewhere = [a for i in range(replicas) if i != index for a in release.service_addresses(release.pod(i))]
    net.firewall("closed", *elsewhere)
    try:
        net.ping_until(relayed(wanted), 300, f"relay {release.pod(index)}", relay_side(release, replicas))
    finally:
        net.firewall("closed")
    return wanted


def relay_through_node(net: Tailnet, release: Release, replicas: int, port: int, node: str) -> tuple[int, set[str]]:
    """Makes the LAN device relay through a relay of RELEASE that runs on NODE (relay_through), so that an event on NODE
    hits the relay in use; when none runs there, relay 0 is moved there first (the other nodes cordoned while its pod
    is made again). Returns that relay's index and endpoints."""
    if node not in release.pod_nodes(replicas).values():
        others = [name_of(n) for n in release.core.list_node().items if name_of(n) != node]
        for other in others:
            release.core.patch_node(other, {"spec": {"unschedulable": True}})
        try:
            release.replace_pod(release.pod(0))
        finally:
            for other in others:
                release.core.patch_node(other, {"spec": {"unschedulable": False}})
    index = next(i for i, n in release.pod_nodes(replicas).items() if n == node)
    return index, relay_through(net, release, replicas, port, index)
