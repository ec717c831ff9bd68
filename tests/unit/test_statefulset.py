"""The relay StatefulSet: image, identity, Tailscale settings and pod placement follow the values."""

import pytest

from support.render import FULLNAME, RenderError, container, env_of, find, one, relay_container, render
from support.repo import versions


def test_default_image_is_the_pinned_tailscale_release():
    container = relay_container(render())
    version = versions()["TAILSCALE_VERSION"]
    assert container["image"] == f"ghcr.io/tailscale/tailscale:v{version}"
    assert container["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize(
    "image, expected",
    [
        ({"repository": "registry.example/ts", "tag": "v1.94.2"}, "registry.example/ts:v1.94.2"),
        ({"digest": "sha256:" + "a" * 64}, "ghcr.io/tailscale/tailscale:v{v}@sha256:" + "a" * 64),
        ({"pullPolicy": "Always"}, "ghcr.io/tailscale/tailscale:v{v}"),
    ],
)
def test_image_values(image, expected):
    container = relay_container(render({"image": image}))
    assert container["image"] == expected.format(v=versions()["TAILSCALE_VERSION"])
    assert container["imagePullPolicy"] == image.get("pullPolicy", "IfNotPresent")


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_replicas_are_independent_stable_pods(replicas):
    sts = one(render({"replicaCount": replicas}), "StatefulSet")
    assert sts["spec"]["replicas"] == replicas
    assert sts["metadata"]["name"] == FULLNAME
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == f"{FULLNAME}-headless"


