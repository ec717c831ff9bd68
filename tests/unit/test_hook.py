"""The post-install/post-upgrade hook: how it is wired, and what its script does (against a fake kubectl).

The hook no longer changes the relay (the relay-settings sidecar does, tests/unit/test_relay_settings.py): it waits
until every replica runs the release's revision, is logged in, has its address, and its sidecar reports the
release's port and endpoints in effect; and it fails, naming what it waited for, when that does not happen."""
import json
import os
import subprocess
from pathlib import Path


from chart_render import FULLNAME, REPO, env_of, one, render

FAKE_KUBECTL = REPO / "tests" / "fake_kubectl.py"


def hook_job(values=None):
    return one(render(values), "Job", f"{FULLNAME}-hook")


def test_hook_runs_after_install_upgrade_and_rollback_and_cleans_up():
    annotations = hook_job()["metadata"]["annotations"]
    # helm rollback runs only rollback hooks: without post-rollback, a rollback keeps the newer settings.
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade,post-rollback"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert annotations["helm.sh/hook-weight"] == "5"
    assert hook_job({"hook": {"weight": -3}})["metadata"]["annotations"]["helm.sh/hook-weight"] == "-3"


def test_the_test_pod_stays_after_success_so_helm3_test_logs_can_read_it():
    pod = one(render(), "Pod", f"{FULLNAME}-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation", \
        "with hook-succeeded, Helm 3's `helm test --logs` fails: the Pod is gone before it reads the log"


def test_hook_fails_once_and_clearly_within_its_deadline():
    spec = hook_job({"hook": {"timeoutSeconds": 120}})["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 150
    default = hook_job()["spec"]
    assert default["activeDeadlineSeconds"] < 300, "the Job must end before Helm's default 5-minute --timeout"
    limits = default["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "cpu" in limits and "memory" in limits, "a ResourceQuota on limits admits only pods that set them"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert env_of(pod["containers"][0])["TIMEOUT_SECONDS"] == "120"


def test_hook_pod_settings_follow_values():
    values = {
        "replicaCount": 2,
        "relay": {"port": 61441},
        "hook": {"image": {"repository": "example/kubectl", "tag": "1.34", "pullPolicy": "Never"},
                 "resources": {"limits": {"memory": "64Mi"}}},
    }
    pod = hook_job(values)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["serviceAccountName"] == f"{FULLNAME}-hook"
    assert container["image"] == "example/kubectl:1.34"
    assert container["imagePullPolicy"] == "Never"
    assert container["resources"]["limits"]["memory"] == "64Mi"
    assert container["command"] == ["/bin/sh", "/scripts/relay-hook.sh", "apply"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError", "a failure should show in kubectl describe"
    env = env_of(container)
    assert (env["FULLNAME"], env["REPLICAS"], env["RELAY_PORT"], env["STATIC_ENDPOINTS"]) == (FULLNAME, "2", "61441", "")


def test_static_endpoints_are_passed_verbatim():
    values = {"relay": {"staticEndpoints": ["[fdc9:b01a:9d26:0:2::3]:61441", "172.16.2.3:61441"]}}
    env = env_of(hook_job(values)["spec"]["template"]["spec"]["containers"][0])
    assert env["STATIC_ENDPOINTS"] == "[fdc9:b01a:9d26:0:2::3]:61441,172.16.2.3:61441"


def test_hook_image_digest():
    container = hook_job({"hook": {"image": {"digest": "sha256:" + "b" * 64}}})["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith("@sha256:" + "b" * 64)


def test_helm_test_pod_verifies_with_the_same_script():
    manifests = render()
    test_pod = one(manifests, "Pod", f"{FULLNAME}-test")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["containers"][0]["command"] == ["/bin/sh", "/scripts/relay-hook.sh", "verify"]
    assert not [m for m in render({"test": {"enabled": False}}) if m["kind"] == "Pod"]


# --- the script itself ------------------------------------------------------------------------


class HookRun:
    """Runs the rendered hook script against a fake cluster described by `world`."""

    def __init__(self, tmp_path: Path, values: dict, world: dict):
        self.tmp_path = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        manifests = render(values)
        for name, text in one(manifests, "ConfigMap", f"{FULLNAME}-hook")["data"].items():
            (tmp_path / name).write_text(text)
        self.env = {k: v for k, v in env_of(hook_job(values)["spec"]["template"]["spec"]["containers"][0]).items()
                    if isinstance(v, str)}
        self.world_path = tmp_path / "world.json"
        self.world_path.write_text(json.dumps(world))
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "kubectl").symlink_to(FAKE_KUBECTL)
        self.path = f"{bin_dir}:{os.environ['PATH']}"

    def __call__(self, mode="apply", timeout=None):
        env = {**self.env, "NAMESPACE": "tailnet", "PATH": self.path, "FAKE_KUBE_WORLD": str(self.world_path), "HOME": str(self.tmp_path)}
        if timeout is not None:
            env["TIMEOUT_SECONDS"] = str(timeout)
        result = subprocess.run(["sh", str(self.tmp_path / "relay-hook.sh"), mode], env=env, capture_output=True, text=True, timeout=120)
        return result

    @property
    def world(self):
        return json.loads(self.world_path.read_text())

    def execs(self):
        return [c for c in self.world["calls"] if "exec" in c]


def in_effect(port, endpoints):
    return (f"2026-11-28T10:00:00Z relay-settings: not ready: waiting for the relay to log in\n"
            f"2026-11-28T10:00:05Z relay-settings: in effect: port={port} endpoints={endpoints} stored={endpoints}")


V4, V6 = "172.18.255.200", "fc00:f853:ccd:e793::c8"


def world_with(replicas=1, ips=(V4, V6), policy="RequireDualStack", port=40000, sidecar_log=None, **pod):
    def log(i):
        if sidecar_log is not None:
            return sidecar_log
        endpoints = ",".join(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                             for ip in (a.replace("200", str(200 + i)) for a in ips))
        return in_effect(port, endpoints)
    return {
        "statefulset": {"generation": 2, "observedGeneration": 2, "updateRevision": "rev-2"},
        "pods": {f"{FULLNAME}-{i}": {"revision": "rev-2", "sidecar_log": log(i), **pod} for i in range(replicas)},
        "services": {f"{FULLNAME}-{i}": {"ips": [ip.replace("200", str(200 + i)) for ip in ips], "policy": policy}
                     for i in range(replicas)},
    }


def test_script_confirms_both_families_from_the_sidecar(tmp_path):
    run = HookRun(tmp_path, {"relay": {"port": 61441}}, world_with(port=61441))
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"relaying on port 61441 with endpoints {V4}:61441,[{V6}]:61441" in result.stdout
    assert not run.execs(), "the hook must not exec into the relay"


def test_script_checks_every_replica_against_its_own_service(tmp_path):
    run = HookRun(tmp_path, {"replicaCount": 3}, world_with(replicas=3))
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    for i in range(3):
        assert f"{FULLNAME}-{i}: relaying on port 40000 with endpoints 172.18.255.{200 + i}:40000" in result.stdout


def test_script_uses_static_endpoints_without_asking_the_service(tmp_path):
    endpoints = "[fdc9:b01a:9d26:0:2::3]:61441,172.16.2.3:61441"
    run = HookRun(tmp_path, {"relay": {"port": 61441, "staticEndpoints": endpoints.split(",")}},
                  world_with(ips=(), sidecar_log=in_effect(61441, endpoints)))
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [c for c in run.world["calls"] if "service" in c]


def test_script_waits_for_the_pod_and_the_address(tmp_path):
    world = world_with(ready_after=2)
    world["services"][f"{FULLNAME}-0"]["ips_after"] = 2
    run = HookRun(tmp_path, {}, world)
    result = run(timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert run.world["polls"][f"pod/{FULLNAME}-0"] >= 3


def test_script_waits_for_both_families_of_a_dual_stack_service(tmp_path):
    run = HookRun(tmp_path, {}, world_with(ips=(V4,)))
    result = run(timeout=3)
    assert result.returncode == 1
    assert f"timed out after 3s waiting for Service {FULLNAME}-0 to get a LoadBalancer address" in result.stdout


def test_script_times_out_naming_the_service_it_waited_for(tmp_path):
    run = HookRun(tmp_path, {}, world_with(ips=()))
    result = run(timeout=3)
    assert result.returncode == 1
    assert f"waiting for Service {FULLNAME}-0 to get a LoadBalancer address" in result.stdout


def test_script_times_out_naming_the_pod_and_showing_its_log(tmp_path):
    log = "\n".join(["2026/11/28 06:52:11 control: doLogin(regen=true, hasUrl=false)",
                     "2026/11/28 06:52:11 Received error: invalid key: unable to validate API key",
                     '2026/11/28 06:52:11 [RATELIMIT] format("Received error: %v")',
                     "2026/11/28 06:52:12 control: Generating a new nodekey."])
    run = HookRun(tmp_path, {}, world_with(ready=False, log=log))
    result = run(timeout=3)
    assert result.returncode == 1
    assert "control: Generating a new nodekey." in result.stdout, "the end of the relay log is shown"
    failure = result.stdout.strip().splitlines()[-1]
    assert f"waiting for relay pod {FULLNAME}-0 to be Ready" in failure
    assert failure.endswith("; the relay says: Received error: invalid key: unable to validate API key"), failure


def test_script_ignores_a_pod_from_the_previous_revision(tmp_path):
    world = world_with()
    world["pods"][f"{FULLNAME}-0"]["revision"] = "rev-1"
    run = HookRun(tmp_path, {}, world)
    result = run(timeout=3)
    assert result.returncode == 1, "an upgrade must be checked on the new pod, not the one being replaced"
    assert f"waiting for relay pod {FULLNAME}-0 to be Ready" in result.stdout


def test_script_rejects_hostname_only_load_balancers(tmp_path):
    world = world_with(ips=())
    world["services"][f"{FULLNAME}-0"]["hostnames"] = ["abc.elb.amazonaws.com", "def.elb.amazonaws.com"]
    run = HookRun(tmp_path, {}, world)
    result = run(timeout=30)
    assert result.returncode == 1
    assert "got only hostnames (abc.elb.amazonaws.com def.elb.amazonaws.com" in result.stdout
    assert "set relay.staticEndpoints" in result.stdout


def test_script_fails_with_the_sidecars_reason_when_the_settings_are_not_in_effect(tmp_path):
    reason = ("the relay server does not hold UDP port 40000 (see the relay's log for "
              "'relayserver: error initializing server', e.g. bind: permission denied)")
    run = HookRun(tmp_path, {}, world_with(sidecar_log=f"2026-11-28T10:00:00Z relay-settings: not ready: {reason}"))
    result = run(timeout=3)
    assert result.returncode == 1
    failure = result.stdout.strip().splitlines()[-1]
    assert f"waiting for the relay-settings sidecar of {FULLNAME}-0 to put port 40000" in failure
    assert failure.endswith(f"; the relay says: {reason}"), failure


def test_script_fails_when_the_sidecar_reports_other_settings(tmp_path):
    # e.g. the pod still runs an old sidecar that advertises another port
    run = HookRun(tmp_path, {"relay": {"port": 61441}}, world_with(port=40000))
    result = run(timeout=3)
    assert result.returncode == 1
    assert "in effect: port=40000" in result.stdout, "the failure shows what the sidecar reported"


def test_verify_mode_checks_the_same_way(tmp_path):
    assert HookRun(tmp_path / "a", {}, world_with())("verify").returncode == 0
    unconfigured = world_with(sidecar_log="2026-11-28T10:00:00Z relay-settings: not ready: waiting for the relay")
    assert HookRun(tmp_path / "b", {}, unconfigured)("verify", timeout=3).returncode == 1
