"""The relay's alerts (metrics.prometheusRule): valid rules to the real promtool, and each one fires when its condition
holds for long enough and stays silent otherwise (`promtool test rules`, series as a Prometheus Operator scrape of the
chart's ServiceMonitor labels them)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from support.render import NAMESPACE, find, one, render

# later_tools: promtool, built in the background by scripts/setup
pytestmark = pytest.mark.later_tools

VALUES = {"metrics": {"enabled": True, "prometheusRule": {"enabled": True}}}
API = ("--api-versions", "monitoring.coreos.com/v1/PrometheusRule")


def relay_names(manifests: list[dict]) -> dict:
    """What the scrape labels the relay's series with: the job is the headless Service's name (the ServiceMonitor
    selects it), and the pods are the StatefulSet's."""
    headless = next(s for s in find(manifests, "Service") if s["spec"].get("clusterIP") == "None")
    sts = one(manifests, "StatefulSet")
    return {"job": headless["metadata"]["name"], "namespace": NAMESPACE, "pod": f"{sts['metadata']['name']}-0"}


def series(metric: str, values: str, **labels: str) -> dict:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def expected(rules: dict, alert: str, labels: dict, value: str = "") -> dict:
    """The alert as Prometheus would send it: the rule's labels over LABELS, and its annotations with $labels and
    $value filled in."""
    rule = next(r for r in rules["groups"][0]["rules"] if r.get("alert") == alert)
    exp_labels = {**labels, **rule.get("labels", {})}

    def fill(text: str) -> str:
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: exp_labels[m.group(1)], text)
        return text.replace("{{ $value }}", value)

    return {"exp_labels": exp_labels, "exp_annotations": {k: fill(v) for k, v in rule["annotations"].items()}}