def test_each_replica_keeps_state_in_its_own_secret_not_the_auth_secret():
    env = env_of(relay_container(render()))
    assert env["POD_INDEX"] == {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    assert env["TS_KUBE_SECRET"] == f"{FULLNAME}-state-$(POD_INDEX)"
    assert env["TS_AUTHKEY"] == "file:/etc/tailscale/auth/TS_AUTHKEY"


def test_restart_keeps_relay_settings_because_login_happens_once():
    env = env_of(relay_container(render()))
    assert env["TS_AUTH_ONCE"] == "true", "without auth-once, containerboot's 'tailscale up' fights the relay settings"


@pytest.mark.parametrize(
    "values, expected",
    [
        ({}, FULLNAME),
        ({"tailscale": {"hostname": "k8s-peer-relay"}}, "k8s-peer-relay"),
        ({"replicaCount": 3}, f"{FULLNAME}-$(POD_INDEX)"),
        ({"replicaCount": 2, "tailscale": {"hostname": "edge"}}, "edge-$(POD_INDEX)"),
    ],
)
def test_hostname(values, expected):
    assert env_of(relay_container(render(values)))["TS_HOSTNAME"] == expected


@pytest.mark.parametrize(
    "tailscale, expected",
    [
        ({}, None),
        ({"tags": ["tag:relay"]}, "--advertise-tags=tag:relay"),
        ({"tags": ["tag:relay", "tag:k8s"]}, "--advertise-tags=tag:relay,tag:k8s"),
        ({"loginServer": "https://headscale.example.com"}, "--login-server=https://headscale.example.com"),
        (
            {"loginServer": "https://hs.example", "tags": ["tag:relay"], "extraArgs": ["--advertise-connector"]},
            "--login-server=https://hs.example --advertise-tags=tag:relay --advertise-connector",
        ),
    ],
)
def test_up_arguments(tailscale, expected):
    env = env_of(relay_container(render({"tailscale": tailscale})))
    assert env.get("TS_EXTRA_ARGS") == expected


@pytest.mark.parametrize(
    "tailscale, uploads",
    [
        ({}, True),
        ({"logUpload": "auto", "loginServer": "https://headscale.example.com"}, False),
        ({"logUpload": "enabled", "loginServer": "https://headscale.example.com"}, True),
        ({"logUpload": "disabled"}, False),
    ],
    ids=["Tailscale's control plane", "a custom login server", "enabled by hand", "disabled by hand"],
)
def test_log_upload_to_tailscale_follows_the_login_server_unless_chosen(tailscale, uploads):
    env = env_of(relay_container(render({"tailscale": tailscale})))
    if uploads:
        assert "TS_NO_LOGS_NO_SUPPORT" not in env, "the relay would not upload its logs to Tailscale's log service"
    else:
        assert env.get("TS_NO_LOGS_NO_SUPPORT") == "true", (
            "tailscaled would upload its logs to log.tailscale.com (and look the name up through Tailscale's public"
            " DERP servers when DNS fails)"
        )


def test_daemon_extra_args():
    env = env_of(relay_container(render({"tailscale": {"daemonExtraArgs": ["--verbose=1"]}})))
    assert env["TS_TAILSCALED_EXTRA_ARGS"] == "--verbose=1"


def test_userspace_networking_is_the_default():
    container = relay_container(render())
    assert env_of(container)["TS_USERSPACE"] == "true"
    assert not container["securityContext"].get("privileged")


def test_kernel_networking_is_an_explicit_opt_in():
    container = relay_container(render({"tailscale": {"userspace": False}}))
    assert env_of(container)["TS_USERSPACE"] == "false"
    assert "NET_ADMIN" in container["securityContext"]["capabilities"]["add"]


def test_relay_port_is_a_udp_container_port():
    ports = {p["name"]: p for p in relay_container(render({"relay": {"port": 61441}}))["ports"]}
    assert ports["relay"] == {"name": "relay", "containerPort": 61441, "protocol": "UDP"}


def test_readiness_comes_from_the_containers_health_endpoint():
    container = relay_container(render({"health": {"port": 9100}}))
    env = env_of(container)
    assert env["TS_ENABLE_HEALTH_CHECK"] == "true"
    assert env["TS_LOCAL_ADDR_PORT"] == "[::]:9100"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-local"}
    assert {"name": "http-local", "containerPort": 9100, "protocol": "TCP"} in container["ports"]


def test_readiness_cannot_be_switched_off():
    # The hook's `tailscale set` waits for Ready (logged in): without a probe it could run before containerboot's first
    # `tailscale up`, which replaces every preference, and still report success.
    with pytest.raises(RenderError) as failure:
        render({"health": {"enabled": False}})
    assert "health" in str(failure.value) and "enabled" in str(failure.value)


def test_metrics_enable_the_metrics_endpoint():
    env = env_of(relay_container(render({"metrics": {"enabled": True}})))
    assert env["TS_ENABLE_METRICS"] == "true"


@pytest.mark.parametrize(
    "auth, secret, key, env_name",
    [
        ({"authKey": "tskey-auth-x"}, f"{FULLNAME}-auth", "TS_AUTHKEY", "TS_AUTHKEY"),
        ({"existingSecret": "my-ts", "existingSecretKey": "key"}, "my-ts", "key", "TS_AUTHKEY"),
        (
            {"oauth": {"clientId": "id", "clientSecret": "secret"}},
            f"{FULLNAME}-auth",
            "TS_CLIENT_SECRET",
            "TS_CLIENT_SECRET",
        ),
        (
            {"oauth": {"existingSecret": "oauth", "clientIdKey": "id", "clientSecretKey": "sec"}},
            "oauth",
            "sec",
            "TS_CLIENT_SECRET",
        ),
    ],
    ids=["auth key", "existing secret", "oauth", "existing oauth secret"],
)
def test_the_credential_is_a_read_only_file_from_the_named_secret_not_an_environment_variable(
    auth, secret, key, env_name
):
    values = {"auth": {"authKey": "", **auth}, "tailscale": {"tags": ["tag:relay"]}}
    manifests = render(values)
    container = relay_container(manifests)
    env = env_of(container)
    # containerboot reads "file:<path>" for both; a secretKeyRef would put the secret in the process environment
    assert env[env_name] == f"file:/etc/tailscale/auth/{key}"
    volumes = {v["name"]: v for v in one(manifests, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["auth"]["secret"] == {
        "secretName": secret,
        "defaultMode": 0o440,
        "items": [{"key": key, "path": key}],
    }
    assert {"name": "auth", "mountPath": "/etc/tailscale/auth", "readOnly": True} in container["volumeMounts"]
    others = [
        c["name"]
        for c in one(manifests, "StatefulSet")["spec"]["template"]["spec"]["containers"]
        if c is not container and any(m["name"] == "auth" for m in c.get("volumeMounts", []))
    ]
    assert not others, f"only the relay container may see the credential, not {others}"
    secret_env = {name for name, value in env.items() if isinstance(value, dict) and "secretKeyRef" in value}
    assert secret_env <= {"TS_CLIENT_ID"}, f"secrets in the environment: {secret_env}"
    if env_name == "TS_CLIENT_SECRET":
        assert env["TS_CLIENT_ID"]["secretKeyRef"]["name"] == secret
    else:
        assert "TS_CLIENT_ID" not in env and "TS_CLIENT_SECRET" not in env, "only the chosen credential is passed"


def test_pod_placement_and_extras():
    values = {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "lan", "operator": "In", "values": ["yes"]}]}]
                }
            }
        },
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}
        ],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/a": "b"},
        "podLabels": {"team": "net"},
        "imagePullSecrets": [{"name": "regcred"}],
        "extraEnv": [{"name": "TS_DEBUG_FIREWALL_MODE", "value": "auto"}],
        "resources": {"requests": {"cpu": "50m"}},
        "terminationGracePeriodSeconds": 5,
    }
    sts = one(render(values), "StatefulSet")
    pod = sts["spec"]["template"]
    spec = pod["spec"]
    for key in (
        "nodeSelector",
        "tolerations",
        "affinity",
        "topologySpreadConstraints",
        "priorityClassName",
        "imagePullSecrets",
        "terminationGracePeriodSeconds",
    ):
        assert spec[key] == values[key], key
    assert pod["metadata"]["annotations"]["example.com/a"] == "b"
    assert pod["metadata"]["labels"]["team"] == "net"
    container = spec["containers"][0]
    assert env_of(container)["TS_DEBUG_FIREWALL_MODE"] == "auto"
    assert container["resources"]["requests"]["cpu"] == "50m"


