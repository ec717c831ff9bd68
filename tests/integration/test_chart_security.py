"""The chart runs under the restricted Pod Security Standard; its RBAC holds on the real API server."""

import os

import pytest
from kubernetes import client
from pytest_helm_charts.k8s.stateful_set import wait_for_stateful_sets_to_run

pytestmark = pytest.mark.integration


def test_every_pod_is_admitted_under_restricted_pod_security(release, kube_cluster):
    release.core.patch_namespace(
        release.namespace,
        {
            "metadata": {
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            }
        },
    )
    release.install({"replicaCount": 2})
    wait_for_stateful_sets_to_run(kube_cluster.kube_client, [release.fullname], release.namespace, timeout_sec=120)
    release.test()  # the test pod and, before it, the hook Job were admitted and succeeded
    for index in range(2):
        pod = release.core.read_namespaced_pod(release.pod(index), release.namespace)
        assert pod.spec.security_context.run_as_non_root is True
        assert pod.spec.security_context.run_as_user == 1000, "the relay runs as non-root by default"


def can(api, namespace, service_account, verb, resource, name, subresource=None):
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{namespace}:{service_account}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=verb, resource=resource, name=name, subresource=subresource
            ),
        )
    )
    # the API server sets it; the client types it Optional (type: ignore below)
    return client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed  # type: ignore[union-attr]


def test_rbac_allows_only_the_relays_own_objects(release, kube_api):
    release.install()
    names = release.names
    ns, relay_sa, hook_sa = release.namespace, names.relay_account, names.hook_account
    release.core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="unrelated")))
    release.core.create_namespaced_pod(
        ns,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="unrelated"),
            # sleep as PID 1 ignores SIGTERM: without a short grace period the namespace's deletion would wait 30 s
            spec=client.V1PodSpec(
                termination_grace_period_seconds=1,
                containers=[client.V1Container(name="c", image=os.environ["TOOLBOX_IMAGE"], command=["sleep", "600"])],
            ),
        ),
    )

    assert can(kube_api, ns, relay_sa, "get", "secrets", names.state_secret(0))
    assert can(kube_api, ns, relay_sa, "update", "secrets", names.state_secret(0))
    assert not can(kube_api, ns, relay_sa, "get", "secrets", "unrelated"), "the relay can read another Secret"
    assert not can(kube_api, ns, relay_sa, "get", "secrets", names.auth_secret)
    assert not can(kube_api, ns, relay_sa, "create", "secrets", "anything")
    policies = client.AdmissionregistrationV1Api(kube_api).list_validating_admission_policy().items
    # the API server sets it; the client types it Optional (type: ignore below)
    assert not [p.metadata.name for p in policies if p.metadata.name.endswith(f".{ns}.state-secrets")], (  # type: ignore[union-attr]
        "without rbac.relayRecreatesStateSecrets no admission policy is installed"
    )
    assert not can(kube_api, ns, relay_sa, "list", "secrets", None)

    # the agent reads and watches its own Service, nothing else, and writes only its status ConfigMap
    status = release.status_configmap(0)
    assert can(kube_api, ns, relay_sa, "get", "services", release.pod(0))
    assert can(kube_api, ns, relay_sa, "watch", "services", release.pod(0))
    assert not can(kube_api, ns, relay_sa, "list", "services", None)
    assert not can(kube_api, ns, relay_sa, "watch", "services", None)
    assert can(kube_api, ns, relay_sa, "patch", "configmaps", status)
    assert not can(kube_api, ns, relay_sa, "patch", "configmaps", "unrelated")
    assert not can(kube_api, ns, relay_sa, "create", "configmaps", "anything")
    for verb in ("patch", "update"):
        assert not can(kube_api, ns, relay_sa, verb, "pods", release.pod(0)), f"the relay can {verb} its pod (image)"

    # no exec anywhere: exec into the relay would read its auth key
    for verb in ("create", "get"):
        assert not can(kube_api, ns, hook_sa, verb, "pods", release.pod(0), "exec"), f"the hook can {verb} pods/exec"
        assert not can(kube_api, ns, relay_sa, verb, "pods", release.pod(0), "exec")
    assert not can(kube_api, ns, hook_sa, "get", "pods", release.pod(0), "log"), "the hook reads status, not logs"
    assert can(kube_api, ns, hook_sa, "get", "configmaps", status)
    assert not can(kube_api, ns, hook_sa, "patch", "configmaps", status)
    assert not can(kube_api, ns, hook_sa, "get", "configmaps", "unrelated")
    assert not can(kube_api, ns, hook_sa, "get", "secrets", names.auth_secret)
    assert not can(kube_api, ns, hook_sa, "list", "pods", None)


