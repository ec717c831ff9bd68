"""One `helm install` on a real cluster gives configured relays; helm test agrees."""

import datetime

import pytest

from support.cluster import on_cluster

pytestmark = pytest.mark.integration

# the write-up's setup (chart/ci/seed-values.yaml) on the test cluster
SEED = on_cluster("seed")
PORT = SEED["relay"]["port"]


def test_seed_setup_is_configured_by_one_install(release):
    release.install(SEED)
    pod = release.pod(0)
    expected = release.service_endpoints(0, PORT)
    families = {"v6" if e.startswith("[") else "v4" for e in expected}
    assert families == {"v4", "v6"}, f"the RequireDualStack Service should have an IPv4 and an IPv6 address: {expected}"
    port, endpoints = release.relay_settings(pod)
    assert port == str(PORT)
    assert endpoints == expected, "the relay advertises exactly the Service's addresses with the relay port"
    assert PORT in release.udp_ports_bound(pod), "the relay's UDP port is not bound inside the pod"
    # the test tailnet's grant (tailscale.com/cap/relay from every node to tag:relay) covers the LAN device and the
    # workload at least, and the relay hears its home DERP region
    status = release.agent_status(0)
    assert status["relayPeers"] >= 2 and not status.get("unusable"), f"peers should be able to use the relay: {status}"
    assert "RelayUsable" in [reason for reason, _ in release.agent_events(pod)]
    release.test()


def test_static_endpoints_are_applied_verbatim(release):
    endpoints = ["[fd00:10::7]:40001", "192.0.2.7:40001"]
    release.install({"relay": {"port": 40001, "staticEndpoints": endpoints}})
    assert release.relay_settings(release.pod(0)) == ("40001", set(endpoints))
    release.test()


def test_two_replicas_are_two_relays(release):
    release.install({"replicaCount": 2})
    identities = set()
    for index in range(2):
        pod = release.pod(index)
        port, endpoints = release.relay_settings(pod)
        assert port == "40000"
        assert endpoints == release.service_endpoints(index, 40000), f"{pod} advertises its own Service's addresses"
        identities.add(release.node_identity(pod))
    assert len(identities) == 2, "each replica must be its own Tailscale node"
    assert release.service_endpoints(0, 40000).isdisjoint(release.service_endpoints(1, 40000))
    release.test()


def test_upgrade_and_rollback_keep_the_relay_right(release):
    release.install()
    release.upgrade({"relay": {"port": 41000}})
    pod = release.pod(0)
    assert release.relay_settings(pod) == ("41000", release.service_endpoints(0, 41000))
    service = release.core.read_namespaced_service(pod, release.namespace)
    assert service.spec.ports[0].port == 41000
    release.test()

    release.rollback(1)
    assert release.relay_settings(pod) == ("40000", release.service_endpoints(0, 40000))
    assert release.core.read_namespaced_service(pod, release.namespace).spec.ports[0].port == 40000
    release.test()


def test_a_restarted_relay_keeps_its_identity_and_settings_without_the_hook(release):
    release.install({"relay": {"port": 61441}})
    pod = release.pod(0)
    before = (release.node_identity(pod), release.relay_settings(pod))
    old_uid = release.core.read_namespaced_pod(pod, release.namespace).metadata.uid
    restarted_at = datetime.datetime.now(datetime.UTC)
    release.core.delete_namespaced_pod(pod, release.namespace)
    for _ in range(60):
        fresh = release.wait_pod_ready(pod)
        if fresh.metadata.uid != old_uid:
            break
    assert fresh.metadata.uid != old_uid, "the relay pod was not replaced"
    assert not release.hook_jobs_created_since(restarted_at), "no hook may run on a restart"
    after = (release.node_identity(pod), release.relay_settings(pod))
    assert after == before, "a restart must keep the node identity and the relay settings"
    release.test()
