"""helm uninstall leaves only what the README says is kept on purpose: the state Secrets."""

import pytest
from kubernetes import client

pytestmark = pytest.mark.integration


def test_uninstall_keeps_only_the_state_secrets(release, namespace):
    release.install({"replicaCount": 2})
    release.uninstall()
    selector = "app.kubernetes.io/instance=relay"
    left = []
    core, apps, batch = release.core, release.apps, release.batch
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    for kind, items in [
        ("Secret", core.list_namespaced_secret(namespace, label_selector=selector).items),
        ("Service", core.list_namespaced_service(namespace, label_selector=selector).items),
        ("ConfigMap", core.list_namespaced_config_map(namespace, label_selector=selector).items),
        ("ServiceAccount", core.list_namespaced_service_account(namespace, label_selector=selector).items),
        (
            "Pod",
            [
                p
                for p in core.list_namespaced_pod(namespace, label_selector=selector).items
                if not p.metadata.deletion_timestamp
            ],
        ),
        ("StatefulSet", apps.list_namespaced_stateful_set(namespace, label_selector=selector).items),
        ("Job", batch.list_namespaced_job(namespace, label_selector=selector).items),
        ("Role", rbac.list_namespaced_role(namespace, label_selector=selector).items),
        ("RoleBinding", rbac.list_namespaced_role_binding(namespace, label_selector=selector).items),
    ]:
        left += [f"{kind}/{item.metadata.name}" for item in items]
    assert sorted(left) == [f"Secret/{release.names.state_secret(0)}", f"Secret/{release.names.state_secret(1)}"]
    state = core.read_namespaced_secret(release.names.state_secret(0), namespace)
    assert state.data, "the kept state Secret holds the node's identity"
    # The README's removal command removes them.
    core.delete_collection_namespaced_secret(
        namespace, label_selector="app.kubernetes.io/instance=relay,app.kubernetes.io/component=relay"
    )
    assert not core.list_namespaced_secret(namespace, label_selector=selector).items
