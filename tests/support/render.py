"""One render helper: values in, list of manifests out, using the real helm binary; and the names the chart derives
(`_helpers.tpl`), read off the render instead of rebuilt by hand."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from typing import Any

import yaml

from support.helm import run_helm
from support.repo import CHART, HELM
from support.values import installable

RELEASE = "relay"
NAMESPACE = "tailnet"
# The default release's fullname, for the unit tests' lookups; tests/unit/test_support.py holds it equal to the
# render's.
FULLNAME = "relay-tailscale-peer-relay"


class RenderError(Exception):
    """helm refused to render; the message is helm's stderr."""


def helm_text(values: dict | None = None, *, helm: str = HELM, args: tuple = (), release: str = RELEASE) -> str:
    """Runs `helm template` (with the example auth key unless VALUES name their own credential) and returns its output;
    raises RenderError with helm's message."""
    result = run_helm(
        "template", release, str(CHART), "--namespace", NAMESPACE, *args, values=installable(values), helm=helm
    )
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return result.stdout


def render(values: dict | None = None, **kwargs: Any) -> list[dict]:
    """Renders the chart (as helm_text) into a list of manifests."""
    return [doc for doc in yaml.safe_load_all(helm_text(values, **kwargs)) if doc]


def notes(values: dict | None = None) -> str:
    """The NOTES.txt a user sees after `helm install`."""
    result = run_helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        "--output",
        "json",
        values=installable(values),
    )
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return json.loads(result.stdout)["info"]["notes"]


def find(manifests: list[dict], kind: str, name: str | None = None) -> list[dict]:
    """Manifests of a kind (and name)."""
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def one(manifests: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_of(container: dict) -> dict:
    """A container's env as {name: value or valueFrom}."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def container(manifests: list[dict], name: str) -> dict:
    """The relay pod's container NAME ("tailscale" or "agent")."""
    sts = one(manifests, "StatefulSet")
    return next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def relay_container(manifests: list[dict]) -> dict:
    return container(manifests, "tailscale")


def all_pod_specs(manifests: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every workload the chart renders."""
    specs = []
    for m in manifests:
        if m["kind"] in ("StatefulSet", "Job"):
            specs.append((f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"]["spec"]))
        elif m["kind"] == "Pod":
            specs.append((f"Pod/{m['metadata']['name']}", m["spec"]))
    return specs


@dataclass(frozen=True)
class ChartNames:
    """The names the chart gives a release's objects, as its render spells them (the templates take them from
    `_helpers.tpl`); per replica names are the StatefulSet's pod names and the $(POD_INDEX) names its env gives."""

    fullname: str
    relay_account: str
    relay_binding: str
    hook_account: str
    auth_secret: str
    test_pod: str
    socket: str
    _state_secret: str
    _status_configmap: str

    def pod(self, index: int) -> str:
        return f"{self.fullname}-{index}"

    def state_secret(self, index: int) -> str:
        return self._state_secret.replace("$(POD_INDEX)", str(index))

    def is_state_secret(self, name: str) -> bool:
        """Whether NAME is one replica's state Secret."""
        prefix, _, suffix = self._state_secret.partition("$(POD_INDEX)")
        middle = (
            name[len(prefix) : len(name) - len(suffix)] if name.startswith(prefix) and name.endswith(suffix) else ""
        )
        return middle.isdigit()

    def status_configmap(self, index: int) -> str:
        return self._status_configmap.replace("$(POD_INDEX)", str(index))


def names_in(manifests: list[dict]) -> ChartNames:
    """The derived names in a render of the chart."""
    sts = one(manifests, "StatefulSet")

    def component(kind: str, name: str) -> list[dict]:
        return [m for m in find(manifests, kind) if m["metadata"]["labels"]["app.kubernetes.io/component"] == name]

    hook = one(component("Job", "hook"), "Job")
    tests = component("Pod", "test")
    relay, agent = env_of(container(manifests, "tailscale")), env_of(container(manifests, "agent"))
    relay_account = sts["spec"]["template"]["spec"]["serviceAccountName"]
    binding = next(
        m for m in find(manifests, "RoleBinding") if any(subject["name"] == relay_account for subject in m["subjects"])
    )
    names = ChartNames(
        fullname=sts["metadata"]["name"],
        relay_account=relay_account,
        relay_binding=binding["metadata"]["name"],
        hook_account=hook["spec"]["template"]["spec"]["serviceAccountName"],
        auth_secret="",
        test_pod=tests[0]["metadata"]["name"] if tests else "",
        socket=relay["TS_SOCKET"],
        _state_secret=relay["TS_KUBE_SECRET"],
        _status_configmap=agent["STATUS_CONFIGMAP"],
    )
    # the Secret the chart keeps the credential in (state-secrets.yaml makes the others, one per replica)
    auth = [
        m["metadata"]["name"] for m in find(manifests, "Secret") if not names.is_state_secret(m["metadata"]["name"])
    ]
    return replace(names, auth_secret=auth[0] if auth else "")


@functools.cache
def chart_names(release: str = RELEASE) -> ChartNames:
    """The derived names of release RELEASE with the chart's defaults (and the default auth key)."""
    return names_in(render(release=release))
