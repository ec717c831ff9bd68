"""What the LAN sees while the cluster does its routine things to a relay: the path probe (support.probe) runs through
the event and until the LAN device is back on a relay path; the test asserts what must hold afterwards (a relay path
of this release, its settings right, Ready, with no help). Lost echoes and seconds off the relay are recorded in the
failure message and the timeline, not asserted: timings belong to the benchmark."""

from __future__ import annotations

import datetime
import os
import time
import warnings

import pytest

from support.cluster import (
    control_plane_node,
    drain,
    on_cluster,
    start_node,
    stop_api_server,
    stop_node,
    uncordon,
    worker_node,
)
from support.pods import ANSWERED, LISTENER, curl_status, prober, toolbox_pod, wait_answers
from support.probe import PathProbe
from support.tailnet import relay_side, relay_through_node, relayed
from support.values import deep_merge
from support.wait import wait_for

pytestmark = pytest.mark.integration

# the write-up's setup (chart/ci/seed-values.yaml) on the test cluster
SEED = on_cluster("seed")
PORT = SEED["relay"]["port"]
# the seed with two relays, one per node (chart/ci/replicas-values.yaml)
TWO_RELAYS = deep_merge(SEED, on_cluster("replicas"))
# the echoes kept going once the LAN device is back on a relay path, so the timeline shows it answering there
SETTLE_SECONDS = 3


def relaying(release, tailnet) -> set[str]:
    """Installs the seed and waits until the LAN device relays through it; its endpoints."""
    release.install(SEED)
    endpoints = release.service_endpoints(0, PORT)
    tailnet.ping_until(relayed(endpoints), 180, f"the relay at {sorted(endpoints)}", relay_side(release))
    return endpoints


def wait_relayed_again(probe, release, endpoints: set[str], timeout: int) -> None:
    """Waits until the LAN device is answered through the release's relay again, by echoes sent after the event
    (called when it is over), then lets the probe see it a while."""
    ended = time.time()
    wait_for(
        probe.current_path,
        "the LAN device to be answered through the relay again, both ways (seen: the paths "
        "the LAN device and the workload send on)",
        timeout,
        until=lambda _: probe.relayed_again(endpoints, since=ended),
        explain=relay_side(release),
    )
    time.sleep(SETTLE_SECONDS)


# The client's timers (wgengine/magicsock/magicsock.go L4099 heartbeatInterval, L4103 trustUDPAddrDuration,
# tailscale.com v1.104.7): a path is trusted this
# long after its last answer (trustUDPAddrDuration), and probed every heartbeat (heartbeatInterval).
CLIENT_TRUST_S = 6.5
HEARTBEAT_S = 3.0


def longest_loss_seconds(lost_seqs: list[int], interval: float) -> float:
    """The longest stretch of consecutive lost echoes, in seconds (echoes INTERVAL apart)."""
    longest = run = 0
    previous = None
    for seq in sorted(lost_seqs):
        run = run + 1 if previous is not None and seq == previous + 1 else 1
        longest = max(longest, run)
        previous = seq
    return longest * interval


def story_of(probe) -> tuple[dict, str]:
    """The probe's summary, and for a failure message the summary and the timeline, with when the probe started (to
    find the moment in the cluster's logs)."""
    summary = probe.summary()
    started = datetime.datetime.fromtimestamp(probe.started, datetime.UTC).isoformat(timespec="seconds")
    return summary, f"{summary}\nthe timeline, from {started}:\n{probe.timeline()}"


def assert_relay_right(release, story: str, replicas: int = 1) -> None:
    for index in range(replicas):
        pod = release.pod(index)
        assert release.pod_condition(pod)[0] == "Ready", f"{pod} should be Ready again:\n{story}"
        assert release.relay_settings(pod) == (str(PORT), release.service_endpoints(index, PORT)), (
            f"{pod} should advertise its own Service's addresses again:\n{story}"
        )


def test_a_rolling_upgrade_of_one_relay_comes_back_to_a_relay_path_by_itself(release, tailnet):
    endpoints = relaying(release, tailnet)
    pod = release.pod(0)
    old_uid = release.pod_condition(pod)[1]
    with PathProbe(tailnet) as probe:
        # a change to the pod template: the StatefulSet replaces the one relay pod (helm waits for the rollout)
        release.upgrade(deep_merge(SEED, {"podAnnotations": {"example.com/rollout": "2"}}))
        release.wait_replaced(pod, old_uid)
        wait_relayed_again(probe, release, endpoints, 180)
    summary, story = story_of(probe)
    assert summary["last_path"] == "peer-relay", f"the LAN device should end on the relay path:\n{story}"
    assert set(summary["relays"]) <= endpoints, f"only this release's relay should have answered:\n{story}"
    assert_relay_right(release, story)