def test_service_account():
    spec = one(render(), "StatefulSet")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == FULLNAME
    spec = one(render({"serviceAccount": {"create": False, "name": "mine"}}), "StatefulSet")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "mine"


def test_a_relay_that_exits_leaves_its_reason_in_the_pod_status():
    # With helm install --wait, Flux or Argo CD, the pod status is where a user looks first.
    assert relay_container(render())["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize("replicas, budget", [(1, False), (2, True), (3, True)])
def test_several_relays_get_a_disruption_budget_and_spread_over_nodes(replicas, budget):
    manifests = render({"replicaCount": replicas})
    budgets = find(manifests, "PodDisruptionBudget")
    affinity = one(manifests, "StatefulSet")["spec"]["template"]["spec"].get("affinity")
    if not budget:
        assert not budgets, "one relay with a budget would block every node drain"
        assert affinity is None
        return
    spec = budgets[0]["spec"]
    assert spec["maxUnavailable"] == 1
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "relay"
    term = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_the_users_affinity_and_budget_settings_win():
    mine = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "edge", "operator": "Exists"}]}]
            }
        }
    }
    manifests = render({"replicaCount": 2, "affinity": mine, "podDisruptionBudget": {"enabled": False}})
    assert one(manifests, "StatefulSet")["spec"]["template"]["spec"]["affinity"] == mine
    assert not find(manifests, "PodDisruptionBudget")


def test_the_agent_trusts_the_control_servers_private_ca_only_when_given():
    assert "LOGIN_SERVER_CA" not in env_of(container(render(), "agent"))
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    assert env_of(container(render({"agent": {"loginServerCA": pem}}), "agent"))["LOGIN_SERVER_CA"] == pem


def test_the_agents_readiness_probe_tolerates_one_slow_answer():
    probe = container(render(), "agent")["readinessProbe"]
    assert (probe["periodSeconds"], probe["timeoutSeconds"], probe["failureThreshold"]) == (5, 2, 2)
