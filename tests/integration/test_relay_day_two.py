"""Day two: whatever happens to a running release, each relay is soon back to advertising its Service's current
addresses on relay.port, with no helm command. The relay-settings sidecar does it (chart/files/relay-settings.sh)."""
from __future__ import annotations

import json
import time

import pytest

from tailnet import headscale

pytestmark = pytest.mark.integration

PORT = 61441
SEED = {"relay": {"port": PORT}, "service": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}}
# The sidecar checks every 10 s (settingsSidecar.intervalSeconds); a re-login adds a container restart and a login.
WITHIN = 120


def eventually_advertises(release, index: int, timeout: int = WITHIN) -> tuple[str, set[str]]:
    """Waits until replica INDEX advertises RELAY port and exactly its Service's current addresses; returns them."""
    pod = release.pod(index)
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            wanted = release.service_endpoints(index, PORT)
            seen = release.relay_settings(pod)
            if wanted and seen == (str(PORT), wanted):
                return seen
        except Exception as error:  # the relay container restarting, the Service changing
            seen = repr(error)
        time.sleep(3)
    pytest.fail(f"{pod} did not come back to port {PORT} and endpoints {release.service_endpoints(index, PORT)} "
                f"within {timeout}s; last seen: {seen}\n{release.sidecar_log(pod)}\n{release.describe()}")


def test_a_relogin_that_wipes_the_settings_is_repaired(release):
    release.install(SEED)
    pod = release.pod(0)
    eventually_advertises(release, 0)
    # The node is deleted on the control server (an admin, an expiry): at its next start the relay logs in again
    # as a new node, and `tailscale up` replaces every preference, the relay settings included.
    node_key = json.loads(release.tailscale(pod, "status", "--json"))["Self"]["PublicKey"]
    node = next(n for n in json.loads(headscale("nodes", "list", "-o", "json")) if n["node_key"] == node_key)
    headscale("nodes", "delete", "--identifier", str(node["id"]), "--force")
    release.core.delete_namespaced_pod(pod, release.namespace)
    deadline = time.monotonic() + WITHIN
    while time.monotonic() < deadline:
        again = [n for n in json.loads(headscale("nodes", "list", "-o", "json")) if n["node_key"] == node_key]
        if again and again[0]["id"] != node["id"]:
            break  # registered again, as a new node (tailscaled keeps its node key)
        time.sleep(3)
    else:
        pytest.fail(f"the relay did not register again after its node was deleted\n{release.describe()}")
    eventually_advertises(release, 0)
    assert "the relay had port '' endpoints ''" in release.sidecar_log(pod), \
        "the sidecar should have seen the re-login's empty settings and set them again"
    release.wait_pod_ready(pod)


def test_a_new_load_balancer_address_is_advertised(release):
    release.install(SEED)
    eventually_advertises(release, 0)
    service = release.core.read_namespaced_service(release.pod(0), release.namespace)
    old = {i.ip for i in service.status.load_balancer.ingress}
    # Move the Service to other addresses of the MetalLB pool, as a pool edit or a recreated cloud LB would.
    new = {ip: next_free(release, ip) for ip in old}
    release.core.patch_namespaced_service(release.pod(0), release.namespace, {"metadata": {"annotations": {
        "metallb.io/loadBalancerIPs": ",".join(new.values())}}})
    deadline = time.monotonic() + 60
    while release.service_endpoints(0, PORT) == {f"[{ip}]:{PORT}" if ":" in ip else f"{ip}:{PORT}" for ip in old}:
        if time.monotonic() > deadline:
            pytest.fail(f"MetalLB did not move the Service to {sorted(new.values())} within 60s")
        time.sleep(2)
    _, endpoints = eventually_advertises(release, 0)
    assert {e.rsplit(":", 1)[0].strip("[]") for e in endpoints} == set(new.values()), endpoints


