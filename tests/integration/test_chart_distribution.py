"""The chart as a chart-repository user gets it: scripts/release pushes a signed package to the OCI registry on the
kind network (the CNCF distribution registry, scripts/images/deploy) and writes a classic repository served here over
HTTP; Helm 4 and Helm 3 install from both and get a configured relay; provenance and the cosign signature verify with
the public keys and fail when they should."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from support.release import Release
from support.release_keys import tampered_copy
from support.repo import CHART_NAME, HELM, HELM3, REPO, TOOLS

# later_tools: oras and cosign, built in the background by scripts/setup
pytestmark = [pytest.mark.integration, pytest.mark.later_tools]

HELMS = pytest.mark.parametrize("helm", [HELM, HELM3], ids=["helm4", "helm3"])


def helm_env(tmp_path):
    """Helm with its own repository list and cache, so the tests never touch the user's."""
    return [
        "--repository-config",
        str(tmp_path / "repositories.yaml"),
        "--repository-cache",
        str(tmp_path / "repository-cache"),
    ]


def directory(path):
    """helm pull --destination needs an existing directory."""
    path.mkdir()
    return path


def run(*command, **kwargs):
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)


def cosign_verify(published, public_key):
    return run(
        TOOLS / "cosign",
        "verify",
        "--key",
        public_key,
        "--insecure-ignore-tlog",
        "--allow-http-registry",
        "--allow-insecure-registry",
        f"{published['ref']}@{published['DIGEST']}",
    )


@HELMS
def test_helm_installs_from_the_oci_registry_and_the_relay_is_configured(kube_api, namespace, published, helm):
    release = Release(
        kube_api,
        namespace,
        chart=published["oci_chart"],
        helm_binary=helm,
        chart_args=("--version", published["version"], "--plain-http"),
    )
    release.install({"relay": {"port": 41641}})
    assert release.relay_settings(release.pod(0)) == ("41641", release.service_endpoints(0, 41641))
    release.test()
    (listed,) = json.loads(release.helm("list", "--output", "json").stdout)
    assert listed["chart"] == f"{CHART_NAME}-{published['version']}", f"helm installed {listed['chart']}"


@HELMS
def test_helm_installs_from_the_classic_repository(kube_api, namespace, published, helm, tmp_path):
    repo_args = helm_env(tmp_path)
    added = run(helm, "repo", "add", "relay-charts", f"{published['base_url']}/charts", *repo_args)
    assert added.returncode == 0, added.stderr
    found = run(helm, "search", "repo", "relay-charts/", "--output", "json", *repo_args)
    assert [(c["name"], c["version"]) for c in json.loads(found.stdout)] == [
        (f"relay-charts/{CHART_NAME}", published["version"])
    ]
    release = Release(
        kube_api,
        namespace,
        chart=f"relay-charts/{CHART_NAME}",
        helm_binary=helm,
        chart_args=("--version", published["version"], *repo_args),
    )
    release.install()
    assert release.relay_settings(release.pod(0)) == ("40000", release.service_endpoints(0, 40000))


@HELMS
def test_helm_pull_verify_passes_from_both_repositories(published, helm, tmp_path):
    keyring = published["gpg"].public_keyring
    from_oci = run(
        helm,
        "pull",
        published["oci_chart"],
        "--version",
        published["version"],
        "--plain-http",
        "--verify",
        "--keyring",
        keyring,
        "--destination",
        directory(tmp_path / "oci"),
    )
    assert from_oci.returncode == 0, f"helm pull --verify from the OCI registry: {from_oci.stderr}"
    repo_args = helm_env(tmp_path)
    run(helm, "repo", "add", "relay-charts", f"{published['base_url']}/charts", *repo_args)
    from_repo = run(
        helm,
        "pull",
        f"relay-charts/{CHART_NAME}",
        "--version",
        published["version"],
        "--verify",
        "--keyring",
        keyring,
        "--destination",
        directory(tmp_path / "classic"),
        *repo_args,
    )
    assert from_repo.returncode == 0, f"helm pull --verify from the classic repository: {from_repo.stderr}"


@HELMS
def test_helm_pull_verify_fails_when_the_served_package_was_tampered_with(published, helm, tmp_path):
    """A mirror that serves a changed package (with an index that matches it) and the original provenance."""
    www, package = published["www"], published["PACKAGE"]
    mirror = www / f"mirror-{tmp_path.name}"
    mirror.mkdir()
    tampered_copy(Path(package), mirror)
    shutil.copy(published["PROVENANCE"], mirror)
    index = run(HELM, "repo", "index", mirror, "--url", f"{published['base_url']}/{mirror.name}")
    assert index.returncode == 0, index.stderr
    repo_args = helm_env(tmp_path)
    run(helm, "repo", "add", "mirror", f"{published['base_url']}/{mirror.name}", *repo_args)
    pulled = run(
        helm,
        "pull",
        f"mirror/{CHART_NAME}",
        "--version",
        published["version"],
        "--verify",
        "--keyring",
        published["gpg"].public_keyring,
        "--destination",
        directory(tmp_path / "out"),
        *repo_args,
    )
    assert pulled.returncode != 0, "helm pull --verify accepted a package changed after signing"
    assert "sha256 sum does not match" in pulled.stderr, pulled.stderr


