"""The test support package itself: the names it reads off the render are the chart's, the variants load by name, the
cluster layering drops exactly what names another cluster, the one wait says what it waited for and saw last, and a
test namespace is a leftover only when the session that made it is over, and a relay that outlived one whole wait is
not waited for again."""

import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from support import tailnet
from support.cluster import ELSEWHERE, UNROUTED, on_cluster
from support.helm import run_helm
from support.namespaces import (
    HOST_LABEL,
    SESSION_LABEL,
    cordon_left_reason,
    leftover_reason,
    process_start,
    session_labels,
)
from support.render import FULLNAME, chart_names, find, names_in, render
from support.repo import CHART
from support.values import AGENT_IMAGE, VARIANTS, ci_value_names, ci_values, deep_merge, endpoint, installable
from support.wait import wait_for


@pytest.mark.parametrize(
    "values",
    [{}, {"replicaCount": 3}, {"fullnameOverride": "edge"}, {"nameOverride": "x"}],
    ids=["defaults", "three replicas", "fullnameOverride", "nameOverride"],
)
def test_the_names_read_off_the_render_are_the_objects_the_chart_makes(values):
    manifests = render(values)
    names = names_in(manifests)
    replicas = values.get("replicaCount", 1)
    assert {m["metadata"]["name"] for m in find(manifests, "Pod")} == {names.test_pod}
    assert {m["metadata"]["name"] for m in find(manifests, "ServiceAccount")} == {
        names.relay_account,
        names.hook_account,
    }
    secrets = {m["metadata"]["name"] for m in find(manifests, "Secret")}
    assert secrets == {names.auth_secret} | {names.state_secret(i) for i in range(replicas)}
    assert {m["metadata"]["name"] for m in find(manifests, "ConfigMap")} >= {
        names.status_configmap(i) for i in range(replicas)
    }
    assert [m["metadata"]["name"] for m in find(manifests, "Service") if m["spec"].get("type") == "LoadBalancer"] == [
        names.pod(i) for i in range(replicas)
    ], "each replica's Service is named as its pod"
    assert sorted(n for n in secrets if names.is_state_secret(n)) == sorted(
        names.state_secret(i) for i in range(replicas)
    )


def test_the_default_fullname_is_the_renders():
    assert chart_names().fullname == FULLNAME


def test_every_variant_loads_by_name_and_an_unknown_one_is_named():
    assert {"authkey", "seed"} <= set(ci_value_names())
    assert ci_values("seed")["relay"]["port"] == 61441, "the write-up's relay port"
    with pytest.raises(LookupError, match="no test variant 'nope'.*seed"):
        ci_values("nope")


def test_on_the_cluster_a_variant_loses_only_what_the_cluster_supplies_its_own_way():
    seed = ci_values("seed")
    installable = on_cluster("seed")
    assert seed["auth"]["existingSecret"] and seed["service"]["annotations"]["metallb.io/loadBalancerIPs"]
    assert seed["tailscale"]["tags"], "the write-up's relay is tagged"
    assert "existingSecret" not in installable["auth"]
    assert "metallb.io/loadBalancerIPs" not in installable["service"]["annotations"]
    assert "tags" not in installable["tailscale"]
    # everything else is the variant's
    assert (
        deep_merge(
            installable,
            {
                "auth": {"existingSecret": seed["auth"]["existingSecret"]},
                "service": {"annotations": seed["service"]["annotations"]},
                "tailscale": {"tags": seed["tailscale"]["tags"]},
            },
        )
        == seed
    )
    assert set(ELSEWHERE) | set(UNROUTED) == {"auth", "service", "tailscale"}


def test_on_the_cluster_a_variant_loses_its_example_key_for_the_clusters():
    assert ci_values("replicas")["auth"]["authKey"], "the variant is complete: it has a (fake) credential"
    assert "authKey" not in on_cluster("replicas").get("auth", {}), (
        "the variant's fake key would go over the cluster's real one"
    )