def next_free(release, ip: str) -> str:
    """An address of the same family in the MetalLB pool that no Service uses."""
    import ipaddress

    used = {i.ip for s in release.core.list_service_for_all_namespaces().items
            for i in (s.status.load_balancer.ingress or []) if i.ip}
    candidate = ipaddress.ip_address(ip)
    for _ in range(40):
        candidate += 1
        if str(candidate) not in used:
            return str(candidate)
    pytest.fail(f"no free pool address after {ip}")


def test_a_deleted_relay_pod_comes_back_relaying_without_the_hook(release):
    release.install(SEED)
    pod = release.pod(0)
    eventually_advertises(release, 0)
    old_uid = release.core.read_namespaced_pod(pod, release.namespace).metadata.uid
    release.core.delete_namespaced_pod(pod, release.namespace)
    deadline = time.monotonic() + WITHIN
    while release.wait_pod_ready(pod).metadata.uid == old_uid and time.monotonic() < deadline:
        time.sleep(2)
    eventually_advertises(release, 0)


def test_a_relay_pod_stops_without_waiting_out_its_grace_period(release):
    # Every container must stop on SIGTERM: one that ignores it (the sidecar, PID 1 without a trap, did) holds the
    # pod until the kubelet's SIGKILL after terminationGracePeriodSeconds, and a StatefulSet starts the replacement
    # only then. With a grace period of 120 s, a pod gone well before it stopped by itself.
    grace = 120
    release.install({**SEED, "terminationGracePeriodSeconds": grace})
    pod = release.pod(0)
    release.wait_pod_ready(pod)
    started = time.monotonic()
    release.core.delete_namespaced_pod(pod, release.namespace)
    old_uid = None
    while time.monotonic() - started < grace + 30:
        try:
            current = release.core.read_namespaced_pod(pod, release.namespace)
        except Exception:  # gone, not yet recreated
            break
        old_uid = old_uid or current.metadata.uid
        if current.metadata.uid != old_uid:  # the StatefulSet made the next one: the old one is gone
            break
        time.sleep(0.5)
    stopped_in = time.monotonic() - started
    assert stopped_in < grace / 2, (
        f"the relay pod took {stopped_in:.0f}s of its {grace}s grace period to stop: a container ignores SIGTERM\n"
        f"{release.describe()}")


def test_a_deleted_state_secret_is_written_back_and_the_relay_logs_in_again(release):
    # The opt-in for clusters whose admin accepts the chart's ValidatingAdmissionPolicy (chart default: off).
    values = {**SEED, "rbac": {"relayRecreatesStateSecrets": True}}
    release.install(values)
    pod, state = release.pod(0), f"{release.fullname}-state-0"
    eventually_advertises(release, 0)
    old_key, _ = release.node_identity(pod)
    old_uid = release.core.read_namespaced_pod(pod, release.namespace).metadata.uid
    # Deleted by hand (or by a tool that prunes it), then the pod restarts: tailscaled starts with no state.
    release.core.delete_namespaced_secret(state, release.namespace)
    release.core.delete_namespaced_pod(pod, release.namespace)
    deadline = time.monotonic() + WITHIN
    while release.wait_pod_ready(pod).metadata.uid == old_uid and time.monotonic() < deadline:
        time.sleep(2)
    eventually_advertises(release, 0)
    new_key, _ = release.node_identity(pod)
    assert new_key != old_key, "with its state gone the relay should have logged in again as a new node"
    written = release.core.read_namespaced_secret(state, release.namespace).data or {}
    assert "_machinekey" in written, f"tailscaled should have written its state back to {state}: {sorted(written)}"
    relay = next(s for s in release.core.read_namespaced_pod(pod, release.namespace).status.container_statuses
                 if s.name == "tailscale")
    assert relay.restart_count == 0, f"the relay container restarted {relay.restart_count} times (crash loop?)"
    # Helm takes the Secret the relay wrote back into the release again.
    release.upgrade(values)
    kept = release.core.read_namespaced_secret(state, release.namespace)
    assert kept.metadata.annotations.get("helm.sh/resource-policy") == "keep"
    assert kept.data.get("_machinekey") == written["_machinekey"], "the upgrade must not touch the relay's state"
    assert release.node_identity(pod)[0] == new_key
