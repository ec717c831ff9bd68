"""Outages of what the relay depends on, staged as production has them: packets dropped (a partition, an overloaded
server), not refused. The control server and the API server are black-holed for the relay pod only, so the rest of
the test tailnet and cluster carry on."""

from __future__ import annotations

import json
import os
import time
from urllib.parse import urlparse

import pytest

from support.cluster import on_cluster
from support.values import endpoint
from support.wait import wait_for

pytestmark = pytest.mark.integration

SEED = on_cluster("seed")
PORT = SEED["relay"]["port"]
# agent.reloginAfterSeconds for these tests: shorter than the chart's 120 s so that an outage twice as long stays
# short; the agent waits at least tailscaled's longest map poll back-off (45 s) anyway.
RELOGIN_AFTER = 15
# a pass every 5 s (agent.resyncSeconds): many chances for a wrong logout or a failed pass during each outage
RESYNC = 5
OUTAGE = 2 * RELOGIN_AFTER


def advertises(release, addresses: set[str] | None = None, timeout: int = 120) -> set[str]:
    """Waits until replica 0 advertises PORT with exactly its Service's addresses (or ADDRESSES); returns them."""
    pod = release.pod(0)

    def observe():
        wanted = {endpoint(a, PORT) for a in addresses} if addresses else release.service_endpoints(0, PORT)
        return wanted, release.relay_settings(pod)

    wanted, _ = wait_for(
        observe,
        f"{pod} to advertise port {PORT} and its Service's addresses (seen: wanted, then "
        "the relay's port and endpoints)",
        timeout,
        interval=2,
        until=lambda got: got[0] and got[1] == (str(PORT), got[0]),
        tolerate=(Exception,),
        explain=lambda: f"{release.agent_log(pod)}\n{release.describe()}",
    )
    return wanted


def stays_ready(release, pod: str, before, seconds: float) -> None:
    """Checks every 2 s for SECONDS that POD's readiness (Ready condition, its last change, uid, restarts) is BEFORE."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = release.readiness(pod)
        assert now == before, (
            f"{pod} left its Service's endpoints or restarted: readiness {before} -> {now}\n{release.agent_log(pod)}"
        )
        time.sleep(2)


def test_a_control_server_black_holed_then_refusing_and_a_crash_loop_keep_the_relays_node(release):
    release.install({**SEED, "agent": {"reloginAfterSeconds": RELOGIN_AFTER, "resyncSeconds": RESYNC}})
    pod = release.pod(0)
    advertises(release)
    identity = release.node_identity(pod)
    before = release.readiness(pod)
    login = urlparse(os.environ["LOGIN_SERVER"])
    with release.black_hole(pod, login.hostname, login.port or 80):
        # the map poll breaks at once (a NAT or load balancer forgetting the connection), and every retry goes
        # unanswered: two re-login windows with the control server silent (a map request whose dial hangs counts as
        # an active poll, so tailscaled's metric says 1 through it)
        release.cut_connections(pod, "tailscale", login.hostname)
        stays_ready(release, pod, before, OUTAGE)
    with release.refused(pod, login.hostname, login.port or 80):
        # then its host answers and its process does not (restarting): each map request fails at once, the poll is
        # down and in its back-off, as it still is for a while after the control server is back
        stays_ready(release, pod, before, OUTAGE)
    # back: tailscaled's map poll returns by itself within its back-off; the agent must not have logged it out
    wait_for(
        lambda: json.loads(release.tailscale(pod, "status", "--json"))["Self"]["Online"],
        "the relay back in the control server's map poll (seen: its status's Self.Online)",
        120,
        interval=3,
        explain=lambda: release.agent_log(pod),
    )
    stays_ready(release, pod, before, 3 * RESYNC)
    assert release.node_identity(pod) == identity, "the relay must keep its node key and tailnet addresses"
    reasons = [r for r, _ in release.agent_events(pod)]
    assert "LoggingInAgain" not in reasons, f"an outage is no reason to log the relay out: {reasons}"
    advertises(release)
    # Then the tailscale container crash-loops for longer than the re-login window (RELOGIN_AFTER, and at least the
    # map poll's 45 s back-off): each time it starts, tailscaled is Starting with its node key and no map poll yet,
    # while the control server answers; between starts its LocalAPI does not answer, which starts the agent's clock
    # again. It is stopped as soon as it runs, and the kubelet's back-off (10, 20, 40 s) does the rest.
    restarts = release.container_status(pod, "tailscale").restart_count
    crashing_until = time.monotonic() + max(RELOGIN_AFTER, 45) + 15
    while time.monotonic() < crashing_until:
        if release.container_status(pod, "tailscale").state.running:
            release.stop_container(pod, "tailscale")
        time.sleep(1)
    release.wait_pod_ready(pod, timeout=150)
    assert release.container_status(pod, "tailscale").restart_count >= restarts + 3, "the container should have looped"
    assert release.node_identity(pod) == identity, "a crash loop must not cost the relay its node"
    reasons = [r for r, _ in release.agent_events(pod)]
    assert "LoggingInAgain" not in reasons, f"a crash loop is no reason to log the relay out: {reasons}"
    advertises(release)


def test_a_black_holed_api_server_leaves_the_relay_ready_and_its_repairs_done(release):
    release.install({**SEED, "agent": {"resyncSeconds": RESYNC}})
    pod = release.pod(0)
    advertises(release)
    before = release.readiness(pod)
    api = release.core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    service = release.core.read_namespaced_service(pod, release.namespace)
    old = [i.ip for i in service.status.load_balancer.ingress]
    with release.black_hole(pod, api, 443):
        time.sleep(RESYNC)
        # the relay's endpoints cleared (by hand here; a re-login does the same): the agent puts them back at once,
        # and the Event it queues for that waits for the API server without holding up the pass
        release.tailscale(pod, "set", "--relay-server-static-endpoints=")
        advertises(release, set(old), timeout=30)
        # longer than a request to the API server may take (20 s) and a readiness probe period
        stays_ready(release, pod, before, 25)
        # the load balancer moves the Service (a pool edit, a recreated cloud load balancer) while the agent cannot
        # see it: MetalLB gives it the next free pool address of each family
        new = [release.free_pool_address(ip) for ip in old]
        release.core.patch_namespaced_service(
            pod, release.namespace, {"metadata": {"annotations": {"metallb.io/loadBalancerIPs": ",".join(new)}}}
        )
        wait_for(
            lambda: release.service_addresses(pod),
            f"MetalLB to move the Service to {new}",
            60,
            until=lambda seen: set(seen) == set(new),
        )
        stays_ready(release, pod, before, 10)
    # the API server answers again: the new addresses are in effect, the relay was Ready throughout
    advertises(release, set(new))
    assert release.readiness(pod) == before
