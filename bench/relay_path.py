"""Benchmark of the path from the LAN device to the workload pod: via DERP, via the chart's relay, and direct.

Run with scripts/bench (it brings up the cluster and the tailnet in a box). Writes bench/results.json and
bench/rtt.png. It measures and records; it asserts nothing (tests/integration/test_relay_path.py does).

  1. DERP: no relay installed, the LAN device's firewall closed (UDP only to Headscale and the LoadBalancer ranges).
  2. helm install with the write-up's settings: pings until the first relayed pong, and seconds since `helm install`.
  3. relay: the same pings, relayed; the relay pod's memory idle, and memory and CPU under iperf3 traffic.
  4. direct: the firewall opened, the physical baseline; iperf3 again.

Per path it records `tailscale ping` (disco pings: the path the client chose; tailscale prints whole milliseconds)
and ICMP echo through the tunnel from the LAN device's network namespace (microseconds; the same path, checked with
`tailscale ping` before and after). The plot and the ratios use the ICMP round trips.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# the test support package, installed into .venv by scripts/setup (an editable install of this repository)
from support.cluster import cluster_values, control_plane_node, on_cluster
from support.release import Release, benchmark_release
from support.repo import REPO, benchmark_environment
from support.tailnet import Pong, Tailnet
from support.usage import container_usage

NAMESPACE = "relay-bench"
# the write-up's setup (chart/ci/seed-values.yaml) as the test cluster installs it
SEED = on_cluster("seed")
PORT = SEED["relay"]["port"]
# the kind node whose kernel the sysctls are set on (every node shares the host kernel)
NODE = control_plane_node()


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(pongs) -> dict:
    rtts = [p.rtt_ms for p in pongs]
    return {
        "count": len(rtts),
        "median_ms": round(statistics.median(rtts), 3),
        "p95_ms": round(percentile(rtts, 0.95), 3),
        "min_ms": round(min(rtts), 3),
        "max_ms": round(max(rtts), 3),
        "vias": sorted({p.via for p in pongs}),
        "rtts_ms": rtts,
    }


def icmp(net: Tailnet, path: str, ip: str, count: int) -> dict:
    """COUNT ICMP echoes to IP through the tunnel from the LAN device, on PATH (checked with tailscale ping before and
    after); round trips in ms from ping's `time=` fields."""

    def still_on(when: str):
        seen = {p.via for p in net.ping(3)}
        if {Pong(via, 0).path for via in seen} != {path}:
            raise RuntimeError(f"ICMP on {path}: {when} the echoes the path was {seen}")

    still_on("before")
    rtts = net.icmp_echo(ip, count)
    still_on("after")
    log(f"{path}: {len(rtts)} ICMP echoes, median {statistics.median(rtts):.3f}ms")
    return {
        "count": len(rtts),
        "lost": count - len(rtts),
        "median_ms": round(statistics.median(rtts), 3),
        "p95_ms": round(percentile(rtts, 0.95), 3),
        "min_ms": round(min(rtts), 3),
        "max_ms": round(max(rtts), 3),
        "rtts_ms": rtts,
    }


def measure(net: Tailnet, path: str, count: int) -> dict:
    """COUNT pongs that all took PATH (pongs on another path, e.g. while a path is re-established, are dropped)."""
    pongs: list[Pong] = []
    while len(pongs) < count:
        batch = net.ping(min(50, count - len(pongs)))
        kept = [p for p in batch if p.path == path]
        if len(kept) < len(batch):
            log(f"{path}: dropped {len(batch) - len(kept)} pongs on other paths ({sorted({p.via for p in batch})})")
        pongs += kept
    log(f"{path}: {count} pongs, median {statistics.median(p.rtt_ms for p in pongs):.2f}ms")
    return summary(pongs)


def crictl_stats(pod: str, namespace: str) -> dict:
    """CPU (core-nanoseconds, cumulative) and working-set memory of a pod's tailscale container, from its kind node."""
    return container_usage(pod, namespace, "tailscale")._asdict()


