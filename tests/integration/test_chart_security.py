"""The chart runs under the restricted Pod Security Standard; its RBAC holds on the real API server."""
import os

import pytest
from kubernetes import client
from pytest_helm_charts.k8s.stateful_set import wait_for_stateful_sets_to_run


pytestmark = pytest.mark.integration


def test_every_pod_is_admitted_under_restricted_pod_security(release, kube_cluster):
    release.core.patch_namespace(release.namespace, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    release.install({"replicaCount": 2})
    wait_for_stateful_sets_to_run(kube_cluster.kube_client, [release.fullname], release.namespace, timeout_sec=120)
    release.test()  # the test pod and, before it, the hook Job were admitted and succeeded
    for index in range(2):
        pod = release.core.read_namespaced_pod(release.pod(index), release.namespace)
        assert pod.spec.security_context.run_as_non_root is True
        assert pod.spec.security_context.run_as_user == 1000, "the relay runs as non-root by default"


def can(api, namespace, service_account, verb, resource, name, subresource=None):
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=f"system:serviceaccount:{namespace}:{service_account}",
        groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
        resource_attributes=client.V1ResourceAttributes(
            namespace=namespace, verb=verb, resource=resource, name=name, subresource=subresource)))
    return client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed


def test_rbac_allows_only_the_relays_own_objects(release, kube_api):
    release.install()
    ns, relay_sa, hook_sa = release.namespace, release.fullname, f"{release.fullname}-hook"
    release.core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="unrelated")))
    release.core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="unrelated"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image=os.environ["HOOK_IMAGE"],
                                                              command=["sleep", "600"])])))

    assert can(kube_api, ns, relay_sa, "get", "secrets", f"{release.fullname}-state-0")
    assert can(kube_api, ns, relay_sa, "update", "secrets", f"{release.fullname}-state-0")
    assert not can(kube_api, ns, relay_sa, "get", "secrets", "unrelated"), "the relay can read another Secret"
    assert not can(kube_api, ns, relay_sa, "get", "secrets", f"{release.fullname}-auth")
    assert not can(kube_api, ns, relay_sa, "create", "secrets", "anything")
    assert not can(kube_api, ns, relay_sa, "list", "secrets", None)

    # the relay-settings sidecar reads its own Service, nothing else
    assert can(kube_api, ns, relay_sa, "get", "services", release.pod(0))
    assert not can(kube_api, ns, relay_sa, "list", "services", None)

    # no exec anywhere: exec into the relay would read its auth key
    for verb in ("create", "get"):
        assert not can(kube_api, ns, hook_sa, verb, "pods", release.pod(0), "exec"), f"the hook can {verb} pods/exec"
        assert not can(kube_api, ns, relay_sa, verb, "pods", release.pod(0), "exec")
    assert can(kube_api, ns, hook_sa, "get", "pods", release.pod(0), "log")
    assert not can(kube_api, ns, hook_sa, "get", "pods", "unrelated", "log")
    assert not can(kube_api, ns, hook_sa, "get", "secrets", f"{release.fullname}-auth")
    assert not can(kube_api, ns, hook_sa, "list", "pods", None)
