"""With metrics.enabled, each relay's /metrics shows what it relays, scraped the way Prometheus would.

Prometheus, told by the chart's ServiceMonitor, selects the Services with its labels, takes each endpoint of the named
port and GETs its path over the network. The test does the same from the rendered ServiceMonitor and the cluster's
EndpointSlices (the Prometheus Operator's CRDs are not on the test cluster), reaching each pod address through the API
server's proxy. While the LAN device pings the workload through the relay, tailscaled's user metrics must show it:
tailscaled_peer_relay_forwarded_packets_total grows and tailscaled_peer_relay_endpoints{state="open"} counts the
session.
"""

from __future__ import annotations

import json
import re

import pytest

from support.cluster import cluster_values
from support.render import one, render
from support.repo import CHART
from support.tailnet import relay_side, relayed
from support.values import deep_merge

pytestmark = pytest.mark.integration

PORT = 61441
VALUES = {"relay": {"port": PORT}, "metrics": {"enabled": True}}
# the same release with its ServiceMonitor, rendered only: it names what Prometheus would scrape
WITH_MONITOR = deep_merge(VALUES, {"metrics": {"serviceMonitor": {"enabled": True}}})
# Prometheus' text format: name{label="value",...} value
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# a tailscaled metric in a PromQL expression, with its label matchers
SELECTOR = re.compile(r"\b(tailscaled_\w+)(?:\{([^}]*)\})?")
DASHBOARD = CHART / "files" / "grafana-dashboard.json"


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(LABEL.findall(match.group("labels") or ""))
            samples[(match.group("name"), labels)] = float(match.group("value"))
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def chart_expressions() -> list[str]:
    """Every PromQL expression the chart ships: the PrometheusRule's alerts and the Grafana dashboard's panels."""
    rule = one(
        render(
            deep_merge(VALUES, {"metrics": {"prometheusRule": {"enabled": True}}}),
            args=("--api-versions", "monitoring.coreos.com/v1/PrometheusRule"),
        ),
        "PrometheusRule",
    )
    alerts = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    panels = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    return alerts + panels


def not_in_scrape(expressions: list[str], samples: dict) -> list[str]:
    """The tailscaled metrics, and label values they are matched on, that EXPRESSIONS use and SAMPLES lack (the
    scrape's own labels job, namespace and pod, and dashboard variables, aside)."""
    problems = []
    for expr in expressions:
        for name, matchers in SELECTOR.findall(expr):
            have = [labels for (n, labels) in samples if n == name]
            if not have:
                problems.append(f"{name} (in {expr!r})")
                continue
            for key, value in LABEL.findall(matchers):
                if (
                    key not in ("job", "namespace", "pod")
                    and "$" not in value
                    and not any((key, value) in labels for labels in have)
                ):
                    problems.append(f'{name}{{{key}="{value}"}} (in {expr!r})')
    return problems


def scrape_targets(release, monitor: dict) -> list[tuple[str, int, str]]:
    """(pod, port, path) of every target Prometheus would scrape for MONITOR, from the cluster's EndpointSlices."""
    from kubernetes import client

    selector = ",".join(f"{k}={v}" for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    discovery = client.DiscoveryV1Api(release.core.api_client)
    targets = []
    for endpoint in monitor["spec"]["endpoints"]:
        for service in release.core.list_namespaced_service(release.namespace, label_selector=selector).items:
            slices = discovery.list_namespaced_endpoint_slice(
                release.namespace, label_selector=f"kubernetes.io/service-name={service.metadata.name}"
            ).items
            for endpoint_slice in slices:
                for port in endpoint_slice.ports or []:
                    if port.name != endpoint["port"]:
                        continue
                    targets += [
                        (e.target_ref.name, port.port, endpoint["path"])
                        # the API server sets it; the client types it Optional (type: ignore below)
                        for e in endpoint_slice.endpoints  # type: ignore[union-attr]
                        if e.target_ref and e.target_ref.kind == "Pod"
                    ]
    return sorted(set(targets))  # type: ignore[arg-type]  # the API server sets it; the client types it Optional


def scrape(release, pod: str, port: int, path: str) -> dict:
    text = release.core.connect_get_namespaced_pod_proxy_with_path(f"{pod}:{port}", release.namespace, path.lstrip("/"))
    return parse_metrics(text)


def test_the_relay_metrics_count_what_the_relay_forwards_and_carry_the_alerts_and_dashboard(tailnet, release):
    release.install(VALUES)
    monitor = one(
        render(
            deep_merge(cluster_values(), WITH_MONITOR),
            args=("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"),
        ),
        "ServiceMonitor",
    )
    targets = scrape_targets(release, monitor)
    assert [t[0] for t in targets] == [release.pod(0)], (
        f"the ServiceMonitor's port {monitor['spec']['endpoints'][0]['port']!r} should reach the relay pod: {targets}"
    )
    ((pod, port, path),) = targets

    endpoints = release.service_endpoints(0, PORT)
    tailnet.ping_until(relayed(endpoints), 180, f"the relay at {sorted(endpoints)}", relay_side(release))
    before = scrape(release, pod, port, path)
    assert total(before, "tailscaled_peer_relay_endpoints", state="open") >= 1, (
        f"the relay serves the LAN device's session, but its endpoints gauge says otherwise: "
        f"{ {k: v for k, v in before.items() if k[0] == 'tailscaled_peer_relay_endpoints'} }"
    )

    echoes = 50
    answered = tailnet.icmp_echo(tailnet.workload_ip(), echoes)
    assert answered, "no ICMP echo from the workload through the tunnel"
    assert all(p.path == "peer-relay" for p in tailnet.ping(3)), "the path left the relay during the echoes"
    after = scrape(release, pod, port, path)
    name = "tailscaled_peer_relay_forwarded_packets_total"
    grown = total(after, name) - total(before, name)
    # each echo and its reply cross the relay once each way
    assert grown >= 2 * len(answered), (
        f"{name} grew by {grown} while {len(answered)} echoes and replies went through the relay: "
        f"{ {k: v for k, v in after.items() if k[0] == name} }"
    )
    assert total(after, "tailscaled_peer_relay_forwarded_bytes_total") > total(
        before, "tailscaled_peer_relay_forwarded_bytes_total"
    )

    # The alerts and the dashboard use only what the relay really serves.
    missing = not_in_scrape(chart_expressions(), after)
    assert not missing, f"the chart's alerts or dashboard use metrics the relay does not serve: {missing}"