def host_pid(container_id: str) -> int:
    """A host PID of a process in the container CONTAINER_ID (a pod's container inside the kind node)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if container_id in (entry / "cgroup").read_text():
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no process of container {container_id} found in /proc")


def iperf(net: Tailnet, workload_ip: str, server_pid: int, seconds: int, relay: Release | None) -> dict:
    """iperf3 from the LAN device to the workload over the tailnet (server in the workload pod's network namespace,
    reached through its tailscaled), sampling the relay's CPU and memory meanwhile."""
    server = subprocess.Popen(
        ["nsenter", "-t", str(server_pid), "-n", "iperf3", "-s", "-1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    before = crictl_stats(relay.pod(0), relay.namespace) if relay else None
    result = subprocess.run(
        ["nsenter", "-t", net.lan_pid(), "-n", "iperf3", "-c", workload_ip, "-t", str(seconds), "-J"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    after = crictl_stats(relay.pod(0), relay.namespace) if relay else None
    server.wait(timeout=30)
    report = json.loads(result.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    out = {"seconds": seconds, "mbit_per_s": round(report["end"]["sum_received"]["bits_per_second"] / 1e6, 1)}
    if relay:
        # set whenever relay is (type: ignore below)
        out["relay_cpu_cores"] = round((after["cpu_ns"] - before["cpu_ns"]) / 1e9 / (after["at"] - before["at"]), 3)  # type: ignore[index]
        # set whenever relay is (type: ignore below)
        out["relay_memory_mib"] = round(after["memory_bytes"] / 2**20, 1)  # type: ignore[index]
    return out


# What each candidate limit does to relayed throughput (issue: relayed is half of direct). Each mode is a fresh
# install of the relay with the values shown, measured with the same iperf3 run as the main relay phase.
def throughput_modes(base_env: list[dict]) -> list[tuple[str, dict, str]]:
    """(mode, relay values, what it tests) for the throughput matrix; BASE_ENV is the test cluster's extraEnv."""
    return [
        ("default", {}, "uid 1000, userspace: socket buffers capped by the node's rmem_max/wmem_max"),
        (
            "gso-gro-off",
            {
                "extraEnv": base_env
                + [
                    {"name": "TS_DEBUG_DISABLE_UDP_GSO", "value": "true"},
                    {"name": "TS_DEBUG_DISABLE_UDP_GRO", "value": "true"},
                ]
            },
            "batched UDP I/O switched off",
        ),
        (
            "cpu-limit-1",
            {"resources": {"limits": {"cpu": "1", "memory": "256Mi"}}},
            "a 1-CPU limit: GOMAXPROCS 1, one SO_REUSEPORT socket per family",
        ),
        (
            "kernel-mode",
            {"tailscale": {"userspace": False}},
            "root with NET_ADMIN: the relay can force its 7 MiB socket buffers",
        ),
        ("node-buffers-7mib", {}, "uid 1000 with net.core.rmem_max/wmem_max raised to 7 MiB on the node"),
    ]


def node_sysctl(values: dict[str, str]) -> dict[str, str]:
    """Sets sysctls on the kind node (the host kernel's: rmem_max and wmem_max are not per network namespace) and
    returns their previous values."""
    before = {}
    for key, value in values.items():
        before[key] = subprocess.run(
            ["docker", "exec", NODE, "sysctl", "-n", key], capture_output=True, text=True, check=True
        ).stdout.strip()
        subprocess.run(["docker", "exec", NODE, "sysctl", "-w", f"{key}={value}"], capture_output=True, check=True)
    return before


def throughput_matrix(
    net: Tailnet, relay: Release, workload_ip: str, workload_pid: int, seconds: int, direct_mbit: float
) -> list[dict]:
    rows = []
    for mode, values, what in throughput_modes(cluster_values()["extraEnv"]):
        log(f"throughput mode {mode}: {what}")
        relay.helm("uninstall", relay.name, "--wait", check=False)
        saved = (
            node_sysctl({"net.core.rmem_max": str(7 << 20), "net.core.wmem_max": str(7 << 20)})
            if mode == "node-buffers-7mib"
            else {}
        )
        try:
            relay.install({**SEED, **values})
            endpoints = relay.service_endpoints(0, PORT)
            # the default argument binds this pass's endpoints (type: ignore below)
            net.ping_until(lambda p, endpoints=endpoints: p.relay_endpoint in endpoints, 300, f"the relay ({mode})")  # type: ignore[misc]
            result = iperf(net, workload_ip, workload_pid, seconds, relay)
            log_text = relay.core.read_namespaced_pod_log(relay.pod(0), relay.namespace, container="tailscale")
        finally:
            if saved:
                node_sysctl(saved)
        rows.append(
            {
                "mode": mode,
                "what": what,
                **result,
                "ratio_to_direct": round(result["mbit_per_s"] / direct_mbit, 2),
                "socket_buffers_forced": "failed to force-set UDP" not in log_text,
            }
        )
        log(f"throughput mode {mode}: {rows[-1]}")
    relay.helm("uninstall", relay.name, "--wait", check=False)
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [k for k in ("direct", "relay", "derp") if k in results["icmp"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [2, 1.3]})
    left.boxplot([results["icmp"][k]["rtts_ms"] for k in labels], vert=False, whis=(5, 95), showfliers=True)
    left.set_yticks(
        range(1, len(labels) + 1), [f"{k}\nmedian {results['icmp'][k]['median_ms']:.3f} ms" for k in labels]
    )
    left.set_xscale("log")
    left.set_xlabel("ICMP round trip through the tunnel, ms (log scale; box 25-75 %, whiskers 5-95 %)")
    left.set_title(f"LAN device → workload pod, {results['icmp'][labels[0]]['count']} echoes per path")
    tput = results["throughput"]
    names = [k for k in ("direct", "relay") if k in tput]
    bars = [tput[k]["mbit_per_s"] for k in names]
    for row in results.get("throughput_modes", []):
        names.append(f"relay:\n{row['mode']}")
        bars.append(row["mbit_per_s"])
    right.bar(names, bars, color=["#888"] + ["#2a7"] * (len(names) - 1))
    right.tick_params(axis="x", labelrotation=60, labelsize=7)
    right.set_ylabel("iperf3 TCP, Mbit/s")
    right.set_title("throughput over the tailnet")
    fig.suptitle(f"tailscale-peer-relay chart on kind ({results['environment']['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=200, help="pongs per path (default 200)")
    parser.add_argument("--iperf-seconds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    parser.add_argument("--skip-matrix", action="store_true", help="skip the relayed throughput per relay mode")
    args = parser.parse_args()

    net = Tailnet()
    log("removing a previous benchmark release; waiting until no relay runs in the cluster")
    relay = benchmark_release(NAMESPACE)
    core = relay.core

    workload_ip = net.workload_ip()
    workload_pod = (
        # the API server sets it; the client types it Optional (type: ignore below)
        core.list_namespaced_pod(net.workload_namespace, label_selector="app=workload").items[0].metadata.name  # type: ignore[union-attr]
    )
    # the API server sets it; the client types it Optional (type: ignore below)
    workload_pid = host_pid(crictl_stats(workload_pod, net.workload_namespace)["cid"])  # type: ignore[arg-type]
    results: dict[str, Any] = {"rtt": {}, "icmp": {}, "throughput": {}}

    net.firewall("closed")
    results["rtt"]["derp"] = measure(net, "derp", args.pings)
    results["icmp"]["derp"] = icmp(net, "derp", workload_ip, args.pings)

    log("helm install with the write-up's settings")
    started = time.monotonic()
    relay.install(SEED)
    installed = time.monotonic() - started
    endpoints = relay.service_endpoints(0, PORT)
    sent, first = net.ping_until(lambda p: p.relay_endpoint in endpoints, 300, "the relay")
    results["relay_setup"] = {
        "helm_install_wait_s": round(installed, 1),
        "pings_until_relayed": sent,
        "s_from_install_to_first_relayed_pong": round(time.monotonic() - started, 1),
        "first_relayed_via": first.via,
    }
    log(f"first relayed pong after {sent} pings: {results['relay_setup']}")
    results["rtt"]["relay"] = measure(net, "peer-relay", args.pings)
    results["icmp"]["relay"] = icmp(net, "peer-relay", workload_ip, args.pings)
    time.sleep(10)
    results["relay_idle_memory_mib"] = round(crictl_stats(relay.pod(0), NAMESPACE)["memory_bytes"] / 2**20, 1)
    results["throughput"]["relay"] = iperf(net, workload_ip, workload_pid, args.iperf_seconds, relay)

    net.firewall("open")
    net.ping_until(lambda p: p.path == "direct", 300, "a direct path")
    results["rtt"]["direct"] = measure(net, "direct", args.pings)
    results["icmp"]["direct"] = icmp(net, "direct", workload_ip, args.pings)
    results["throughput"]["direct"] = iperf(net, workload_ip, workload_pid, args.iperf_seconds, None)
    net.firewall("closed")
    if not args.skip_matrix:
        results["throughput_modes"] = throughput_matrix(
            net, relay, workload_ip, workload_pid, args.iperf_seconds, results["throughput"]["direct"]["mbit_per_s"]
        )

    rtt = results["icmp"]
    results["ratios"] = {
        "relay_over_direct_icmp_median": round(rtt["relay"]["median_ms"] / rtt["direct"]["median_ms"], 2),
        "derp_over_relay_icmp_median": round(rtt["derp"]["median_ms"] / rtt["relay"]["median_ms"], 2),
        "relay_over_direct_throughput": round(
            results["throughput"]["relay"]["mbit_per_s"] / results["throughput"]["direct"]["mbit_per_s"], 2
        ),
    }
    results["environment"] = {
        **benchmark_environment(),
        "pings_per_path": args.pings,
        "derp": "Headscale's embedded DERP server on the same docker network, behind scripts/images/derp-delay",
        "derp_delay_ms": net.derp_delay_ms,
        "command": "scripts/bench",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out / 'results.json'}: {json.dumps(results['ratios'])}")
    plot(results, args.out / "rtt.png")
    relay.helm("uninstall", relay.name, "--wait", check=False)


if __name__ == "__main__":
    main()
