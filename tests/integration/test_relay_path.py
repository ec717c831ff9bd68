"""End to end: tailnet traffic from a LAN device to a workload pod really goes through the chart's relay.

The write-up's topology (scripts/images/tailnet): the LAN device is a container on the kind network behind a firewall
that lets UDP reach only Headscale and the LoadBalancer address ranges, the workload is a tailnet node in its own pod.
Without a relay they talk via DERP; with the chart installed as a user would (the relay key, the login server,
relay.port and the Service's dual-stack settings), `tailscale ping` from the LAN device answers
`via peer-relay(<the Service's LoadBalancer IP>:<relay.port>:vni:N)`, with nothing changed on the clients.
"""

from __future__ import annotations

import datetime
import json
import statistics

import pytest

from support.cluster import on_cluster
from support.tailnet import relay_side, relayed

pytestmark = pytest.mark.integration

# The write-up's setup (chart/ci/seed-values.yaml): both families, one relay port; MetalLB assigns the addresses.
SEED = on_cluster("seed")
PORT = SEED["relay"]["port"]
# Enough for discovery to find and try the relay (a relay path is set up over DERP, then probed). Pings go one a
# second and relay path discovery runs every 30 s (magicsock discoverUDPRelayPathsInterval): 180 pings are six
# rounds. Here it took 2 to 39 pings; one CI run saw none in 120.
MAX_PINGS = 180


def median_rtt(pongs) -> float:
    return statistics.median(p.rtt_ms for p in pongs)


def test_derp_without_a_relay_then_the_relay_after_helm_install(tailnet, release):
    baseline = tailnet.ping(10)
    assert baseline, f"no pong from {tailnet.workload} at all\n{tailnet.diagnostics()}"
    assert {p.path for p in baseline} == {"derp"}, (
        f"without a relay the LAN device must reach the workload via DERP only, saw {[p.via for p in baseline]}"
    )
    # DERP is as far away as on the internet (scripts/images/derp-delay): each of the two clients is DERP_DELAY_MS
    # from it, so a ping via DERP takes more than that.
    delay = tailnet.derp_delay_ms
    assert median_rtt(baseline) > delay, (
        f"pings via DERP should take more than the {delay} ms the test DERP server is away, took "
        f"{[p.rtt_ms for p in baseline]} ms: is scripts/images/derp-delay in the path (scripts/images/deploy)?"
    )

    release.install(SEED)
    endpoints = release.service_endpoints(0, PORT)
    assert len(endpoints) == 2, f"the RequireDualStack Service should have an IPv4 and an IPv6 address: {endpoints}"
    sent, pong = tailnet.ping_until(
        relayed(endpoints), MAX_PINGS, f"the relay at {sorted(endpoints)}", relay_side(release)
    )
    print(f"relayed after {sent} pings: via {pong.via} in {pong.rtt_ms:.2f}ms")
    # The relay keeps the traffic local: no DERP distance on the path.
    on_relay = [p for p in tailnet.ping(10) if p.path == "peer-relay"]
    assert on_relay, "the path left the relay right after it was found"
    assert median_rtt(on_relay) < delay / 2, (
        f"pings through the relay should stay far below the DERP distance ({delay} ms), took "
        f"{[p.rtt_ms for p in on_relay]} ms (via DERP: {[p.rtt_ms for p in baseline]} ms)"
    )

    # The same path, seen by the client's status and by the relay's session list.
    peer = tailnet.lan_peer_status()
    assert peer.get("PeerRelay", "").rsplit(":vni:", 1)[0] in endpoints, (
        f"`tailscale status --json` on the LAN device should show the relay as PeerRelay: {json.dumps(peer)[:600]}"
    )
    sessions = release.tailscale(release.pod(0), "debug", "peer-relay-sessions")
    assert f"Server port: {PORT}" in sessions, sessions
    # The relay lists the very session the client uses: the VNI in the client's PeerRelay ("ip:port:vni:N").
    # (Its client addresses depend on how the LoadBalancer path NATs them, so they are not compared.)
    vni = peer["PeerRelay"].rsplit(":vni:", 1)[1]
    assert f"VNI: {vni}\n" in sessions + "\n", f"the relay should list session VNI {vni}:\n{sessions}"


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_each_address_family_of_the_load_balancer_carries_the_path(tailnet, release, family):
    release.install(SEED)
    endpoints = release.service_endpoints(0, PORT)
    wanted = {e for e in endpoints if e.startswith("[") == (family == "IPv6")}
    other = endpoints - wanted
    assert wanted and other, f"the Service should have one address per family: {endpoints}"
    # The LAN device can no longer send UDP to the other family's address.
    tailnet.firewall("closed", *(e.rsplit(":", 1)[0].strip("[]") for e in other))
    sent, pong = tailnet.ping_until(
        relayed(wanted), MAX_PINGS, f"the relay's {family} address {sorted(wanted)}", relay_side(release)
    )
    print(f"{family}: relayed after {sent} pings via {pong.via}")


