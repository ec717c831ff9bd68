"""Fixtures for the integration tests.

They talk to whatever cluster KUBECONFIG names. Without KUBECONFIG, or when
that cluster does not answer, the tests that need it are skipped with one line
saying how to get one, unless the run requires the cluster (REQUIRE_CLUSTER=1,
which scripts/test sets after bringing it up): then they fail. When it answers,
they assert.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from support.background import wait_for_later_tools
from support.cluster import unavailable, wait_for_gitops
from support.release_keys import gpg_key, run_release
from support.repo import CHART_NAME, REPO, TOOLS

COSIGN_PASSWORD = "throw-away"


@pytest.fixture(scope="session")
def kube_api():
    """A kubernetes.client.ApiClient for the cluster KUBECONFIG names."""
    if not os.environ.get("KUBECONFIG"):
        unavailable("KUBECONFIG is unset")
    from kubernetes import client, config

    try:
        config.load_kube_config()
        api = client.ApiClient()
        client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as exc:  # unreadable kubeconfig, refused, timed out, ...
        unavailable(f"no cluster answers at KUBECONFIG={os.environ['KUBECONFIG']} ({type(exc).__name__})")
    return api


@pytest.fixture(scope="session")
def core(kube_api):
    from kubernetes import client

    return client.CoreV1Api(kube_api)


@pytest.fixture(scope="session")
def gitops(kube_api):
    """Flux and Argo CD deployed. scripts/cluster up builds and deploys them in the background
    (scripts/images/gitops); this waits for that, and fails with its log when it failed. The tests that use it are
    marked gitops and run last (tests/conftest.py), so the rest of the suite runs while they build."""
    return wait_for_gitops()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, so fixtures can see in teardown whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def keep_namespace_evidence(core, namespace: str, test_id: str) -> Path:
    """Writes what a person needs to see why a test failed in NAMESPACE (every pod's status and each container's
    log, current and previous, and the namespace's events) under TEST_LOGS_DIR (scripts/test sets it; CI keeps
    it), before the namespace is deleted."""
    from kubernetes import client

    out = Path(os.environ.get("TEST_LOGS_DIR") or REPO / "test-logs" / "pytest") / re.sub(r"[^\w.-]+", "_", test_id)
    out.mkdir(parents=True, exist_ok=True)
    for pod in core.list_namespaced_pod(namespace).items:
        name = pod.metadata.name
        (out / f"pod-{name}.txt").write_text(str(pod.status))
        for container in [c.name for c in pod.spec.containers + (pod.spec.init_containers or [])]:
            for previous in (False, True):
                try:
                    log = core.read_namespaced_pod_log(name, namespace, container=container, previous=previous)
                except client.ApiException:
                    continue
                (out / f"log-{name}-{container}{'-previous' if previous else ''}.txt").write_text(log)
    events = core.list_namespaced_event(namespace).items
    (out / "events.txt").write_text(
        "\n".join(
            f"{e.last_timestamp or e.event_time} {e.type} {e.involved_object.kind}/{e.involved_object.name} "
            f"{e.reason}: {e.message}"
            for e in events
        )
    )
    return out


@pytest.fixture(scope="session")
def leftovers_removed(core) -> list[str]:
    """Removes the test namespaces of test sessions that are over (support.namespaces.remove_leftovers), once per
    session, before the first test that makes a namespace or uses the tailnet. Returns the namespaces it removed."""
    from support.namespaces import remove_leftovers

    return remove_leftovers(core)


def fresh_namespace(request, core):
    """A fresh namespace for the test REQUEST names (support.namespaces.create_namespace), deleted afterwards, waiting
    until its pods are gone, so the next test finds nothing of this one running; when the test failed, its pods' logs
    and the namespace's events are kept first (keep_namespace_evidence). A generator: the fixtures below yield its
    name."""
    from support.namespaces import create_namespace, remove_namespace

    name = create_namespace(core)
    yield name
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        try:
            kept = keep_namespace_evidence(core, name, f"{request.node.nodeid}-{name}")
            print(f"\nlogs and events of namespace {name} kept in {kept}")
        except Exception as error:  # keeping evidence must not hide the failure itself
            print(f"\ncould not keep the evidence of namespace {name}: {error}")
    remove_namespace(core, name)


@pytest.fixture
def namespace(request, core, leftovers_removed):
    """The test's namespace (fresh_namespace): its release goes here."""
    yield from fresh_namespace(request, core)


