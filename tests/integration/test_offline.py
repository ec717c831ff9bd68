"""Nothing on the test cluster tries to reach the internet: no tailscaled the harness starts uploads its logs to
log.tailscale.com or falls back to bootstrap DNS through Tailscale's public DERP servers.

Every test relay gets the test cluster's values (scripts/images/relay-values.yaml: tailscale.logUpload disabled), the
LAN device and the workload run with TS_NO_LOGS_NO_SUPPORT=true (scripts/images/tailnet, workload.yaml). Without it,
tailscaled's logtail posts to log.tailscale.com from its first seconds and, when DNS for it fails, asks Tailscale's
DERP servers by their public addresses (net/dnsfallback: `bootstrapDNS("derp3.tailscale.com", "68.183.179.66") …`).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import subprocess
import time

import pytest

from support.tailnet import Tailnet

pytestmark = pytest.mark.integration

# What tailscaled prints when it dials out: a name under Tailscale's public domains, its DNS fallback, or an address.
TAILSCALE_NAME = re.compile(r"\b[\w-]+(?:\.[\w-]+)*\.tailscale\.(?:com|io)\b", re.IGNORECASE)
BOOTSTRAP_DNS = re.compile(r"bootstrapDNS")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:])")
# a relay and the clients run this long before their logs are read (logtail uploads within seconds of start)
RUNNING_FOR = 60


def public_addresses(line: str) -> list[str]:
    """The global unicast addresses in LINE (not private, ULA, CGNAT/tailnet, loopback or link-local ones)."""
    found = []
    for match in [*IPV4.findall(line), *IPV6.findall(line)]:
        try:
            address = ipaddress.ip_address(match)
        except ValueError:  # a time of day, a MAC address, a version
            continue
        if address.is_global:
            found.append(match)
    return found


def outside_dials(log: str) -> list[str]:
    """The lines of LOG that name a *.tailscale.com host, bootstrap DNS or a public address."""
    return [
        line
        for line in log.splitlines()
        if TAILSCALE_NAME.search(line) or BOOTSTRAP_DNS.search(line) or public_addresses(line)
    ]


@pytest.mark.parametrize(
    "line, dials",
    [
        (
            'logtail: upload: log upload of 4234 bytes compressed failed: Post "https://log.tailscale.com/c/tailnode.log.'
            'tailscale.io/8c5a": dial tcp: lookup log.tailscale.com on 10.96.0.10:53: no such host',
            True,
        ),
        ('trying bootstrapDNS("derp3.tailscale.com", "68.183.179.66") for "log.tailscale.com" ...', True),
        ('bootstrapDNS("derp4e.tailscale.com", "2a03:b0c0:3:d0::29:9001") for "log.tailscale.com" error: …', True),
        ("netcheck: dial 8.8.8.8:53", True),
        ("magicsock: endpoints changed: 172.18.0.5:41641 (stun), [fc00:f853:ccd:e793::5]:41641 (local)", False),
        ("2026/12/01 09:15:37 peerapi: serving on http://100.64.0.3:33097 and http://[fd7a:115c:a1e0::3]:33097", False),
        ("Program starting: v1.104.7-t1a2b3c4d5, Go 1.27.4: tailscale.com/cmd/tailscaled", False),
    ],
)
def test_the_log_check_knows_a_dial_out_when_it_sees_one(line, dials):
    assert bool(outside_dials(line)) is dials


def pod_log(core, namespace: str, label_selector: str, container: str) -> str:
    pods = core.list_namespaced_pod(namespace, label_selector=label_selector).items
    assert pods, f"no pod with {label_selector} in namespace {namespace}"
    return "\n".join(core.read_namespaced_pod_log(p.metadata.name, namespace, container=container) for p in pods)


def test_no_tailscaled_of_the_test_cluster_tries_to_reach_the_internet(release, core):
    release.install()
    started = release.wait_pod_ready(release.pod(0)).status.start_time
    running = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    time.sleep(max(0.0, RUNNING_FOR - running))

    net = Tailnet()
    logs = {
        "the relay": pod_log(core, release.namespace, "app.kubernetes.io/component=relay", "tailscale"),
        f"the LAN device {net.lan}": subprocess.run(
            ["docker", "logs", net.lan], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60
        ).stdout,
        f"the workload {net.workload}": pod_log(core, net.workload_namespace, "app=workload", "tailscale"),
    }
    for who, log in logs.items():
        assert "tailscaled" in log or "containerboot" in log, f"no tailscaled log read from {who}: {log[-500:]}"
    dials = {who: outside_dials(log)[:5] for who, log in logs.items() if outside_dials(log)}
    assert not dials, f"tailscaled tried to reach the internet (log upload, bootstrap DNS or a public address): {dials}"