def test_a_restarted_relay_takes_the_traffic_back_without_the_hook(tailnet, release):
    release.install(SEED)
    endpoints = release.service_endpoints(0, PORT)
    tailnet.ping_until(relayed(endpoints), MAX_PINGS, "the relay", relay_side(release))

    pod = release.pod(0)
    old_uid = release.core.read_namespaced_pod(pod, release.namespace).metadata.uid
    restarted_at = datetime.datetime.now(datetime.UTC)
    release.core.delete_namespaced_pod(pod, release.namespace)
    # Traffic keeps flowing while the relay is away (via DERP), then returns to the relay.
    during = tailnet.ping(5)
    assert during, f"the workload stopped answering while the relay restarted\n{tailnet.diagnostics()}"
    fresh = release.wait_pod_ready(pod)
    assert fresh.metadata.uid != old_uid, "the relay pod was not replaced"
    tailnet.ping_until(relayed(endpoints), MAX_PINGS, "the restarted relay", relay_side(release))
    assert not release.hook_jobs_created_since(restarted_at), "no hook Job may run on a restart"


def test_two_replicas_either_carries_the_path(tailnet, release):
    release.install({**SEED, "replicaCount": 2})
    replica_endpoints = [release.service_endpoints(index, PORT) for index in range(2)]
    both = replica_endpoints[0] | replica_endpoints[1]
    _, pong = tailnet.ping_until(relayed(both), MAX_PINGS, f"either relay at {sorted(both)}", relay_side(release, 2))
    used = 0 if pong.relay_endpoint in replica_endpoints[0] else 1
    other = 1 - used
    # Take the replica in use away from the LAN device: the path must move to the other one.
    tailnet.firewall("closed", *(e.rsplit(":", 1)[0].strip("[]") for e in replica_endpoints[used]))
    sent, pong = tailnet.ping_until(
        relayed(replica_endpoints[other]),
        MAX_PINGS,
        f"replica {other} at {sorted(replica_endpoints[other])}",
        relay_side(release, 2),
    )
    print(f"moved from replica {used} to replica {other} after {sent} pings via {pong.via}")


def test_a_kernel_mode_relay_carries_the_path_without_privilege(tailnet, release):
    # tailscale.userspace=false: the node's TUN device and NET_ADMIN, no privileged container.
    release.install({**SEED, "tailscale": {"userspace": False}})
    endpoints = release.service_endpoints(0, PORT)
    container = next(
        c
        for c in release.core.read_namespaced_pod(release.pod(0), release.namespace).spec.containers
        if c.name == "tailscale"
    )
    assert not container.security_context.privileged
    assert container.security_context.capabilities.add == ["NET_ADMIN"]
    sent, pong = tailnet.ping_until(
        relayed(endpoints), MAX_PINGS, f"the kernel-mode relay at {sorted(endpoints)}", relay_side(release)
    )
    print(f"kernel mode: relayed after {sent} pings via {pong.via}")