@pytest.fixture
def other_namespace(request, core, leftovers_removed):
    """A second fresh namespace (fresh_namespace), for what runs beside the release: a neighbour's pods."""
    yield from fresh_namespace(request, core)


@pytest.fixture
def release(kube_api, namespace):
    """The chart's release helper for this test's namespace (tests/support/release.py)."""
    from support.release import Release

    return Release(kube_api, namespace)


@pytest.fixture
def tailnet(kube_api, core, leftovers_removed):
    """The tailnet in a box (tests/support/tailnet.py) with the LAN device's firewall closed; waits until no relay
    of an earlier test is left (those of earlier runs are removed first), then has Headscale forget the offline
    ones."""
    from support.tailnet import Tailnet, forget_offline_relays, wait_for_no_relays

    net = Tailnet()
    net.firewall("closed")
    wait_for_no_relays(core)
    forget_offline_relays()
    yield net
    net.firewall("closed")


def cosign_key_pair(directory, prefix):
    """A cosign key pair PREFIX.key (password COSIGN_PASSWORD) and PREFIX.pub in DIRECTORY."""
    subprocess.run(
        [str(TOOLS / "cosign"), "generate-key-pair", "--output-key-prefix", prefix],
        cwd=directory,
        check=True,
        capture_output=True,
        env={**os.environ, "COSIGN_PASSWORD": COSIGN_PASSWORD},
    )
    return directory / f"{prefix}.key", directory / f"{prefix}.pub"


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request to stderr."""

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def classic_server(tmp_path_factory):
    """An HTTP server for the classic repositories (one directory per repository), on this host's address on the
    kind network (HOST_ADDRESS) so that pods (Argo CD's repo-server) reach it too; on loopback without it."""
    root = tmp_path_factory.mktemp("www")
    host = os.environ.get("HOST_ADDRESS") or "127.0.0.1"
    handler = functools.partial(QuietFileHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://{host}:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def published(tmp_path_factory, classic_server):
    """One scripts/release run for the whole session: the agent image (both platforms, signed, SBOMs attested) and the
    signed package pushed to the registry on the kind network (REGISTRY) with a cosign signature and the Artifact Hub
    metadata, and a classic repository under the HTTP server.
    The chart-distribution and Flux tests install from it."""
    registry = os.environ.get("REGISTRY")
    if not registry:
        unavailable("REGISTRY unset")
    # cosign, oras and cyclonedx-gomod (scripts/release's) may still be building in the background
    wait_for_later_tools()
    keys = tmp_path_factory.mktemp("keys")
    gpg = gpg_key(keys)
    cosign_key, cosign_pub = cosign_key_pair(keys, "release")
    _, other_pub = cosign_key_pair(keys, "other")
    www, base_url = classic_server
    repo_dir = www / "charts"
    oci = f"oci://{registry}/it-{uuid.uuid4().hex[:8]}"
    result, made = run_release(
        "--out",
        str(repo_dir),
        "--gpg-key",
        gpg.name,
        "--gpg-keyring",
        str(gpg.secret_keyring),
        "--oci",
        oci,
        "--cosign-key",
        str(cosign_key),
        "--repo-url",
        f"{base_url}/charts",
        "--agent-image",
        f"{oci.removeprefix('oci://')}/relay-agent",
        "--plain-http",
        env={"COSIGN_PASSWORD": COSIGN_PASSWORD},
    )
    assert result.returncode == 0, result.stderr
    return {
        **made,
        "gpg": gpg,
        "cosign_pub": cosign_pub,
        "other_pub": other_pub,
        "oci": oci,
        "www": www,
        "base_url": base_url,
        "version": made["OCI_REF"].rsplit(":", 1)[1],
        "oci_chart": f"{oci}/{CHART_NAME}",
        "ref": f"{oci.removeprefix('oci://')}/{CHART_NAME}",
    }
