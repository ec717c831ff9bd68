"""Least privilege: the relay touches only its state Secrets, Service and status ConfigMap; the hook only reads the
relay's pods, Services and status ConfigMaps."""

import pytest

from support.render import FULLNAME, find, one, render


def rules_by_resource(role):
    return {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in role["rules"]}


@pytest.mark.parametrize("replicas", [1, 3])
def test_relay_role_names_each_state_secret_and_cannot_create(replicas):
    role = one(render({"replicaCount": replicas}), "Role", FULLNAME)
    rules = rules_by_resource(role)
    secrets = rules[(("",), ("secrets",))]
    assert secrets["resourceNames"] == [f"{FULLNAME}-state-{i}" for i in range(replicas)]
    assert sorted(secrets["verbs"]) == ["get", "patch", "update"]
    assert f"{FULLNAME}-auth" not in secrets["resourceNames"], "the relay must not read its auth Secret through the API"
    assert sorted(rules[(("",), ("events",))]["verbs"]) == ["create", "get", "patch"]
    # the agent reads and watches its Service's addresses (a watch by name), and writes its status ConfigMap
    services = rules[(("",), ("services",))]
    assert services["resourceNames"] == [f"{FULLNAME}-{i}" for i in range(replicas)]
    assert services["verbs"] == ["get", "list", "watch"]
    status = rules[(("",), ("configmaps",))]
    assert status["resourceNames"] == [f"{FULLNAME}-status-{i}" for i in range(replicas)]
    assert status["verbs"] == ["get", "patch"], "the agent patches its status; it may not create or delete ConfigMaps"
    assert set(rules) == {(("",), ("secrets",)), (("",), ("events",)), (("",), ("services",)), (("",), ("configmaps",))}


@pytest.mark.parametrize("replicas", [1, 3])
def test_state_secrets_are_created_empty_and_kept(replicas):
    secrets = [s for s in find(render({"replicaCount": replicas}), "Secret") if "-state-" in s["metadata"]["name"]]
    assert [s["metadata"]["name"] for s in secrets] == [f"{FULLNAME}-state-{i}" for i in range(replicas)]
    for secret in secrets:
        assert "data" not in secret and "stringData" not in secret
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize("replicas", [1, 3])
def test_hook_role_is_limited_to_the_relays_own_objects(replicas):
    role = one(render({"replicaCount": replicas}), "Role", f"{FULLNAME}-hook")
    pods = [f"{FULLNAME}-{i}" for i in range(replicas)]
    rules = rules_by_resource(role)
    # no pods/exec (exec into the relay would let the hook read its auth key) and no logs: the agents' status
    # ConfigMaps say what the hook needs
    assert set(rules) == {(("",), ("pods", "services")), (("",), ("configmaps",)), (("apps",), ("statefulsets",))}
    assert rules[(("",), ("pods", "services"))]["resourceNames"] == pods
    assert rules[(("",), ("configmaps",))]["resourceNames"] == [f"{FULLNAME}-status-{i}" for i in range(replicas)]
    for rule in role["rules"]:
        assert rule["verbs"] == ["get"], rule
    assert rules[(("apps",), ("statefulsets",))]["resourceNames"] == [FULLNAME]
    for rule in role["rules"]:
        assert "resourceNames" in rule, f"hook rule {rule} is not limited by name"


def test_bindings_tie_roles_to_their_service_accounts():
    manifests = render()
    for name in (FULLNAME, f"{FULLNAME}-hook"):
        binding = one(manifests, "RoleBinding", name)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "tailnet"}]
        one(manifests, "ServiceAccount", name)


def test_rbac_can_be_left_to_the_user():
    manifests = render({"rbac": {"create": False}})
    assert not find(manifests, "Role") and not find(manifests, "RoleBinding")


def test_service_account_annotations():
    sa = one(render({"serviceAccount": {"annotations": {"a": "b"}}}), "ServiceAccount", FULLNAME)
    assert sa["metadata"]["annotations"] == {"a": "b"}


RECREATE = {"rbac": {"relayRecreatesStateSecrets": True}}


@pytest.mark.parametrize(
    "values",
    [{}, {"replicaCount": 3}, {"serviceAccount": {"create": False, "name": "mine"}}, RECREATE],
    ids=["default", "3 replicas", "existing service account", "relay recreates state"],
)
def test_no_rule_on_named_objects_is_ever_unrestricted(values):
    # A rule on secrets, pods or their subresources without resourceNames grants them all in the namespace.
    manifests = render(values)
    for role in find(manifests, "Role"):
        for rule in role["rules"]:
            if set(rule["resources"]) & {
                "secrets",
                "pods",
                "pods/exec",
                "pods/log",
                "services",
                "statefulsets",
                "configmaps",
            }:
                if rule["verbs"] == ["create"] and rule["resources"] == ["secrets"]:
                    # "create" cannot carry names; only the admission policy may narrow it
                    assert find(manifests, "ValidatingAdmissionPolicy"), f"{rule} without the admission policy"
                    continue
                assert rule.get("resourceNames"), f"Role {role['metadata']['name']} grants {rule} on every object"


