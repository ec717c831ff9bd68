"""The scale benchmark's smoke version (bench/scale.py has the full matrix): a relay with the chart's default resources
in a tailnet with more peers than the two the other tests have, serving several relayed sessions at once, stays
Ready and forwards for every session. It asserts behaviour, not timings."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from support import offline_peers
from support.repo import REPO
from support.tailnet import parse_pongs

pytestmark = pytest.mark.integration

OFFLINE_PEERS = 10
PAIRS = 2
PEERS = "relay-test-peer"
TAILNET = str(REPO / "scripts" / "images" / "tailnet")


@pytest.fixture
def larger_tailnet(tailnet) -> Iterator[list[tuple[str, str]]]:
    """OFFLINE_PEERS offline peers in Headscale and 2 × PAIRS more LAN devices behind the LAN device's firewall;
    yields the pairs (container names); removes them all afterwards."""
    api = offline_peers.HeadscaleAPI()
    ids = offline_peers.add_via_api(api, OFFLINE_PEERS)
    try:
        subprocess.run([TAILNET, "peers", str(2 * PAIRS)], check=True, capture_output=True, text=True, timeout=600)
        yield [(f"{PEERS}-{2 * i}", f"{PEERS}-{2 * i + 1}") for i in range(PAIRS)]
    finally:
        subprocess.run([TAILNET, "peers", "0"], capture_output=True, timeout=600)
        offline_peers.remove_via_api(api, ids)


def in_peer(name: str, *args: str, timeout: int = 120) -> str:
    result = subprocess.run(["docker", "exec", name, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} on {name} failed: {result.stderr}"
    return result.stdout


def peer_pid(name: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", name], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_relay_in_a_larger_tailnet_serves_several_sessions_at_once(larger_tailnet, release):
    release.install()
    pod = release.pod(0)
    endpoints = release.service_endpoints(0, 40000)
    status = release.agent_status(0)
    assert status.get("ready") and status.get("relayPeers", 0) >= OFFLINE_PEERS + 2 * PAIRS, (
        f"the relay should count the larger tailnet's peers among those that may use it: {status}"
    )
    targets = {}
    for source, target in larger_tailnet:
        targets[source] = in_peer(target, "tailscale", "ip", "-4").strip()
        vias: list[str] = []
        for _ in range(24):  # each pair finds the relay by itself; 120 pings at most
            vias += [
                p.via
                for p in parse_pongs(
                    in_peer(
                        source,
                        "tailscale",
                        "ping",
                        "--until-direct=false",
                        "-c",
                        "5",
                        "--timeout",
                        "2s",
                        targets[source],
                    )
                )
            ]
            if any(v.startswith("peer-relay(") for v in vias):
                break
        relayed = {re.sub(r"^peer-relay\((.+):vni:\d+\)$", r"\1", v) for v in vias if v.startswith("peer-relay(")}
        assert relayed and relayed <= endpoints, f"{source} to {target} never came through the relay: {vias[-10:]}"
    # every pair at once: ICMP echoes through the tunnel, 20 a second for 10 s each
    pings = {
        source: subprocess.Popen(
            ["nsenter", "-t", peer_pid(source), "-n", "ping", "-n", "-c", "200", "-i", "0.05", "-W", "2", ip],
            stdout=subprocess.PIPE,
            text=True,
        )
        for source, ip in targets.items()
    }
    sessions = release.tailscale(pod, "debug", "peer-relay-sessions")
    for source, ping in pings.items():
        out, _ = ping.communicate(timeout=120)
        answered = len(re.findall(r"time=[\d.]+ ms", out))
        # a few may go while a path changes; a relay that drops a session loses them all
        assert answered >= 180, f"{source}'s echoes through the relay: {answered} of 200 answered\n{out[-500:]}"
    assert int(re.search(r"Sessions count: (\d+)", sessions).group(1)) >= PAIRS, sessions  # type: ignore[union-attr]
    assert release.readiness(pod)[0] == "True", "the relay stays Ready with every session at once"
    assert release.agent_status(0)["ready"]
    release.test()
