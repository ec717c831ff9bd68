"""Fixtures for the integration tests.

They talk to whatever cluster KUBECONFIG names. Without KUBECONFIG, or when
that cluster does not answer, the tests that need it are skipped with one line
saying how to get one, unless the run requires the cluster (REQUIRE_CLUSTER=1,
which scripts/test sets after bringing it up): then they fail. When it answers,
they assert.
"""

from __future__ import annotations

import os
import uuid

import pytest

from relay_release import unavailable


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


@pytest.fixture
def namespace(core):
    """A fresh namespace, deleted (without waiting) after the test."""
    from kubernetes import client

    name = f"it-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def release(kube_api, namespace):
    """The chart's release helper for this test's namespace (tests/integration/relay_release.py)."""
    from relay_release import Release

    return Release(kube_api, namespace)