@pytest.mark.parametrize("replicas", [1, 3])
@pytest.mark.parametrize(
    "account",
    [{}, {"serviceAccount": {"create": False, "name": "relay-sa"}}],
    ids=["chart's account", "existing account"],
)
def test_a_relay_may_recreate_only_its_own_opaque_state_secrets(replicas, account):
    manifests = render({**RECREATE, **account, "replicaCount": replicas})
    user = f"system:serviceaccount:tailnet:{account.get('serviceAccount', {}).get('name', FULLNAME)}"
    creates = [
        r for r in one(manifests, "Role", FULLNAME)["rules"] if "create" in r["verbs"] and "secrets" in r["resources"]
    ]
    assert creates == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}], creates
    name = f"{FULLNAME}.tailnet.state-secrets"
    policy = one(manifests, "ValidatingAdmissionPolicy", name)["spec"]
    assert policy["failurePolicy"] == "Fail"
    assert policy["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["secrets"]}
    ]
    assert [c["expression"] for c in policy["matchConditions"]] == [f"request.userInfo.username == '{user}'"], (
        "the policy must apply to the relay's ServiceAccount, and only to it"
    )
    names = [f"'{FULLNAME}-state-{i}'" for i in range(replicas)]
    assert policy["variables"] == [{"name": "stateSecrets", "expression": f"[{', '.join(names)}]"}]
    expressions = [v["expression"] for v in policy["validations"]]
    assert "object.metadata.name in variables.stateSecrets" in expressions[0]
    assert "object.type == 'Opaque'" in expressions[1]
    binding = one(manifests, "ValidatingAdmissionPolicyBinding", name)["spec"]
    assert binding == {
        "policyName": name,
        "validationActions": ["Deny"],
        "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tailnet"}}},
    }


def test_by_default_the_relay_may_not_create_secrets_and_nothing_cluster_scoped_is_rendered():
    manifests = render()
    assert not [
        r
        for role in find(manifests, "Role")
        for r in role["rules"]
        if "create" in r["verbs"] and "secrets" in r["resources"]
    ]
    assert not [m for m in manifests if "namespace" not in m["metadata"]], (
        "the default install must need only namespace rights"
    )


def test_an_existing_service_account_is_bound_by_its_name():
    manifests = render({"serviceAccount": {"create": False, "name": "relay-sa"}})
    binding = one(manifests, "RoleBinding", FULLNAME)
    assert binding["subjects"][0]["name"] == "relay-sa"
    assert not [sa for sa in find(manifests, "ServiceAccount") if sa["metadata"]["name"] in ("relay-sa", "default")]


@pytest.mark.parametrize("replicas", [1, 3])
def test_scaling_outside_helm_is_refused_by_a_policy_that_names_replica_count(replicas):
    manifests = render({"rbac": {"refuseScalingOutsideHelm": True}, "replicaCount": replicas})
    annotation = "tailscale-peer-relay.chart/replica-count"
    sts = one(manifests, "StatefulSet")
    assert sts["metadata"]["annotations"][annotation] == str(replicas) and sts["spec"]["replicas"] == replicas, (
        "the StatefulSet must carry the replica count it was rendered with next to spec.replicas"
    )
    name = f"{FULLNAME}.tailnet.replicas"
    policy = one(manifests, "ValidatingAdmissionPolicy", name)["spec"]
    assert policy["matchConstraints"]["resourceRules"] == [
        {
            "apiGroups": ["apps"],
            "apiVersions": ["v1"],
            "operations": ["UPDATE"],
            "resources": ["statefulsets", "statefulsets/scale"],
            "resourceNames": [FULLNAME],
        }
    ]
    assert f"'{annotation}' in object.metadata.annotations" in policy["variables"][0]["expression"]
    (validation,) = policy["validations"]
    # the scale subresource (kubectl scale, an HPA) may not change replicas at all; the StatefulSet only to the
    # count Helm wrote beside them
    assert validation["expression"] == (
        "has(request.subResource) && request.subResource == 'scale' ? "
        "object.spec.replicas == oldObject.spec.replicas : "
        "object.spec.replicas == variables.rendered"
    )
    assert "replicaCount" in validation["messageExpression"]
    binding = one(manifests, "ValidatingAdmissionPolicyBinding", name)["spec"]
    assert binding["policyName"] == name and binding["validationActions"] == ["Deny"]
    assert binding["matchResources"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "tailnet"}


def test_without_the_option_the_statefulset_has_no_replica_annotation():
    assert "annotations" not in one(render(), "StatefulSet")["metadata"]