def test_helms_merge_deletes_what_the_overlay_sets_to_none(tmp_path):
    # ct install puts the cluster's values over each variant as a second values file: its None must delete there too
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(deep_merge(ELSEWHERE, {"auth": {"authKey": "tskey-auth-x"}, **AGENT_IMAGE})))
    result = run_helm(
        "template", "relay", str(CHART), "--values", str(VARIANTS / "seed-values.yaml"), "--values", str(overlay)
    )
    assert result.returncode == 0, result.stderr
    manifests = [m for m in yaml.safe_load_all(result.stdout) if m]
    relay = next(
        c
        for c in find(manifests, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"]
        if c["name"] == "tailscale"
    )
    env = {e["name"]: e for e in relay["env"]}
    assert "tailscale-auth" not in str(env), "the variant's existing Secret should be gone"
    assert "TS_EXTRA_ARGS" not in env or "advertise-tags" not in str(env["TS_EXTRA_ARGS"]), "the tags should be gone"
    # the seed's fixed addresses stay (the cluster serves them from a pool of their own)
    service = next(m for m in find(manifests, "Service") if m["spec"].get("type") == "LoadBalancer")
    assert service["metadata"]["annotations"] == ci_values("seed")["service"]["annotations"]


def test_the_example_key_goes_under_values_without_a_credential_of_their_own():
    assert installable({})["auth"]["authKey"].startswith("tskey-auth-")
    assert installable({"auth": {"existingSecret": "s"}})["auth"] == {"existingSecret": "s"}
    assert "authKey" not in installable({"auth": {"oauth": {"clientId": "i", "clientSecret": "s"}}})["auth"]


def test_an_agent_image_goes_under_values_that_name_none():
    assert installable({})["agent"]["image"]["repository"] == AGENT_IMAGE["agent"]["image"]["repository"]
    assert (
        installable({"agent": {"image": {"repository": "mine/agent"}}})["agent"]["image"]["repository"] == "mine/agent"
    )


@pytest.mark.parametrize("address, spelled", [("192.0.2.1", "192.0.2.1:61441"), ("fd00::1", "[fd00::1]:61441")])
def test_an_endpoint_is_spelled_as_tailscaled_spells_it(address, spelled):
    assert endpoint(address, 61441) == spelled


def test_the_wait_returns_what_it_saw_once_it_holds():
    seen = iter([1, 2, 3, 4])
    assert wait_for(lambda: next(seen), "three", 5, interval=0, until=lambda n: n >= 3) == 3


def test_the_wait_fails_naming_what_it_waited_for_and_what_it_saw_last():
    calls = []

    def observe():
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("not yet")
        return {"ready": False, "calls": len(calls)}

    with pytest.raises(pytest.fail.Exception) as failed:
        wait_for(
            observe,
            "the relay to be ready",
            0.05,
            interval=0.01,
            tolerate=(KeyError,),
            until=lambda s: s["ready"],
            explain=lambda: "the relay's log says: nothing yet",
        )
    message = str(failed.value)
    assert "waited 0.05s for the relay to be ready" in message
    assert "saw last: {'ready': False" in message and "the relay's log says: nothing yet" in message


def test_the_wait_does_not_swallow_an_exception_it_was_not_told_to_tolerate():
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, "nothing", 1, interval=0)


def a_finished_process() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_process_start_is_read_for_a_live_process_and_none_for_an_ended_one():
    start = process_start(os.getpid())
    assert start is not None and start.isdigit()
    assert process_start(a_finished_process()) is None


def test_the_namespace_of_a_running_session_is_not_a_leftover():
    assert leftover_reason("it-0123abcd", session_labels()) is None


def test_an_unlabelled_test_namespace_is_a_leftover_of_a_run_before_sessions_were_labelled():
    assert "no session label" in (leftover_reason("it-0123abcd", None) or "")


def test_a_session_label_without_a_host_is_not_taken_for_this_hosts():
    assert leftover_reason("it-0123abcd", {SESSION_LABEL: f"{a_finished_process()}-1"}) is None