def test_cosign_verifies_the_oci_chart_with_the_release_key_only(published):
    good = cosign_verify(published, published["cosign_pub"])
    assert good.returncode == 0, f"cosign verify with the release's public key failed: {good.stderr}"
    claims = json.loads(good.stdout)
    assert claims[0]["critical"]["image"]["docker-manifest-digest"] == published["DIGEST"]
    other = cosign_verify(published, published["other_pub"])
    assert other.returncode != 0, "cosign verify accepted the signature with a different public key"


def test_artifact_hub_metadata_is_in_the_oci_repository_with_its_media_type(published, tmp_path):
    oras = TOOLS / "oras"
    manifest = run(oras, "manifest", "fetch", "--plain-http", f"{published['ref']}:artifacthub.io")
    assert manifest.returncode == 0, manifest.stderr
    manifest = json.loads(manifest.stdout)
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.artifacthub.config.v1+yaml"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.cncf.artifacthub.repository-metadata.layer.v1.yaml"
    pulled = run(oras, "pull", "--plain-http", "--output", tmp_path, f"{published['ref']}:artifacthub.io")
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "artifacthub-repo.yml").read_text() == (REPO / "artifacthub-repo.yml").read_text()


def test_the_oci_chart_carries_its_provenance_and_readme(published):
    shown = run(HELM, "show", "readme", published["oci_chart"], "--version", published["version"], "--plain-http")
    assert shown.returncode == 0, shown.stderr
    assert "| relay.port | int | `40000` |" in shown.stdout, "helm show readme of the OCI chart lacks the values table"
    manifest = json.loads(
        run(TOOLS / "oras", "manifest", "fetch", "--plain-http", f"{published['ref']}:{published['version']}").stdout
    )
    media_types = {layer["mediaType"] for layer in manifest["layers"]}
    assert "application/vnd.cncf.helm.chart.provenance.v1.prov" in media_types, (
        "helm push should upload the .prov as a layer, so helm pull --verify works from the registry"
    )


def cosign(*args):
    return run(TOOLS / "cosign", *args, "--insecure-ignore-tlog", "--allow-http-registry", "--allow-insecure-registry")


def test_the_agent_image_is_pushed_for_both_platforms_signed_with_an_sbom_each(published):
    image, digest = published["AGENT_IMAGE"], published["AGENT_DIGEST"]
    index = run(TOOLS / "oras", "manifest", "fetch", "--plain-http", image)
    assert index.returncode == 0, index.stderr
    index = json.loads(index.stdout)
    platforms = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in index["manifests"]}
    assert set(platforms) == {"linux/amd64", "linux/arm64"}, f"the agent image index has {sorted(platforms)}"
    repo = image.rsplit(":", 1)[0]
    signed = cosign("verify", "--key", published["cosign_pub"], f"{repo}@{digest}")
    assert signed.returncode == 0, f"the agent image's signature does not verify: {signed.stderr}"
    assert cosign("verify", "--key", published["other_pub"], f"{repo}@{digest}").returncode != 0
    for platform, manifest in platforms.items():
        attested = cosign(
            "verify-attestation", "--key", published["cosign_pub"], "--type", "cyclonedx", f"{repo}@{manifest}"
        )
        assert attested.returncode == 0, f"no verified SBOM attestation for {platform}: {attested.stderr}"
        statement = json.loads(__import__("base64").b64decode(json.loads(attested.stdout.splitlines()[0])["payload"]))
        components = {c["name"] for c in statement["predicate"].get("components", [])}
        assert "tailscale.com" in components, (
            f"the {platform} SBOM should list the agent's modules: {sorted(components)[:10]}"
        )


@HELMS
def test_the_published_chart_runs_the_agent_image_it_was_released_with(published, helm):
    shown = run(helm, "show", "values", published["oci_chart"], "--version", published["version"], "--plain-http")
    assert shown.returncode == 0, shown.stderr
    repository = published["AGENT_IMAGE"].rsplit(":", 1)[0]
    assert f"repository: {repository}" in shown.stdout, (
        "the package's agent.image.repository should be the pushed image"
    )
    chart = run(helm, "show", "chart", published["oci_chart"], "--version", published["version"], "--plain-http").stdout
    assert f"image: {published['AGENT_IMAGE']}" in chart, "artifacthub.io/images should name the pushed agent image"
