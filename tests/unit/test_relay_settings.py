"""The relay-settings sidecar: how it is wired, and what its script does against a fake kubectl and a fake
tailscaled LocalAPI (tests/fake_tailscaled.py) that parses and stores the settings the way tailscale 1.104 does."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from chart_render import FULLNAME, REPO, env_of, find, one, render
from fake_tailscaled import FakeTailscaled

FAKE_KUBECTL = REPO / "tests" / "fake_kubectl.py"
POD = f"{FULLNAME}-0"
V4, V6 = "172.18.255.200", "fc00:f853:ccd:e793::c8"


def pod_spec(values=None):
    return one(render(values), "StatefulSet")["spec"]["template"]["spec"]


def sidecar(values=None):
    return next(c for c in pod_spec(values)["containers"] if c["name"] == "relay-settings")


# --- wiring -------------------------------------------------------------------------------------------------------


def test_every_relay_pod_runs_the_sidecar_with_the_release_settings():
    values = {"relay": {"port": 61441}, "settingsSidecar": {"intervalSeconds": 7},
              "hook": {"image": {"repository": "example/kubectl", "tag": "1.34"}}}
    container = sidecar(values)
    assert container["image"] == "example/kubectl:1.34"
    assert container["command"] == ["/bin/sh", "/scripts/relay-settings.sh"]
    env = env_of(container)
    assert (env["RELAY_PORT"], env["STATIC_ENDPOINTS"], env["INTERVAL_SECONDS"]) == ("61441", "", "7")
    assert env["TS_SOCKET"] == env_of(pod_spec(values)["containers"][0])["TS_SOCKET"], "it must reach tailscaled's socket"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], "the socket lives in the shared /tmp"
    assert container["readinessProbe"]["exec"]["command"] == ["cat", env["READY_FILE"]]


def test_the_sidecar_is_as_locked_down_as_the_relay():
    context = sidecar()["securityContext"]
    assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "limits" in sidecar()["resources"] and "cpu" in sidecar()["resources"]["limits"]
    # kernel mode: tailscaled runs as root, and its LocalAPI takes changes only from root or its own user
    kernel = sidecar({"tailscale": {"userspace": False}})["securityContext"]
    assert kernel["runAsUser"] == 0 and "privileged" not in kernel and kernel["capabilities"] == {"drop": ["ALL"]}


def test_a_changed_sidecar_script_restarts_the_relays():
    sts = one(render(), "StatefulSet")
    assert len(sts["spec"]["template"]["metadata"]["annotations"]["checksum/relay-settings"]) == 64


def test_relay_role_lets_the_sidecar_read_only_its_own_services():
    role = one(render({"replicaCount": 2}), "Role", FULLNAME)
    services = next(r for r in role["rules"] if r["resources"] == ["services"])
    assert services["resourceNames"] == [f"{FULLNAME}-0", f"{FULLNAME}-1"] and services["verbs"] == ["get"]


def test_no_role_grants_exec():
    for role in find(render({"replicaCount": 2}), "Role"):
        assert not [r for r in role["rules"] if "pods/exec" in r["resources"]], role["metadata"]["name"]


# --- the script -----------------------------------------------------------------------------------------------------


class Sidecar:
    """Runs the rendered sidecar script for a few passes against a fake tailscaled and a fake cluster."""

    def __init__(self, tmp_path: Path, values: dict | None = None, world: dict | None = None, **tailscaled):
        self.tmp_path = tmp_path
        for name, text in one(render(values), "ConfigMap", f"{FULLNAME}-hook")["data"].items():
            (tmp_path / name).write_text(text)
        self.env = {k: v for k, v in env_of(sidecar(values)).items() if isinstance(v, str)}
        self.world_path = tmp_path / "world.json"
        self.world_path.write_text(json.dumps(world if world is not None else service_world()))
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "kubectl").symlink_to(FAKE_KUBECTL)
        self.path = f"{bin_dir}:{os.environ['PATH']}"
        self.ready_file = tmp_path / "ready"
        self.tailscaled = FakeTailscaled(tmp_path / "tailscaled.sock", tmp_path / "udp", **tailscaled)

    def run(self, passes: int = 1, **overrides: str) -> str:
        env = {**self.env, **overrides, "POD_NAME": POD, "NAMESPACE": "tailnet", "PATH": self.path, "HOME": str(self.tmp_path),
               "FAKE_KUBE_WORLD": str(self.world_path), "TS_SOCKET": str(self.tailscaled.socket_path),
               "READY_FILE": str(self.ready_file), "UDP_TABLES": str(self.tailscaled.udp_table),
               "INTERVAL_SECONDS": "0", "MAX_PASSES": str(passes)}
        result = subprocess.run(["sh", str(self.tmp_path / "relay-settings.sh")], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    @property
    def ready(self) -> bool:
        return self.ready_file.exists()

    def set_service(self, **fields):
        world = json.loads(self.world_path.read_text())
        world["services"][POD].update(fields)
        self.world_path.write_text(json.dumps(world))


def service_world(ips=(V4, V6), policy="RequireDualStack", hostnames=()):
    return {"services": {POD: {"ips": list(ips), "policy": policy, "hostnames": list(hostnames)}}}


@pytest.fixture
def make(tmp_path):
    made = []

    def factory(*args, **kwargs):
        made.append(Sidecar(tmp_path, *args, **kwargs))
        return made[-1]
    yield factory
    for run in made:
        run.tailscaled.close()


def test_applies_the_port_and_both_families_and_is_ready(make):
    run = make({"relay": {"port": 61441}})
    out = run.run()
    assert (run.tailscaled.port, run.tailscaled.endpoints) == (61441, [f"{V4}:61441", f"[{V6}]:61441"])
    assert run.ready, out
    assert f"in effect: port=61441 endpoints={V4}:61441,[{V6}]:61441" in out


def test_does_not_set_again_what_is_already_right(make):
    run = make()
    run.run(passes=4)
    assert len(run.tailscaled.patches) == 1, run.tailscaled.patches


def test_sets_them_again_after_a_relogin_wiped_them(make):
    run = make()
    run.run()
    run.tailscaled.relogin()
    out = run.run(passes=2)
    assert run.tailscaled.port == 40000 and run.tailscaled.endpoints == [f"{V4}:40000", f"[{V6}]:40000"]
    assert "the relay had port '' endpoints ''" in out and run.ready


def test_follows_a_new_load_balancer_address(make):
    run = make()
    run.run()
    run.set_service(ips=["172.18.255.210", V6])
    run.run()
    assert run.tailscaled.endpoints == ["172.18.255.210:40000", f"[{V6}]:40000"]


def test_waits_for_the_relay_to_log_in_before_setting_anything(make):
    run = make()
    run.tailscaled.backend_state = "NeedsLogin"
    out = run.run(passes=2)
    assert not run.tailscaled.patches, "containerboot's first `tailscale up` would wipe anything set before it"
    assert not run.ready and "not ready: the relay is not logged in yet (NeedsLogin)" in out


def test_non_canonical_static_endpoints_are_set_once_and_stay_ready(make):
    # tailscale stores [2001:DB8:0:0::1] as [2001:db8::1]: comparing spellings would set them on every pass
    endpoints = ["[2001:DB8:0:0::1]:40000", "192.0.2.7:40000"]
    run = make({"relay": {"staticEndpoints": endpoints}}, world={"services": {}})
    out = run.run(passes=3)
    assert run.tailscaled.endpoints == ["[2001:db8::1]:40000", "192.0.2.7:40000"]
    assert len(run.tailscaled.patches) == 1 and run.ready, out


def test_reports_what_tailscaled_refuses(make):
    # the schema keeps malformed endpoints out of the chart; tailscaled is the last judge (set directly here)
    run = make(world={"services": {}})
    out = run.run(STATIC_ENDPOINTS="[1:::2]:40000")
    assert not run.ready
    assert "not ready: tailscaled refused the relay settings" in out


@pytest.mark.parametrize("port, privileged, ready", [(40000, False, True), (443, False, False), (443, True, True)])
def test_ready_only_while_the_relay_server_holds_its_port(tmp_path, port, privileged, ready):
    # A port below 1024 is accepted by `tailscale set` but cannot be bound by an unprivileged relay; the chart's
    # validation refuses it in userspace mode, so the kernel-mode render is used here to get past it.
    values = {"relay": {"port": port}, "tailscale": {"userspace": False}}
    run = Sidecar(tmp_path, values, privileged=privileged)
    try:
        out = run.run()
    finally:
        run.tailscaled.close()
    assert run.ready is ready, out
    if not ready:
        assert f"not ready: the relay server does not hold UDP port {port}" in out


@pytest.mark.parametrize("world, reason", [
    (service_world(ips=()), f"waiting for Service {POD} to get a LoadBalancer address"),
    (service_world(ips=(V4,)), f"waiting for Service {POD} (RequireDualStack) to get an address of each family"),
    (service_world(ips=(), hostnames=("a.elb.amazonaws.com", "b.elb.amazonaws.com")),
     "got only hostnames (a.elb.amazonaws.com b.elb.amazonaws.com) from its load balancer; "
     "a relay advertises IP addresses: set relay.staticEndpoints"),
    ({"services": {}}, f"cannot read Service {POD}"),
], ids=["no address yet", "one family of two", "hostnames only", "no Service (scaled outside Helm)"])
def test_sets_nothing_without_a_usable_address(make, world, reason):
    run = make(world=world)
    out = run.run()
    assert not run.tailscaled.patches, "no endpoints must never clear the relay's endpoints"
    assert not run.ready and reason in out, out


def test_says_when_tailscaled_is_not_there_yet(make):
    run = make()
    run.tailscaled.close()
    run.tailscaled.socket_path.unlink()
    out = run.run()
    assert not run.ready and "not ready: tailscaled's LocalAPI does not answer yet" in out, out


def test_sigterm_stops_the_sidecar_at_once_not_after_its_interval(tmp_path):
    # PID 1 of the container ignores signals without a handler: the kubelet would wait terminationGracePeriodSeconds
    sidecar = Sidecar(tmp_path)
    env = {**sidecar.env, "POD_NAME": POD, "NAMESPACE": "tailnet", "PATH": sidecar.path, "HOME": str(tmp_path),
           "FAKE_KUBE_WORLD": str(sidecar.world_path), "TS_SOCKET": str(sidecar.tailscaled.socket_path),
           "READY_FILE": str(sidecar.ready_file), "UDP_TABLES": str(sidecar.tailscaled.udp_table),
           "INTERVAL_SECONDS": "300"}
    process = subprocess.Popen(["sh", str(tmp_path / "relay-settings.sh")], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sidecar.ready and time.monotonic() < deadline:  # its first pass done, now in its 300 s sleep
            time.sleep(0.1)
        assert sidecar.ready, "the sidecar never finished its first pass"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, "the sidecar should exit cleanly on SIGTERM"
    finally:
        process.kill()
    assert "stopping (signal)" in process.stdout.read()
    assert not sidecar.ready, "a stopping sidecar is not Ready"