def test_the_namespace_of_an_ended_session_is_a_leftover():
    labels = session_labels(os.getpid()) | {SESSION_LABEL: f"{a_finished_process()}-1"}
    assert "is over" in (leftover_reason("it-0123abcd", labels) or "")


def test_a_reused_process_id_does_not_keep_an_ended_sessions_namespace():
    pid, start = session_labels()[SESSION_LABEL].split("-")
    labels = session_labels() | {SESSION_LABEL: f"{pid}-{int(start) - 1}"}
    assert "is over" in (leftover_reason("it-0123abcd", labels) or ""), (
        "a live process with the session's id but another start time is another process"
    )


def test_another_hosts_session_is_left_alone():
    labels = {SESSION_LABEL: f"{a_finished_process()}-1", HOST_LABEL: "some-other-host"}
    assert leftover_reason("it-0123abcd", labels) is None


@pytest.mark.parametrize(
    "name", ["kube-system", "tailnet-workload", "it-bench", "relay-bench-event-123", "it-0123abcd-x"]
)
def test_a_namespace_the_tests_did_not_name_is_never_a_leftover(name):
    assert leftover_reason(name, None) is None


def node(unschedulable: bool | None, annotations: dict | None) -> Any:
    """A V1Node as cordon_left_reason reads it (typed Any: it stands in for one)."""
    return SimpleNamespace(
        spec=SimpleNamespace(unschedulable=unschedulable),
        metadata=SimpleNamespace(name="relay-test-worker", annotations=annotations),
    )


def test_a_node_cordoned_by_an_ended_session_is_a_leftover_and_one_cordoned_by_a_person_is_not():
    ended = session_labels() | {SESSION_LABEL: f"{a_finished_process()}-1"}
    assert "is over" in (cordon_left_reason(node(True, ended)) or "")
    assert cordon_left_reason(node(True, {"someone/else": "x"})) is None, "a person's cordon is theirs"
    assert cordon_left_reason(node(True, session_labels())) is None, "this session's drain is still running"
    assert cordon_left_reason(node(None, ended)) is None, "a schedulable node has no cordon to remove"


class FakeCore:
    """CoreV1Api's pod listing across namespaces, answering with each of SEEN in turn (then the last), as relay pods
    (namespace/name)."""

    def __init__(self, *seen: list[str]):
        self.seen, self.calls = list(seen), 0

    def list_pod_for_all_namespaces(self, label_selector):
        assert label_selector == "app.kubernetes.io/component=relay"
        pods = self.seen[min(self.calls, len(self.seen) - 1)]
        self.calls += 1
        return SimpleNamespace(
            items=[
                SimpleNamespace(metadata=SimpleNamespace(namespace=p.split("/")[0], name=p.split("/")[1])) for p in pods
            ]
        )


def test_a_relay_that_outlived_a_whole_wait_fails_the_next_wait_at_once(monkeypatch):
    monkeypatch.setattr(tailnet, "STUCK_RELAYS", set(), raising=False)
    core = FakeCore(["it-0123abcd/relay-0"])
    with pytest.raises(pytest.fail.Exception, match="relays of earlier tests to be gone"):
        tailnet.wait_for_no_relays(core, timeout=0)
    calls = core.calls
    with pytest.raises(pytest.fail.Exception, match="already waited 1s for are still there.*it-0123abcd/relay-0"):
        tailnet.wait_for_no_relays(core, timeout=1)
    assert core.calls == calls + 1, "the second wait looked more than once: it waited again"


def test_a_relay_not_seen_stuck_is_still_waited_for(monkeypatch):
    monkeypatch.setattr(tailnet, "STUCK_RELAYS", {"it-0123abcd/relay-0"}, raising=False)
    core = FakeCore(["it-0123abcd/relay-0", "it-4567abcd/relay-0"], [])
    tailnet.wait_for_no_relays(core)
    assert core.calls == 2
