"""Benchmark of what the LAN sees while the cluster does its routine things to a relay (issue 17's events).

Run with `scripts/bench --events` (it brings up the cluster and the tailnet in a box). For each event and each relay
count, a fresh release of the write-up's setup, the LAN device relaying through it, then the path probe
(tests/support/probe.py: ICMP echoes 5 a second, each with the path the LAN device sent it on, the workload's path
back as its status names it, and how many ways went through DERP by its round trip) through the event and until the
LAN device is answered through a relay of the release both ways again (or TIMEOUT). Writes bench/events.json (per run:
echoes sent and lost, seconds off the relay, of them seconds with one way through DERP, the relay in use when the
event began and whether it is the one the event acts on, whether everything came back by itself, with its settings
right and Ready, and every echo) and bench/events.png (round trip and route over time, per
run). It measures and records; it asserts nothing (tests/integration/test_availability.py asserts what must hold).

The cluster has two nodes (scripts/cluster: a control plane that runs workloads, and a worker). Each event acts on
what the LAN device uses when it begins, found then rather than forced: with two relays the LAN device picks one of
its own and keeps relaying through it a while (--settle, so that it has tried both); a deleted pod is then the pod of
the relay in use, and the events on every relay (an upgrade, the API server, the speakers, a replaced release) take
whichever it is. The node events (a drain, a node lost) hit the worker, so that the API server and the workload (on
the control plane, scripts/images/workload.yaml) stay up: the LAN device is first made to relay through the relay
there (support.tailnet.relay_through_node), and is steered again when it moved to the other relay while it settled.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client, config

from support.cluster import drain, on_cluster, start_node, stop_api_server, stop_node, uncordon, worker_node
from support.probe import Echo, PathProbe
from support.release import Release
from support.repo import REPO, versions
from support.tailnet import Tailnet, forget_offline_relays, relay_side, relay_through_node, relayed, wait_for_no_relays
from support.values import deep_merge
from support.wait import wait_for

NAMESPACE = "relay-bench-event"
SEED = on_cluster("seed")
PORT = SEED["relay"]["port"]
# how long the probe waits, after an event, for the LAN device to be back on a relay path
TIMEOUT = 240
SETTLE = 3
# how long a lost node stays away: past the controller-manager's node-monitor-grace-period (40 s), so the node is
# NotReady and its endpoints leave the Services before it comes back
NODE_AWAY_S = 60
# seconds the LAN device keeps relaying before an event with several relays (--settle): its relay path discovery
# runs again within a minute on a working relay path (upgradeUDPRelayInterval), so by then it has tried every relay
# (also those its firewall dropped while it was steered to the worker's), and the relay it uses is its own choice
SETTLE_BEFORE_S = 65
# how many times the LAN device is steered to the worker's relay for a node event, when it moves to the other relay
# while it settles (the two are alike to it: about half the settles end on either)
STEER_TRIES = 4


def log(message: str) -> None:
    print(f"bench events: {message}", file=sys.stderr, flush=True)


def api_answers(core: client.CoreV1Api) -> bool:
    try:
        core.list_namespace(limit=1, _request_timeout=5)
        return True
    except Exception:  # refused or timed out while it restarts
        return False


def wait(what: str, check, timeout: int = TIMEOUT) -> bool:
    """Whether CHECK holds within TIMEOUT seconds (the tests' wait; here not holding is a result, not a failure)."""
    try:
        wait_for(check, what, timeout, interval=1)
        return True
    except pytest.fail.Exception as failed:
        log(str(failed))
        return False


# Each event: function(relay, replicas, core, in_use) -> the release the LAN should end on; IN_USE is the index of
# the relay the LAN device uses when it begins.
def rolling_upgrade(relay, replicas, core, in_use):
    """helm upgrade with another pod template: the StatefulSet replaces each relay pod in turn."""
    relay.upgrade(deep_merge(values_for(replicas), {"podAnnotations": {"example.com/rollout": str(time.time_ns())}}))
    return relay


def pod_deleted(relay, replicas, core, in_use):
    """kubectl delete pod of the relay in use (a crash, an eviction): the StatefulSet makes it again (waited for: the
    event is over once the old relay is gone)."""
    relay.replace_pod(relay.pod(in_use))
    return relay


def api_server_restart(relay, replicas, core, in_use):
    """The API server's static pod restarts (a control-plane upgrade): its container stopped, the kubelet starts it."""
    stop_api_server()
    time.sleep(2)
    wait("the API server to answer again", lambda: api_answers(core))
    return relay


def speaker_restart(relay, replicas, core, in_use):
    """The MetalLB speaker that announces the relay's address restarts."""
    for pod in core.list_namespaced_pod("metallb-system", label_selector="component=speaker").items:
        core.delete_namespaced_pod(pod.metadata.name, "metallb-system")
    return relay


def relay_replaced(relay, replicas, core, in_use):
    """The relay in use is replaced by another: helm uninstall, then another release installed."""
    relay.uninstall()
    other = Release(relay.core.api_client, relay.namespace, name="other")
    other.install(values_for(replicas))
    return other


def node_drained(relay, replicas, core, in_use):
    """kubectl drain of the node whose relay the LAN device uses (its relay evicted through the PodDisruptionBudget
    and made again on another node), then kubectl uncordon: the maintenance is over."""
    drain(worker_node())
    uncordon(worker_node())
    return relay


def node_lost(relay, replicas, core, in_use):
    """The node whose relay the LAN device uses is lost (its kind container stopped) for NODE_AWAY_S, then comes back
    and is Ready again. A StatefulSet does not make a lost node's pod again elsewhere (at most one pod per identity)."""
    node = worker_node()
    on_node = [relay.pod(i) for i, there in relay.pod_nodes(replicas).items() if there == node]
    stop_node(node)
    time.sleep(NODE_AWAY_S)
    back = datetime.datetime.now(datetime.UTC)
    start_node(node)
    for pod in on_node:  # restarted by the node's kubelet (the API shows the Ready of before until then)
        try:
            relay.wait_ready_since(pod, back)
        except pytest.fail.Exception as failed:
            log(str(failed))
    return relay


# What an event acts on, so what the LAN device must use when it begins (aim()).
RELEASE = "a relay of the release"  # every relay: whichever the LAN device picked
IN_USE = "the relay in use"  # the one the LAN device picked
WORKER = "the worker's relay"  # its node: the LAN device steered there (the control plane keeps the API server)

EVENTS = [
    ("rolling upgrade", rolling_upgrade, RELEASE),
    ("relay pod deleted", pod_deleted, IN_USE),
    ("API server restart", api_server_restart, RELEASE),
    ("MetalLB speaker restart", speaker_restart, RELEASE),
    ("relay replaced by another release", relay_replaced, RELEASE),
    ("node drained", node_drained, WORKER),
    ("node lost for a minute", node_lost, WORKER),
]


def values_for(replicas: int) -> dict:
    return SEED if replicas == 1 else deep_merge(SEED, on_cluster("replicas"))


def run(api, core, net: Tailnet, name: str, event, target: str, replicas: int, settle: int) -> dict:
    """One event with REPLICAS relays, in a namespace of its own (deleted afterwards, as the tests do)."""
    log(f"{name}, {replicas} relay(s)")
    wait_for_no_relays(core)
    forget_offline_relays()
    namespace = f"{NAMESPACE}-{time.time_ns() % 10**8}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        return measure(core, net, name, event, target, replicas, Release(api, namespace), settle)
    finally:
        core.delete_namespace(namespace)


def relay_in_use(net: Tailnet) -> str | None:
    """The relay (ip:port) most of five pongs came through, None if most came another way."""
    through = [p.relay_endpoint for p in net.ping(5)]
    best = max(set(through), key=through.count, default=None)
    return best if through.count(best) * 2 > len(through) else None


def aim(net: Tailnet, target: str, relay: Release, replicas: int, settle: int) -> tuple[int | None, str | None, bool]:
    """Makes the LAN device relay through what the event acts on (TARGET): for the worker's relay it is steered there
    (relay_through_node), otherwise it picks a relay of the release itself. With several relays it then keeps relaying
    SETTLE seconds, and the relay in use is the one it relays through after that; a node event steers again (at most
    STEER_TRIES times) when that is not the worker's. Returns the index of the relay in use (None when the LAN device
    is on no relay of the release), its endpoint, and whether the event acts on it."""
    endpoints = relay.all_service_endpoints(replicas, PORT)
    for attempt in range(1, STEER_TRIES + 1):
        if target == WORKER:
            relay_through_node(net, relay, replicas, PORT, worker_node())
        else:
            net.ping_until(relayed(endpoints), 300, "a relay of the release", relay_side(relay, replicas))
        if replicas > 1:
            time.sleep(settle)
        endpoint = relay_in_use(net)
        index = next((i for i in range(replicas) if endpoint in relay.service_endpoints(i, PORT)), None)
        hit = index is not None and (target != WORKER or relay.pod_nodes(replicas)[index] == worker_node())
        if hit or target != WORKER:
            return index, endpoint, hit
        log(f"the LAN device moved to {endpoint or 'another path'} while it settled (try {attempt} of {STEER_TRIES})")
    return index, endpoint, hit


def measure(core, net: Tailnet, name: str, event, target: str, replicas: int, relay: Release, settle: int) -> dict:
    relay.install(values_for(replicas))
    index, in_use, hit = aim(net, target, relay, replicas, settle)
    started = time.monotonic()
    with PathProbe(net) as probe:
        # with the LAN device on no relay of the release (it settled on DERP), a deleted pod is relay 0's
        after = event(relay, replicas, core, 0 if index is None else index)
        event_s = round(time.monotonic() - started, 1)
        ended = time.time()
        wanted = after.all_service_endpoints(replicas, PORT)
        came_back = wait(
            "the LAN device answered through a relay again", lambda: probe.relayed_again(wanted, since=ended)
        )
        time.sleep(SETTLE)
    # the LAN device can be back on another relay before the one the event took away is Ready again
    ready = wait(
        "every relay of the release to be Ready again",
        lambda: all(after.pod_condition(after.pod(i))[0] == "Ready" for i in range(replicas)),
    )
    settings = all(
        after.relay_settings(after.pod(i)) == (str(PORT), after.service_endpoints(i, PORT)) for i in range(replicas)
    )
    summary = probe.summary()
    log(
        f"{name}, {replicas} relay(s): {summary['lost']} of {summary['sent']} echoes lost, "
        f"{summary['seconds_off_relay']} s off the relay, back: {came_back}\n{probe.timeline()}"
    )
    return {
        "event": name,
        "replicas": replicas,
        "event_s": event_s,
        "came_back": came_back,
        "ready": ready,
        "settings_right": settings,
        "acts_on": target,
        "relay_in_use": in_use,
        "hit_relay_in_use": hit,
        **{k: summary[k] for k in ("sent", "lost", "seconds_off_relay", "seconds_derp_one_way", "relays")},
        "timeline": probe.timeline().splitlines(),
        "probe": probe.to_json(),
    }


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # by route (support.probe.Echo.route: the LAN device's path, and how many ways went through DERP by the round trip)
    colors = {"peer-relay": "#2a7", "derp-one-way": "#a5d", "derp": "#c80", "direct": "#57c", "none": "#999"}

    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 1.9 * len(runs)), sharex=True, squeeze=False)
    for ax, result in zip(axes[:, 0], runs, strict=True):
        echoes = result["probe"]["echoes"]
        for kind, color in colors.items():
            points = [(e["sent_s"], e["rtt_ms"]) for e in echoes if e["rtt_ms"] is not None and Echo(**e).route == kind]
            if points:
                ax.scatter(*zip(*points, strict=True), s=4, color=color, label=kind)
        lost = [e["sent_s"] for e in echoes if e["rtt_ms"] is None]
        if lost:
            ax.scatter(lost, [0.1] * len(lost), s=10, marker="x", color="#d22", label="lost")
        ax.set_yscale("log")
        ax.set_ylabel("RTT ms")
        ax.set_title(
            f"{result['event']}, {result['replicas']} relay(s): {result['lost']} lost, "
            f"{result['seconds_off_relay']} s off the relay",
            fontsize=8,
            loc="left",
        )
        ax.legend(fontsize=6, loc="upper right", markerscale=2)
    axes[-1, 0].set_xlabel(
        "seconds since the event began (echoes 5 a second; the LAN device's path from its status, "
        "the ways through DERP from the round trip)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    log(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", help="run only the events whose name contains this")
    parser.add_argument(
        "--settle",
        type=int,
        default=SETTLE_BEFORE_S,
        help="seconds to keep relaying before an event with several relays",
    )
    args = parser.parse_args()
    config.load_kube_config()
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    net = Tailnet()
    net.firewall("closed")
    runs = [
        run(api, core, net, name, event, target, replicas, args.settle)
        for name, event, target in EVENTS
        if not args.only or args.only in name
        for replicas in args.replicas
    ]
    pins = versions()
    results = {
        "environment": {
            "date": datetime.date.today().isoformat(),
            "tailscale": pins["TAILSCALE_VERSION"],
            "headscale": pins["HEADSCALE_VERSION"],
            "kubernetes": pins["KUBERNETES_VERSION"],
            "nodes": 1 + int(pins["CLUSTER_WORKERS"]),
            "echoes_per_second": 5,
            "timeout_s": TIMEOUT,
            "settle_before_s": args.settle,
            "command": "scripts/bench --events",
        },
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "events.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out / 'events.json'}")
    plot(runs, args.out / "events.png")


if __name__ == "__main__":
    main()
