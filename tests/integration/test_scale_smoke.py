"""The scale benchmark's smoke version (bench/scale.py has the full matrix): a relay with the chart's default resources
in a tailnet with more peers than the two the other tests have, serving several relayed sessions at once, stays
Ready and forwards for every session. It asserts behaviour, not timings."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import offline_peers
from support.repo import REPO
from support.tailnet import Pong, device_icmp_echo, device_tailscale, pings_until, session_peer_pairs

pytestmark = pytest.mark.integration

OFFLINE_PEERS = 10
PAIRS = 2
TAILNET = str(REPO / "scripts" / "images" / "tailnet")


@pytest.fixture
def larger_tailnet(tailnet) -> Iterator[list[tuple[str, str]]]:
    """OFFLINE_PEERS offline peers in Headscale and 2 × PAIRS more LAN devices behind the LAN device's firewall;
    yields the pairs (container names); removes them all afterwards."""
    api = offline_peers.HeadscaleAPI()
    ids = offline_peers.add_via_api(api, OFFLINE_PEERS)
    try:
        subprocess.run([TAILNET, "peers", str(2 * PAIRS)], check=True, capture_output=True, text=True, timeout=600)
        yield session_peer_pairs(PAIRS)
    finally:
        subprocess.run([TAILNET, "peers", "0"], capture_output=True, timeout=600)
        offline_peers.remove_via_api(api, ids)


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
        found = device_tailscale(target, "ip", "-4")
        assert found.returncode == 0, f"tailscale ip -4 on {target} failed: {found.stderr}"
        targets[source] = found.stdout.strip()
        # each pair finds the relay by itself; 120 pings at most
        pings, vias = pings_until(source, targets[source], lambda pong: pong.path == "peer-relay", 120)
        relayed = {Pong(v, 0).relay_endpoint for v in vias if v.startswith("peer-relay(")}
        assert pings and relayed <= endpoints, f"{source} to {target} never came through the relay: {vias[-10:]}"
    # every pair at once: ICMP echoes through the tunnel, 20 a second for 10 s each
    with ThreadPoolExecutor(max_workers=PAIRS) as pool:
        echoes = {source: pool.submit(device_icmp_echo, source, ip, 200) for source, ip in targets.items()}
        sessions = release.tailscale(pod, "debug", "peer-relay-sessions")
        for source, answered in echoes.items():
            # a few may go while a path changes; a relay that drops a session loses them all
            assert len(answered.result()) >= 180, (
                f"{source}'s echoes through the relay: {len(answered.result())} of 200"
            )
    assert int(re.search(r"Sessions count: (\d+)", sessions).group(1)) >= PAIRS, sessions  # type: ignore[union-attr]
    assert release.readiness(pod)[0] == "True", "the relay stays Ready with every session at once"
    assert release.agent_status(0)["ready"]
    release.test()
