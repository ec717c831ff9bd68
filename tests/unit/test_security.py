"""Secure by default: no privilege, no latest tag, the auth key never in plain sight."""

import base64

import pytest

from support.render import all_pod_specs, helm_text, notes, render
from support.values import AUTH, ci_values

VARIANTS = {
    "defaults": {},
    "three replicas": {"replicaCount": 3},
    "seed setup": ci_values("seed"),
    "oauth": {
        "auth": {"authKey": "", "oauth": {"clientId": "id", "clientSecret": "s3cr3t"}},
        "tailscale": {"tags": ["tag:relay"]},
    },
}


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_container_is_unprivileged_and_locked_down(values):
    for where, spec in all_pod_specs(render(values)):
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, where
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            name = f"{where} container {container['name']}"
            assert not context.get("privileged"), f"{name} is privileged"
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert not context.get("capabilities", {}).get("add"), name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if where.startswith("StatefulSet"):
                # tailscaled's socket and state, shared with the agent, with a read-only root
                assert "/tmp" in mounts, f"{name} needs a writable /tmp with a read-only root"
            else:
                # the hook's and helm test's check reads the API and writes nothing
                assert not mounts, f"{name} mounts {mounts}: the check needs no volume"
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_no_image_uses_latest(values):
    for where, spec in all_pod_specs(render(values)):
        for container in spec["containers"]:
            image = container["image"]
            tag = image.split("@")[0].rsplit(":", 1)
            assert len(tag) == 2 and tag[1] and tag[1] != "latest", f"{where} uses an unpinned image {image}"
            assert container["imagePullPolicy"] != "Always", where


def test_kernel_networking_gets_the_tun_device_and_net_admin_but_no_privilege():
    # Kernel mode is the only exception to the lockdown above, and only as far as a TUN interface needs.
    for where, spec in all_pod_specs(render({"tailscale": {"userspace": False}})):
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            name = f"{where} container {container['name']}"
            assert not context.get("privileged"), f"{name} is privileged"
            assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True, name
            added = context["capabilities"].get("add", [])
            if where.startswith("StatefulSet") and container["name"] == "tailscale":
                assert context["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}, name
                assert context["runAsUser"] == 0, "added capabilities are effective only for root"
                assert {"name": "tun", "mountPath": "/dev/net/tun"} in container["volumeMounts"], name
            else:
                assert not added, f"{name} adds {added}"
        host_paths = [v["hostPath"] for v in spec.get("volumes", []) if "hostPath" in v]
        expected = [{"path": "/dev/net/tun", "type": "CharDevice"}] if where.startswith("StatefulSet") else []
        assert host_paths == expected, f"{where} mounts {host_paths} from the node"


def test_auth_key_is_only_in_its_secret():
    key = AUTH["auth"]["authKey"]
    encoded = base64.b64encode(key.encode()).decode()
    manifests = render()
    holders = [m["metadata"]["name"] for m in manifests if key in str(m) or encoded in str(m)]
    assert holders == ["relay-tailscale-peer-relay-auth"], f"auth key found in {holders}"
    assert next(m for m in manifests if m["metadata"]["name"] in holders)["kind"] == "Secret"
    assert key not in helm_text().replace(encoded, ""), "the plain auth key appears in the rendered output"
    assert key not in notes() and encoded not in notes()


def test_oauth_secret_is_only_in_its_secret():
    values = VARIANTS["oauth"]
    encoded = base64.b64encode(b"s3cr3t").decode()
    holders = [m["kind"] for m in render(values) if "s3cr3t" in str(m) or encoded in str(m)]
    assert holders == ["Secret"]


def test_service_account_tokens_are_mounted_only_where_the_api_is_used():
    for where, spec in all_pod_specs(render()):
        assert spec["serviceAccountName"].startswith("relay-tailscale-peer-relay"), where


def test_every_scratch_volume_is_bounded():
    # an emptyDir without sizeLimit can fill the node's disk (scanners flag it)
    for where, spec in all_pod_specs(render({"replicaCount": 2})):
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{where} volume {volume['name']} has no sizeLimit"
