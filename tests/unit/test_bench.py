"""bench/results.json (written by scripts/bench) is complete, and docs/proof-and-benchmarks.md quotes it, not older
numbers."""

import json

import pytest

from support.repo import REPO

BENCH_DOC = REPO / "docs" / "proof-and-benchmarks.md"

RESULTS = REPO / "bench" / "results.json"
PATHS = ("direct", "relay", "derp")


@pytest.fixture(scope="module")
def results():
    assert RESULTS.exists(), "bench/results.json is missing: run scripts/bench"
    return json.loads(RESULTS.read_text())


def test_every_path_was_measured_on_its_own_path(results):
    expected = {"direct": "direct", "relay": "peer-relay", "derp": "derp"}
    for path in PATHS:
        icmp = results["icmp"][path]
        assert icmp["count"] >= 200 and len(icmp["rtts_ms"]) == icmp["count"], path
        vias = results["rtt"][path]["vias"]
        prefix = {"direct": "", "peer-relay": "peer-relay(", "derp": "DERP("}[expected[path]]
        assert vias and all(v.startswith(prefix) for v in vias), f"{path} pongs came via {vias}"
    assert (REPO / "bench" / "rtt.png").stat().st_size > 10_000, "the plot is missing"


def test_derp_was_measured_at_a_distance_and_every_relay_mode_was_measured(results):
    assert results["environment"].get("derp_delay_ms", 0) > 0, "DERP was measured without its distance"
    modes = {row["mode"] for row in results["throughput_modes"]}
    assert {"default", "gso-gro-off", "cpu-limit-1", "kernel-mode", "node-buffers-7mib"} <= modes, modes


def readme_lines(results) -> list[str]:
    icmp, tput, setup = results["icmp"], results["throughput"], results["relay_setup"]
    derp = f"DERP (Headscale, {results['environment']['derp_delay_ms']:g} ms away per client)"
    lines = [
        f"| {name} | {icmp[path]['median_ms']:.3f} ms | {icmp[path]['p95_ms']:.3f} ms |"
        for path, name in (("direct", "direct (firewall open)"), ("relay", "**peer relay**"), ("derp", derp))
    ]
    lines += [
        f"relay/direct {results['ratios']['relay_over_direct_icmp_median']}×, "
        f"DERP/relay {results['ratios']['derp_over_relay_icmp_median']}×",
        f"first relayed pong after {setup['pings_until_relayed']} pings, "
        f"{setup['s_from_install_to_first_relayed_pong']} s after `helm install` started",
        f"{tput['relay']['mbit_per_s']} Mbit/s through the relay, {tput['direct']['mbit_per_s']} Mbit/s direct",
        f"relay pod: {results['relay_idle_memory_mib']} MiB idle; {tput['relay']['relay_memory_mib']} MiB and "
        f"{tput['relay']['relay_cpu_cores']} CPU cores under that iperf3 load",
    ]
    lines += [
        f"| {row['mode']} | {row['what']} | {row['mbit_per_s']} Mbit/s | {row['ratio_to_direct']} | "
        f"{'yes' if row['socket_buffers_forced'] else 'no'} | {row['relay_cpu_cores']} |"
        for row in results["throughput_modes"]
    ]
    return lines


def test_readme_quotes_the_results(results):
    doc = BENCH_DOC.read_text()
    missing = [line for line in readme_lines(results) if line not in doc]
    assert not missing, f"{BENCH_DOC.name} does not quote bench/results.json; update it with: {missing}"