def cases(n: dict) -> list[tuple[str, list, list]]:
    """(alert, input series, [(eval time, firing?, alert labels, $value)]) for each alert, N naming the relay."""
    relay = {"job": n["job"], "namespace": n["namespace"], "pod": n["pod"]}
    other_job = {"job": "something-else", "namespace": n["namespace"], "pod": "x-0"}
    pod = {"namespace": n["namespace"], "pod": n["pod"]}
    return [
        (
            "TailscalePeerRelayAbsent",
            [series("up", "1x30", **other_job)],
            [("15m", True, {"job": n["job"], "namespace": n["namespace"]}, "")],
        ),
        ("TailscalePeerRelayAbsent", [series("up", "1x30", **relay)], [("15m", False, None, "")]),
        (
            "TailscalePeerRelayDown",
            [series("up", "1 0x20", **relay)],
            [("3m", False, None, ""), ("10m", True, relay, "")],
        ),
        ("TailscalePeerRelayDown", [series("up", "1x20", **relay)], [("10m", False, None, "")]),
        (
            "TailscalePeerRelayNotReady",
            [
                series("kube_pod_status_ready", "0x20", namespace=n["namespace"], pod=n["pod"], condition="true"),
                series(
                    "kube_pod_status_ready", "0x20", namespace=n["namespace"], pod="another-app-0", condition="true"
                ),
            ],
            [
                ("5m", False, None, ""),
                ("15m", True, {"namespace": n["namespace"], "pod": n["pod"], "condition": "true"}, ""),
            ],
        ),
        (
            "TailscalePeerRelayNotReady",
            [series("kube_pod_status_ready", "1x20", namespace=n["namespace"], pod=n["pod"], condition="true")],
            [("15m", False, None, "")],
        ),
        ("TailscalePeerRelayServerNotRunning", [series("up", "1x20", **relay)], [("15m", True, relay, "")]),
        (
            "TailscalePeerRelayServerNotRunning",
            [
                series("up", "1x20", **relay),
                series("tailscaled_peer_relay_endpoints", "0x20", **relay, state="open"),
                series("tailscaled_peer_relay_endpoints", "0x20", **relay, state="connecting"),
            ],
            [("15m", False, None, "")],
        ),
        (
            "TailscalePeerRelayNotForwarding",
            [
                series("tailscaled_peer_relay_endpoints", "1x40", **relay, state="open"),
                series(
                    "tailscaled_peer_relay_forwarded_packets_total",
                    "500x40",
                    **relay,
                    transport_in="udp4",
                    transport_out="udp4",
                ),
            ],
            [("10m", False, None, ""), ("30m", True, {"namespace": n["namespace"], "pod": n["pod"]}, "")],
        ),
        (
            "TailscalePeerRelayNotForwarding",
            [
                series("tailscaled_peer_relay_endpoints", "1x40", **relay, state="open"),
                series(
                    "tailscaled_peer_relay_forwarded_packets_total",
                    "0+600x40",
                    **relay,
                    transport_in="udp4",
                    transport_out="udp4",
                ),
            ],
            [("30m", False, None, "")],
        ),
        (
            "TailscalePeerRelayNotForwarding",  # idle: no open session, nothing to forward
            [
                series("tailscaled_peer_relay_endpoints", "0x40", **relay, state="open"),
                series(
                    "tailscaled_peer_relay_forwarded_packets_total",
                    "500x40",
                    **relay,
                    transport_in="udp4",
                    transport_out="udp4",
                ),
            ],
            [("30m", False, None, "")],
        ),
        (
            "TailscalePeerRelayMemoryNearLimit",  # 240 of 256 MiB: 93.75%
            [
                series("container_memory_working_set_bytes", "251658240x30", **pod, container="tailscale"),
                series(
                    "kube_pod_container_resource_limits",
                    "268435456x30",
                    **pod,
                    container="tailscale",
                    resource="memory",
                    unit="byte",
                ),
                series("container_memory_working_set_bytes", "8388608x30", **pod, container="agent"),
                series(
                    "kube_pod_container_resource_limits",
                    "67108864x30",
                    **pod,
                    container="agent",
                    resource="memory",
                    unit="byte",
                ),
            ],
            [("10m", False, None, ""), ("20m", True, {**pod, "container": "tailscale"}, "93.75")],
        ),
        (
            "TailscalePeerRelayMemoryNearLimit",  # 160 of 256 MiB, as at 5,000 peers (bench/scale.json)
            [
                series("container_memory_working_set_bytes", "167772160x30", **pod, container="tailscale"),
                series(
                    "kube_pod_container_resource_limits",
                    "268435456x30",
                    **pod,
                    container="tailscale",
                    resource="memory",
                    unit="byte",
                ),
            ],
            [("20m", False, None, "")],
        ),
        (
            "TailscalePeerRelayHealthWarnings",
            [series("tailscaled_health_messages", "2x30", **relay, type="warning")],
            [("10m", False, None, ""), ("20m", True, {**relay, "type": "warning"}, "2")],
        ),
        (
            "TailscalePeerRelayHealthWarnings",
            [series("tailscaled_health_messages", "0x30", **relay, type="warning")],
            [("20m", False, None, "")],
        ),
    ]


MANIFESTS = render(VALUES, args=API)
RULES = one(MANIFESTS, "PrometheusRule")["spec"]
CASES = cases(relay_names(MANIFESTS))


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "relay-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": RULES["groups"]}))
    return path


def test_promtool_accepts_the_rules(tool, rules_file):
    result = subprocess.run([tool("promtool"), "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case():
    alerts = {r["alert"] for r in RULES["groups"][0]["rules"]}
    tested = {(alert, firing) for alert, _, evals in CASES for _, firing, _, _ in evals}
    missing = {(a, f) for a in alerts for f in (True, False)} - tested
    assert not missing, f"alerts without a promtool case that fires (True) or stays silent (False): {sorted(missing)}"


@pytest.mark.parametrize(
    "alert, input_series, evals",
    CASES,
    ids=[
        f"{alert}-{'fires' if any(e[1] for e in evals) else 'silent'}-{i}" for i, (alert, _, evals) in enumerate(CASES)
    ],
)
def test_the_alert_fires_only_when_its_condition_lasts(tool, rules_file, tmp_path, alert, input_series, evals):
    test = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": alert,
                        "exp_alerts": [expected(RULES, alert, labels, value)] if firing else [],
                    }
                    for at, firing, labels, value in evals
                ],
            }
        ],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"{alert} with {input_series}:\n{result.stdout}{result.stderr}"