def test_an_api_server_restart_leaves_the_relay_ready_and_the_lan_back_on_its_path(release, tailnet, core):
    endpoints = relaying(release, tailnet)
    pod = release.pod(0)
    before = release.readiness(pod)
    with PathProbe(tailnet) as probe:
        stop_api_server()
        time.sleep(2)
        wait_for(
            lambda: core.list_namespace(limit=1, _request_timeout=5),
            "the API server to answer again",
            180,
            tolerate=(Exception,),
        )
        wait_relayed_again(probe, release, endpoints, 60)
    summary, story = story_of(probe)
    # The relay path does not go through the API server, and the agent keeps the relay Ready through the outage: the
    # pod never leaves its Service's endpoints, so the load balancer keeps sending to it.
    after = release.readiness(pod)
    assert after == before, (
        f"{pod} should stay Ready, as it was, through the API server's restart (seen: its Ready "
        f"condition, when it last changed, its uid and restarts: {before}, then {after}):\n{story}"
    )
    assert summary["last_path"] == "peer-relay", f"the LAN device should end on the relay path:\n{story}"
    assert_relay_right(release, story)
    # A break of the relay path costs a client at most the time it keeps trusting the path without an answer
    # (trustUDPAddrDuration, 6.5 s) and one heartbeat (3 s) before it tries another (CLIENT_TRUST_S, HEARTBEAT_S):
    # more lost in one stretch means the path stayed broken, which is the chart's business (twice, 2026-12-06, about
    # 30 echoes, 6 s, were lost with the relay Ready throughout: docs/proof-and-benchmarks.md, "What the numbers say").
    longest = longest_loss_seconds(summary["lost_seqs"], probe.interval)
    assert longest <= CLIENT_TRUST_S + HEARTBEAT_S, (
        f"{longest:.1f} s of echoes lost in one stretch through the API server's restart: more than a client's "
        f"{CLIENT_TRUST_S} s trust window plus a {HEARTBEAT_S} s heartbeat, so the relay path stayed broken:\n{story}"
    )
    if summary["lost"]:
        warnings.warn(
            f"{summary['lost']} echoes were lost during the API server's restart, at most {longest:.1f} s in "
            f"one stretch (within a client's trust window and a heartbeat):\n{story}",
            stacklevel=2,
        )


def test_a_drain_of_the_node_whose_relay_is_in_use_leaves_the_lan_on_a_relay_path(release, tailnet):
    release.install(TWO_RELAYS)
    node = worker_node()
    relay_through_node(tailnet, release, 2, PORT, node)
    with PathProbe(tailnet) as probe:
        # the relay there is evicted through the PodDisruptionBudget and made again on the other node
        drain(node)
        uncordon(node)
        endpoints = release.all_service_endpoints(2, PORT)
        wait_relayed_again(probe, release, endpoints, 180)
    summary, story = story_of(probe)
    assert summary["last_path"] == "peer-relay", f"the LAN device should end on a relay path:\n{story}"
    assert set(summary["relays"]) <= endpoints, f"only this release's relays should answer:\n{story}"
    assert_relay_right(release, story, replicas=2)


def test_a_lost_node_leaves_the_lan_on_the_other_nodes_relay_and_its_own_comes_back(release, tailnet):
    release.install(TWO_RELAYS)
    node = worker_node()
    lost, _ = relay_through_node(tailnet, release, 2, PORT, node)
    survivor = release.service_endpoints(1 - lost, PORT)
    with PathProbe(tailnet) as probe:
        stop_node(node)
        try:
            # the lost node's relay does not answer and is not made again elsewhere (a StatefulSet's pod identity is
            # the lost node's until that node is back or deleted): the LAN device must find the other relay
            wait_relayed_again(probe, release, survivor, 180)
        finally:
            back = datetime.datetime.now(datetime.UTC)
            start_node(node)
        # its relay, restarted by the node's kubelet, is Ready and relays again by itself
        release.wait_ready_since(release.pod(lost), back)
    summary, story = story_of(probe)
    assert summary["last_path"] == "peer-relay", f"the LAN device should end on a relay path:\n{story}"
    assert_relay_right(release, story, replicas=2)
    # A pod started on the node once it is back reaches beyond the pod network (the control server), as the next
    # relays there must log in: kube-router's policy engine used to restore the router's ipsets empty after a node
    # restart, so the node's new pods got no masquerade (scripts/node-image/manifests/kube-router.yaml).
    prober(release.core, release.namespace, "after-restart", node=node)
    control = f"{os.environ['LOGIN_SERVER']}/health"
    wait_for(
        lambda: curl_status(release.core, release.namespace, "after-restart", control),
        f"a new pod on {node} to reach the control server at {control} (seen: curl's exit status)",
        60,
        until=lambda status: status == ANSWERED,
    )
    # It reaches a pod on the control plane in both families (a connection needs the routes both ways): kube-router
    # withdraws the node's pod routes when it is gone longer than the BGP graceful-restart time (90 s) and must inject
    # them again.
    listener = toolbox_pod(
        release.core, release.namespace, "beside-the-api-server", LISTENER, node=control_plane_node()
    )
    for family in (4, 6):
        wait_answers(release.core, release.namespace, "after-restart", listener, family)
