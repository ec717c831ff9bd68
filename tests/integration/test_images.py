"""The locally built test images and services work in the kind cluster.

scripts/images/deploy builds and loads the images, starts Headscale and MetalLB;
the settings come from the environment (LOGIN_SERVER, AUTHKEY, RELAY_IMAGE,
TOOLBOX_IMAGE, as printed by scripts/images/env) or, when unset, from running
scripts/images/env. Cluster and namespace fixtures: tests/integration/conftest.py.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from support.render import chart_names
from support.wait import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# the LocalAPI socket where the chart's relay has it
SOCKET = chart_names().socket


@pytest.fixture(scope="module")
def kube(kube_api):
    """The kubernetes.client module, configured by conftest's kube_api (skips without a cluster)."""
    from kubernetes import client

    return client


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    names = ("LOGIN_SERVER", "AUTHKEY", "RELAY_IMAGE", "TOOLBOX_IMAGE")
    if all(os.environ.get(n) for n in names):
        return {n: os.environ[n] for n in names}
    run = subprocess.run([str(ROOT / "scripts/images/env")], capture_output=True, text=True)
    assert run.returncode == 0, f"scripts/images/env failed (run scripts/images/deploy?): {run.stderr}"
    out = run.stdout
    found = dict(re.findall(r"^export (\w+)=(.*)$", out, re.M))
    return {n: shlex.split(found[n])[0] for n in names}


def _restricted_container(kube, **kw):
    """A container as the chart runs it: non-root, read-only root, no capabilities."""
    return kube.V1Container(
        image_pull_policy="IfNotPresent",
        security_context=kube.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=1000,
            run_as_group=1000,
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            capabilities=kube.V1Capabilities(drop=["ALL"]),
            seccomp_profile=kube.V1SeccompProfile(type="RuntimeDefault"),
        ),
        volume_mounts=[kube.V1VolumeMount(name="tmp", mount_path="/tmp")],
        **kw,
    )


def _pod(kube, name, container, sa=None, restart="Never"):
    return kube.V1Pod(
        metadata=kube.V1ObjectMeta(name=name),
        spec=kube.V1PodSpec(
            service_account_name=sa,
            automount_service_account_token=sa is not None,
            restart_policy=restart,
            containers=[container],
            volumes=[kube.V1Volume(name="tmp", empty_dir=kube.V1EmptyDirVolumeSource())],
        ),
    )


def _exec(kube, ns, pod, cmd):
    from kubernetes.stream import stream

    resp = stream(
        kube.CoreV1Api().connect_get_namespaced_pod_exec,
        pod,
        ns,
        command=cmd,
        stderr=True,
        stdout=True,
        stdin=False,
        tty=False,
        _preload_content=False,
    )
    resp.run_forever(timeout=60)
    out, err = resp.read_stdout(), resp.read_stderr()
    rc = resp.returncode
    resp.close()
    return rc, out, err


def _logs(kube, ns, pod):
    try:
        return kube.CoreV1Api().read_namespaced_pod_log(pod, ns, tail_lines=40)
    except Exception as e:  # noqa: BLE001
        return f"(no logs: {e})"


def test_relay_image_logs_in_and_takes_relay_settings(kube, settings, namespace):
    core, rbac = kube.CoreV1Api(), kube.RbacAuthorizationV1Api()
    secret = "relay-state"
    core.create_namespaced_secret(namespace, kube.V1Secret(metadata=kube.V1ObjectMeta(name=secret)))
    core.create_namespaced_service_account(namespace, kube.V1ServiceAccount(metadata=kube.V1ObjectMeta(name="relay")))
    rbac.create_namespaced_role(
        namespace,
        kube.V1Role(
            metadata=kube.V1ObjectMeta(name="relay"),
            rules=[
                kube.V1PolicyRule(
                    api_groups=[""], resources=["secrets"], resource_names=[secret], verbs=["get", "update", "patch"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        kube.V1RoleBinding(
            metadata=kube.V1ObjectMeta(name="relay"),
            role_ref=kube.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="relay"),
            subjects=[kube.RbacV1Subject(kind="ServiceAccount", name="relay", namespace=namespace)],
        ),
    )
    env = {
        "TS_AUTHKEY": settings["AUTHKEY"],
        "TS_EXTRA_ARGS": f"--login-server={settings['LOGIN_SERVER']}",
        "TS_USERSPACE": "true",
        "TS_KUBE_SECRET": secret,
        "TS_HOSTNAME": f"images-test-{namespace}",
    }
    container = _restricted_container(
        kube,
        name="tailscale",
        image=settings["RELAY_IMAGE"],
        env=[kube.V1EnvVar(name=k, value=v) for k, v in env.items()],
    )
    core.create_namespaced_pod(namespace, _pod(kube, "relay", container, sa="relay"))

    def tailnet_ip():
        rc, out, _ = _exec(kube, namespace, "relay", ["tailscale", f"--socket={SOCKET}", "ip", "-4"])
        return out.strip() if rc == 0 and out.strip() else None

    ip = wait_for(
        tailnet_ip,
        "a tailnet IPv4 address",
        180,
        tolerate=(Exception,),
        explain=lambda: f"relay logs:\n{_logs(kube, namespace, 'relay')}",
    )
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("100.64.0.0/10"), ip

    rc, out, err = _exec(
        kube,
        namespace,
        "relay",
        [
            "tailscale",
            f"--socket={SOCKET}",
            "set",
            "--relay-server-port=61441",
            "--relay-server-static-endpoints=1.2.3.4:61441",
        ],
    )
    assert rc == 0, f"tailscale set failed: {out}{err}"
    rc, out, err = _exec(kube, namespace, "relay", ["tailscale", f"--socket={SOCKET}", "get", "relay-server-port"])
    assert rc == 0 and out.strip() == "61441", f"get relay-server-port: rc={rc} {out!r} {err!r}"
    rc, out, err = _exec(
        kube, namespace, "relay", ["tailscale", f"--socket={SOCKET}", "get", "relay-server-static-endpoints"]
    )
    assert rc == 0 and "1.2.3.4:61441" in out, f"get relay-server-static-endpoints: {out!r} {err!r}"

    # the node's identity went to the state Secret, not the (read-only) filesystem
    data = core.read_namespaced_secret(secret, namespace).data or {}
    assert data, "state Secret is still empty"


def test_toolbox_image_has_shell_tools_and_kubectl(kube, settings, namespace):
    core = kube.CoreV1Api()
    script = (
        "set -eu; kubectl version --client >/dev/null; "
        "echo abc | sed s/b/x/ | grep -q axc; date -u +%s >/dev/null; "
        "touch $HOME/ok; echo toolbox-ok"
    )
    container = _restricted_container(
        kube,
        name="hook",
        image=settings["TOOLBOX_IMAGE"],
        command=["/bin/sh", "-c", script],
    )
    core.create_namespaced_pod(namespace, _pod(kube, "hook", container))
    phase = wait_for(
        lambda: core.read_namespaced_pod("hook", namespace).status.phase,
        "the hook pod to finish (seen: its phase)",
        120,
        until=lambda p: p in ("Succeeded", "Failed"),
    )
    logs = _logs(kube, namespace, "hook")
    assert phase == "Succeeded" and "toolbox-ok" in logs, logs