def test_the_benchmark_imports_the_test_support_package_as_installed(tmp_path):
    # scripts/setup installs this repository into .venv (editable): `support` imports from anywhere, no sys.path edits
    import subprocess

    probe = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-c", "import support.release, support; print(support.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, f"the support package does not import outside pytest: {probe.stderr}"
    assert probe.stdout.strip() == str(REPO / "tests" / "support" / "__init__.py")
    assert "sys.path" not in (REPO / "bench" / "relay_path.py").read_text()


EVENTS = REPO / "bench" / "events.json"


@pytest.fixture(scope="module")
def events():
    assert EVENTS.exists(), "bench/events.json is missing: run scripts/bench --events"
    return json.loads(EVENTS.read_text())


def test_every_event_ran_with_one_and_two_relays_and_recorded_every_echo(events):
    runs = {(run["event"], run["replicas"]) for run in events["runs"]}
    names = {run["event"] for run in events["runs"]}
    assert {
        "rolling upgrade",
        "relay pod deleted",
        "API server restart",
        "MetalLB speaker restart",
        "relay replaced by another release",
        "node drained",
        "node lost for a minute",
    } <= names, names
    assert events["environment"]["nodes"] >= 2, "the node events need the multi-node test cluster"
    assert runs == {(name, replicas) for name in names for replicas in (1, 2)}, runs
    for run in events["runs"]:
        echoes = run["probe"]["echoes"]
        assert len(echoes) == run["sent"] and [e["seq"] for e in echoes] == list(range(1, run["sent"] + 1)), run[
            "event"
        ]
        assert sum(e["rtt_ms"] is None for e in echoes) == run["lost"], run["event"]
        assert all("back_path" in e for e in echoes), f"{run['event']}: recorded without the workload's way back"
        assert "hit_relay_in_use" in run and run.get("acts_on"), (
            f"{run['event']}: recorded without what it acts on and the relay in use when it began"
        )
    assert (REPO / "bench" / "events.png").stat().st_size > 10_000, "the events plot is missing"


def yes(value: bool) -> str:
    return "yes" if value else "no"


def event_lines(events) -> list[str]:
    """The README table's row per run: event, relays, echoes lost, seconds off the relay, of them with one way through
    DERP, whether it began on the relay it acts on, whether everything came back by itself."""
    return [
        f"| {run['event']} | {run['replicas']} | {run['lost']} of {run['sent']} | {run['seconds_off_relay']} s | "
        f"{run['seconds_derp_one_way']} s | {yes(run['hit_relay_in_use'])} | "
        f"{yes(run['came_back'] and run['ready'] and run['settings_right'])} |"
        for run in events["runs"]
    ]


def test_readme_quotes_the_event_results(events):
    doc = BENCH_DOC.read_text()
    missing = [line for line in event_lines(events) if line not in doc]
    assert not missing, f"{BENCH_DOC.name} does not quote bench/events.json; update it with: {missing}"


SCALE = REPO / "bench" / "scale.json"
SIZING_DOC = REPO / "docs" / "sizing.md"


@pytest.fixture(scope="module")
def scale():
    assert SCALE.exists(), "bench/scale.json is missing: run scripts/bench --scale"
    return json.loads(SCALE.read_text())


def test_the_scale_benchmark_covered_a_tailnet_of_thousands_and_relayed_every_pair(scale):
    sizes = [run["offline_peers"] for run in scale["sizes"]]
    assert max(sizes) >= 1000 and sizes == sorted(sizes), sizes
    for run in scale["sizes"]:
        assert run["relay_peers"] >= run["offline_peers"], f"the relay should count every peer: {run}"
        for container in ("tailscale", "agent"):
            assert run[container]["peak_working_set_mib"], f"{run['offline_peers']} peers: no {container} sample"
    for run in scale["sessions"]:
        assert run["pairs_relayed"] == run["pairs"] and run["relay_sessions"] >= run["pairs"], run
    assert (REPO / "bench" / "scale.png").stat().st_size > 10_000, "the scale plot is missing"


def scale_lines(scale) -> list[str]:
    """The sizing doc's rows: one per tailnet size, one per count of relayed pairs."""
    sizes = [
        f"| {r['offline_peers']:,} | {r['relay_peers']:,} | {r['seconds_pod_start_to_ready']} s | "
        f"{r['tailscale']['idle_working_set_mib']} / {r['tailscale']['peak_working_set_mib']} MiB | "
        f"{r['agent']['idle_working_set_mib']} / {r['agent']['peak_working_set_mib']} MiB | "
        f"{r['tailscale']['idle_cpu_millicores']} / {r['tailscale']['churn_cpu_millicores']} |"
        for r in scale["sizes"]
    ]
    sessions = [
        f"| {s['pairs']} | {s['relayed_packets_per_second']:,} | {s['relay_cpu_millicores']} | "
        f"{s['relay_cpu_millicores_per_1000_pps']} | {s['relay_peak_working_set_mib']} MiB | "
        f"{s['echoes_lost']} of {s['echoes_sent']:,} | {s['median_rtt_ms']} / {s['p99_rtt_ms']} ms |"
        for s in scale["sessions"]
    ]
    return sizes + sessions


def test_the_sizing_doc_quotes_the_scale_results(scale):
    doc = SIZING_DOC.read_text()
    missing = [line for line in scale_lines(scale) if line not in doc]
    assert not missing, f"{SIZING_DOC.name} does not quote bench/scale.json; update it with: {missing}"
