"""How the relay's cost grows with the size of its tailnet: memory and CPU of the relay pod's two containers, idle and
while the network map changes, and the seconds from pod start to Ready, for tailnets of 10 to 5,000 peers.

Run with scripts/bench --scale (it brings up the cluster and the tailnet in a box). Writes bench/scale.json and
bench/scale.png. It measures and records; it asserts nothing (tests/integration/test_scale_smoke.py checks that a
relay in a larger tailnet stays Ready and relays).

For each size N (ascending):
  1. Headscale's database is made to hold N offline peers (support.offline_peers.fill_database: copies of the LAN
     device's row, with their own keys and addresses) and Headscale is restarted; the tailnet's real nodes (the LAN
     device, the workload) reconnect by themselves.
  2. helm install with the write-up's settings; seconds from the pod's start to Ready, and to the agent's first
     count of the peers the grant covers (relayPeers).
  3. idle: the tailscale and agent containers' working set and CPU, sampled every 2 s for --idle-seconds.
  4. churn: one peer joins or leaves the tailnet every 2 s through Headscale's API (each a new network map for
     every node) for --churn-seconds, sampled the same way.
  5. helm uninstall.
The peak of each container is the highest working set sampled from the install to the end of the churn.
At the end the database holds no offline peers again.

Then relayed sessions, for each count P of pairs (--sessions, ascending), with one relay installed:
  1. scripts/images/tailnet peers 2P: LAN devices peer-0 … peer-(2P-1) outside the cluster, each behind the LAN
     device's firewall (UDP only to Headscale and the load balancers), so that two of them talk via DERP or a relay.
  2. each pair (peer-2i to peer-2i+1) pings until its path is the relay (tailscale ping).
  3. all pairs at once send ICMP echoes through the tunnel at --rate a second each for --load-seconds; the relay's
     CPU and memory are sampled meanwhile, and its session count read at the end.
Per P: echoes sent and lost, median and p99 round trip, packets a second through the relay (echo and reply, both
legs), the relay's CPU and working set, and CPU per 1,000 packets a second.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

# the test support package, installed into .venv by scripts/setup (an editable install of this repository)
from support import offline_peers
from support.cluster import on_cluster
from support.release import Release, benchmark_release
from support.repo import REPO, benchmark_environment
from support.tailnet import (
    Tailnet,
    device_icmp_echo,
    device_tailscale,
    forget_offline_relays,
    pings_until,
    session_peer_pairs,
    wait_for_no_relays,
)
from support.tailnet import relayed as relayed_via
from support.usage import container_usage

NAMESPACE = "relay-bench-scale"
# the write-up's setup (chart/ci/seed-values.yaml) as the test cluster installs it
SEED = on_cluster("seed")
CONTAINERS = ("tailscale", "agent")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Sampler:
    """Samples CONTAINERS of a pod every INTERVAL seconds in a thread, into phases named by mark()."""

    def __init__(self, pod: str, namespace: str, interval: float = 2.0) -> None:
        self.pod, self.namespace, self.interval = pod, namespace, interval
        self.phase = "start"
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mark(self, phase: str) -> None:
        self.phase = phase

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in CONTAINERS:
                try:
                    usage = container_usage(self.pod, self.namespace, name)
                except (RuntimeError, IndexError, client.ApiException):
                    continue  # not started yet
                self.samples.append({"phase": self.phase, "container": name, **usage._asdict()})
            self._stop.wait(self.interval)

    def of(self, container: str, phase: str | None = None) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["container"] == container and (phase is None or s["phase"] == phase)]


def cpu_millicores(samples: list[dict[str, Any]]) -> float | None:
    """Mean CPU over SAMPLES (cumulative core-nanoseconds), in millicores; None with fewer than two samples of one
    container start (a restart resets the counter)."""
    if len(samples) < 2 or samples[-1]["cpu_ns"] < samples[0]["cpu_ns"]:
        return None
    seconds = samples[-1]["at"] - samples[0]["at"]
    return round((samples[-1]["cpu_ns"] - samples[0]["cpu_ns"]) / 1e6 / seconds, 2) if seconds > 0 else None


def mib(value: float) -> float:
    return round(value / 2**20, 1)


def churn(api: offline_peers.HeadscaleAPI, seconds: float) -> int:
    """For SECONDS, one offline peer joins or leaves every 2 s (alternately); returns how many changes were made."""
    changes, deadline = 0, time.monotonic() + seconds
    joined: list[str] = []
    while time.monotonic() < deadline:
        started = time.monotonic()
        if joined:
            offline_peers.remove_via_api(api, joined)
            joined = []
        else:
            joined = offline_peers.add_via_api(api, 1, first=900_000 + changes)
        changes += 1
        time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
    if joined:
        offline_peers.remove_via_api(api, joined)
    return changes


def ready_seconds(relay: Release, pod: str) -> tuple[float, float]:
    """Seconds from the pod's start to its Ready condition, and to the agent's first peer count (its status's
    `since` when relayPeers is set), waiting for both."""
    from support.wait import wait_for

    status = wait_for(
        lambda: relay.agent_status(0),
        "the agent to count the peers the grant covers",
        600,
        until=lambda s: s.get("relayPeers", 0) > 0,
        tolerate=(client.ApiException, KeyError, json.JSONDecodeError),
    )
    fresh = relay.core.read_namespaced_pod(pod, relay.namespace)
    assert fresh.status and fresh.status.start_time and fresh.status.conditions, f"{pod} has no status yet"
    started = fresh.status.start_time
    ready = next(c.last_transition_time for c in fresh.status.conditions if c.type == "Ready")
    assert ready, f"{pod}'s Ready condition has no time"
    counted = datetime.datetime.fromisoformat(status["since"].replace("Z", "+00:00"))
    return round((ready - started).total_seconds(), 1), round((counted - started).total_seconds(), 1)


def measure_size(relay: Release, api: offline_peers.HeadscaleAPI, size: int, args: argparse.Namespace) -> dict:
    # the earlier size's relay, offline now: forgotten while Headscale is small (with 5,000 nodes headscale v0.29.3
    # takes longer to delete a node than its CLI waits)
    forget_offline_relays()
    log(f"tailnet of {size} offline peers: filling Headscale's database and restarting it")
    nodes = offline_peers.fill_database(size)
    log(f"Headscale serves {nodes} nodes; installing the relay")
    pod = relay.pod(0)
    with Sampler(pod, relay.namespace) as sampler:
        relay.install(SEED, wait=False)
        relay.wait_pod_ready(pod, timeout=600)
        to_ready, to_counted = ready_seconds(relay, pod)
        status = relay.agent_status(0)
        log(f"Ready {to_ready} s after the pod started; {status.get('relayPeers')} peers may use the relay")
        sampler.mark("idle")
        time.sleep(args.idle_seconds)
        sampler.mark("churn")
        changes = churn(api, args.churn_seconds)
        sampler.mark("end")
    result: dict[str, Any] = {
        "offline_peers": size,
        "headscale_nodes": nodes,
        "relay_peers": status.get("relayPeers"),
        "seconds_pod_start_to_ready": to_ready,
        "seconds_pod_start_to_peers_counted": to_counted,
        "churn_changes": changes,
    }
    for name in CONTAINERS:
        idle, busy = sampler.of(name, "idle"), sampler.of(name, "churn")
        everything = sampler.of(name)
        result[name] = {
            "idle_working_set_mib": mib(sum(s["memory_bytes"] for s in idle) / len(idle)) if idle else None,
            "peak_working_set_mib": mib(max(s["memory_bytes"] for s in everything)) if everything else None,
            "idle_cpu_millicores": cpu_millicores(idle),
            "churn_cpu_millicores": cpu_millicores(busy),
            "churn_peak_working_set_mib": mib(max(s["memory_bytes"] for s in busy)) if busy else None,
        }
    log(f"{size} peers: {json.dumps(result)}")
    relay.helm("uninstall", relay.name, "--wait", check=False)
    wait_for_no_relays(relay.core)
    return result


def sessions_count(relay: Release) -> int:
    out = relay.tailscale(relay.pod(0), "debug", "peer-relay-sessions")
    match = re.search(r"Sessions count: (\d+)", out)
    return int(match.group(1)) if match else 0


def measure_sessions(relay: Release, pairs: int, args: argparse.Namespace) -> dict[str, Any]:
    log(f"{pairs} relayed pairs: starting {2 * pairs} session peers")
    subprocess.run([str(REPO / "scripts" / "images" / "tailnet"), "peers", str(2 * pairs)], check=True)
    endpoints = relay.service_endpoints(0, SEED["relay"]["port"])
    couples = session_peer_pairs(pairs)
    ips = {source: device_tailscale(target, "ip", "-4").stdout.strip() for source, target in couples}
    with ThreadPoolExecutor(max_workers=min(pairs, 8)) as pool:
        # the pings each pair took until a pong came through the relay (-1: not within 150)
        took = [
            n or -1 for n, _ in pool.map(lambda c: pings_until(c[0], ips[c[0]], relayed_via(endpoints), 150), couples)
        ]
    relayed = [c for c, n in zip(couples, took, strict=True) if n > 0]
    log(f"{len(relayed)} of {pairs} pairs relayed (pings until relayed: {took})")
    pod = relay.pod(0)
    count = int(args.rate * args.load_seconds)
    before = container_usage(pod, relay.namespace)
    with Sampler(pod, relay.namespace) as sampler, ThreadPoolExecutor(max_workers=max(1, len(relayed))) as pool:
        sampler.mark("load")
        results = list(pool.map(lambda c: device_icmp_echo(c[0], ips[c[0]], count, round(1 / args.rate, 3)), relayed))
        sessions = sessions_count(relay)
    after = container_usage(pod, relay.namespace)
    rtts = sorted(r for result in results for r in result)
    sent = count * len(relayed)
    seconds = after.at - before.at
    cpu = (after.cpu_ns - before.cpu_ns) / 1e6 / seconds
    # each echo and each reply crosses the relay: into it from one peer and out of it to the other
    packets_per_second = 2 * len(rtts) / args.load_seconds
    memory = [s["memory_bytes"] for s in sampler.of("tailscale", "load")]
    result: dict[str, Any] = {
        "pairs": pairs,
        "pairs_relayed": len(relayed),
        "pings_until_relayed": took,
        "relay_sessions": sessions,
        "echoes_sent": sent,
        "echoes_lost": sent - len(rtts),
        "median_rtt_ms": round(statistics.median(rtts), 3) if rtts else None,
        "p99_rtt_ms": round(rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))], 3) if rtts else None,
        "relayed_packets_per_second": round(packets_per_second),
        "relay_cpu_millicores": round(cpu, 1),
        "relay_cpu_millicores_per_1000_pps": round(cpu / packets_per_second * 1000, 1) if packets_per_second else None,
        "relay_peak_working_set_mib": mib(max(memory)) if memory else None,
    }
    log(f"{pairs} pairs: {json.dumps({k: v for k, v in result.items() if k != 'pings_until_relayed'})}")
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((memory, cpu, start), (load, latency, loss)) = plt.subplots(2, 3, figsize=(15, 9))
    runs = results["sizes"]
    sizes = [r["offline_peers"] for r in runs]
    for name, style in (("tailscale", "o-"), ("agent", "s--")):
        memory.plot(sizes, [r[name]["peak_working_set_mib"] for r in runs], style, label=f"{name} peak")
        memory.plot(sizes, [r[name]["idle_working_set_mib"] for r in runs], style, alpha=0.5, label=f"{name} idle")
        cpu.plot(sizes, [r[name]["idle_cpu_millicores"] for r in runs], style, alpha=0.5, label=f"{name} idle")
        cpu.plot(sizes, [r[name]["churn_cpu_millicores"] for r in runs], style, label=f"{name}, a change every 2 s")
    start.plot(sizes, [r["seconds_pod_start_to_ready"] for r in runs], "o-", label="pod start to Ready")
    for axes, title, unit in ((memory, "working set", "MiB"), (cpu, "CPU", "millicores"), (start, "start", "s")):
        axes.set_xscale("log")
        axes.set_xlabel("offline peers in the tailnet")
        axes.set_ylabel(unit)
        axes.set_title(f"{title} against tailnet size")
    sessions = results.get("sessions", [])
    pairs = [s["pairs"] for s in sessions]
    load.plot(pairs, [s["relay_cpu_millicores"] for s in sessions], "o-", label="relay CPU (millicores)")
    load.plot(pairs, [s["relayed_packets_per_second"] / 10 for s in sessions], "s--", label="packets/s relayed / 10")
    load.plot(pairs, [s["relay_peak_working_set_mib"] for s in sessions], "^:", label="relay peak working set (MiB)")
    latency.plot(pairs, [s["median_rtt_ms"] for s in sessions], "o-", label="median")
    latency.plot(pairs, [s["p99_rtt_ms"] for s in sessions], "s--", label="p99")
    loss.plot(pairs, [100 * s["echoes_lost"] / max(1, s["echoes_sent"]) for s in sessions], "o-", label="echoes lost")
    for axes, title, unit in (
        (load, "relay load", ""),
        (latency, "round trip via the relay", "ms"),
        (loss, "loss", "%"),
    ):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("relayed pairs, each pinging at the same rate")
        axes.set_ylabel(unit)
        axes.set_title(title)
    for axes in (memory, cpu, start, load, latency, loss):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    fig.suptitle(f"relay cost against its work ({results['environment']['date']}, 2 cores shared by everything)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000, 5000], help="tailnet sizes to try")
    parser.add_argument("--idle-seconds", type=int, default=60)
    parser.add_argument("--churn-seconds", type=int, default=60)
    parser.add_argument("--sessions", type=int, nargs="*", default=[1, 2, 4, 8, 16], help="relayed pairs to try")
    parser.add_argument("--rate", type=float, default=50, help="ICMP echoes a second per pair (default 50)")
    parser.add_argument("--load-seconds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    args = parser.parse_args()

    Tailnet()  # the tailnet in a box's settings are there
    relay = benchmark_release(NAMESPACE)
    api = offline_peers.HeadscaleAPI()
    offline_peers.remove_via_api(api)  # an interrupted run's churn peers
    started = time.monotonic()
    results: dict[str, Any] = {"sizes": []}
    if args.sizes:
        try:
            for size in sorted(args.sizes):
                results["sizes"].append(measure_size(relay, api, size, args))
        finally:
            log("removing the offline peers from Headscale")
            offline_peers.fill_database(0)
    results["sessions"] = []
    if args.sessions:
        forget_offline_relays()
        relay.install(SEED)
        try:
            for pairs in sorted(args.sessions):
                results["sessions"].append(measure_sessions(relay, pairs, args))
        finally:
            relay.helm("uninstall", relay.name, "--wait", check=False)
            subprocess.run([str(REPO / "scripts" / "images" / "tailnet"), "peers", "0"], check=False)
    results["environment"] = {
        **benchmark_environment(),
        "sharing_the_cores": "the kind cluster (two nodes), Headscale, the LAN device and the workload; nothing else",
        "peers": "offline Headscale nodes, copies of the LAN device's row (support/offline_peers.py)",
        "policy": "scripts/images/headscale-policy.hujson: every node may reach every node and use tag:relay",
        "idle_seconds": args.idle_seconds,
        "churn_seconds": args.churn_seconds,
        "echoes_per_second_per_pair": args.rate,
        "load_seconds": args.load_seconds,
        "session_peers": "LAN devices in containers (scripts/images/tailnet peers), kernel networking, behind the"
        " LAN device's firewall; their tailscaled and the pings share the same two cores as the relay",
        "benchmark_seconds": round(time.monotonic() - started),
        "command": "scripts/bench --scale",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "scale.png")
    log(f"wrote {args.out / 'scale.json'} and scale.png")


if __name__ == "__main__":
    main()
