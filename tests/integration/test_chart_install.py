"""One `helm install` on a real cluster gives configured relays; helm test agrees."""

import datetime

import pytest

pytestmark = pytest.mark.integration


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