def as_service_account(api, namespace, service_account) -> client.CoreV1Api:
    """The core API as SERVICE_ACCOUNT (impersonation): requests pass its RBAC and the admission policies."""
    impersonating = client.ApiClient(configuration=api.configuration)
    impersonating.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:{service_account}")
    return client.CoreV1Api(impersonating)


def forbidden_because(create) -> str:
    with pytest.raises(client.ApiException) as refused:
        create()
    assert refused.value.status == 403, refused.value
    return refused.value.body  # type: ignore[return-value]  # the API server sets it; the client types it Optional


def test_a_relay_that_may_recreate_its_state_secret_may_create_nothing_else(release, kube_api):
    release.install({"rbac": {"relayRecreatesStateSecrets": True}})
    ns, state = release.namespace, release.names.state_secret(0)
    relay = as_service_account(kube_api, ns, release.names.relay_account)

    def secret(name, **fields):
        return client.V1Secret(metadata=client.V1ObjectMeta(name=name, **fields.pop("metadata", {})), **fields)

    # RBAC grants "create" on every Secret name; the chart's ValidatingAdmissionPolicy narrows it.
    assert can(kube_api, ns, release.names.relay_account, "create", "secrets", "anything")
    why = forbidden_because(lambda: relay.create_namespaced_secret(ns, secret("anything")))
    assert "may create only its own state Secrets" in why and state in why, why
    release.core.delete_namespaced_secret(state, ns)
    # A service-account-token Secret under the state Secret's name would give the relay another account's token.
    why = forbidden_because(
        lambda: relay.create_namespaced_secret(
            ns,
            secret(
                state,
                type="kubernetes.io/service-account-token",
                metadata={"annotations": {"kubernetes.io/service-account.name": "default"}},
            ),
        )
    )
    assert "only as type Opaque" in why, why
    # What tailscaled's kube store writes back is admitted.
    relay.create_namespaced_secret(ns, secret(state, data={"_machinekey": "bWtleQ=="}))
    # A state Secret with only some of tailscaled's keys makes containerboot wait at SIGTERM until tailscaled has
    # written the rest (cmd/containerboot waitForConsistentState), which it never does here: the pod would take its
    # whole grace period (30 s) to stop. Without the Secret it stops at once.
    release.core.delete_namespaced_secret(state, ns)
    # The policy binds this release's namespace only, and only this ServiceAccount.
    release.core.create_namespaced_secret(ns, secret("an-admins-secret"))


def test_scaling_outside_helm_is_refused_with_the_value_to_change(release):
    values = {"rbac": {"refuseScalingOutsideHelm": True}}
    release.install(values)
    ns, name = release.namespace, release.fullname
    # `kubectl scale` and an HPA go through the scale subresource; kubectl edit and an Argo CD replica override
    # change the StatefulSet itself.
    for change in (
        lambda: release.apps.patch_namespaced_stateful_set_scale(name, ns, {"spec": {"replicas": 2}}),
        lambda: release.apps.patch_namespaced_stateful_set(name, ns, {"spec": {"replicas": 2}}),
    ):
        with pytest.raises(client.ApiException) as refused:
            change()
        # the API server sets it; the client types it Optional (type: ignore below)
        assert "scale with the chart value replicaCount" in refused.value.body, refused.value.body  # type: ignore[operator]
    assert release.apps.read_namespaced_stateful_set(name, ns).spec.replicas == 1
    # Other changes to the StatefulSet still go through (here a label, as tools add them).
    release.apps.patch_namespaced_stateful_set(name, ns, {"metadata": {"labels": {"team": "net"}}})
    # Helm changes replicaCount and the count it wrote beside it together.
    release.upgrade({**values, "replicaCount": 2})
    assert release.apps.read_namespaced_stateful_set(name, ns).spec.replicas == 2
    release.wait_pod_ready(release.pod(1))
