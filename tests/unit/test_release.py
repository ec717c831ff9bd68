"""scripts/release packages and signs the chart and writes a classic repository a user can verify; the release
workflow runs that same script. (The OCI registry, cosign and installs from both kinds of repository are in
tests/integration/test_chart_distribution.py.)"""

import hashlib
import subprocess
import tarfile

import pytest
import yaml

from support.release_keys import gpg_key, read_member, run_release, tampered_copy
from support.repo import CHART, HELM, HELM3, REPO

VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
PACKAGE = f"tailscale-peer-relay-{VERSION}.tgz"
REPO_URL = "https://charts.example.org/tailscale"
PROJECT_URL = "https://github.com/example/tailscale-peer-relay"


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return gpg_key(tmp_path_factory.mktemp("gpg"))


@pytest.fixture(scope="module")
def released(tmp_path_factory, key):
    out = tmp_path_factory.mktemp("repo")
    result, made = run_release(
        "--out",
        str(out),
        "--gpg-key",
        key.name,
        "--gpg-keyring",
        str(key.secret_keyring),
        "--repo-url",
        REPO_URL,
        "--project-url",
        PROJECT_URL,
    )
    assert result.returncode == 0, result.stderr
    return out, made


def test_the_package_names_the_project_a_user_found_it_by(released):
    out, _ = released
    with tarfile.open(out / PACKAGE) as archive:
        chart = yaml.safe_load(read_member(archive, archive.getmember("tailscale-peer-relay/Chart.yaml")))
    assert chart["home"] == PROJECT_URL and chart["sources"][0] == PROJECT_URL, (chart["home"], chart["sources"])
    links = yaml.safe_load(chart["annotations"]["artifacthub.io/links"])
    assert {"name": "Source and README", "url": PROJECT_URL} in links, links


def test_release_writes_a_signed_package_and_a_classic_index(released):
    out, made = released
    assert made["PACKAGE"] == str(out / PACKAGE) and made["PROVENANCE"] == str(out / PACKAGE) + ".prov"
    index = yaml.safe_load((out / "index.yaml").read_text())
    (entry,) = index["entries"]["tailscale-peer-relay"]
    assert entry["version"] == VERSION
    assert entry["urls"] == [f"{REPO_URL}/{PACKAGE}"], "the index must point at the package under --repo-url"
    assert entry["digest"] == hashlib.sha256((out / PACKAGE).read_bytes()).hexdigest()
    assert (out / "artifacthub-repo.yml").read_text() == (REPO / "artifacthub-repo.yml").read_text()


@pytest.mark.parametrize("helm", [HELM, HELM3], ids=["helm4", "helm3"])
def test_provenance_verifies_with_the_public_key_only(released, key, helm):
    out, _ = released
    result = subprocess.run(
        [helm, "verify", str(out / PACKAGE), "--keyring", str(key.public_keyring)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"Signed by: {key.name}" in result.stdout


@pytest.mark.parametrize("helm", [HELM, HELM3], ids=["helm4", "helm3"])
def test_a_tampered_package_fails_verification(released, key, helm, tmp_path):
    out, _ = released
    tampered = tampered_copy(out / PACKAGE, tmp_path)
    (tmp_path / (PACKAGE + ".prov")).write_bytes((out / (PACKAGE + ".prov")).read_bytes())
    result = subprocess.run(
        [helm, "verify", str(tampered), "--keyring", str(key.public_keyring)], capture_output=True, text=True
    )
    assert result.returncode != 0, "helm verify accepted a package whose values.yaml was changed after signing"
    assert "sha256 sum does not match" in result.stderr


def test_another_key_does_not_verify(released, tmp_path):
    out, _ = released
    stranger = gpg_key(tmp_path, "Someone Else <someone@example.invalid>")
    result = subprocess.run(
        [HELM, "verify", str(out / PACKAGE), "--keyring", str(stranger.public_keyring)], capture_output=True, text=True
    )
    assert result.returncode != 0, "helm verify accepted a signature by a key not in the keyring"


def test_a_second_release_merges_into_the_existing_index(released, tmp_path):
    out, _ = released
    (tmp_path / "index.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "entries": {
                    "tailscale-peer-relay": [
                        {
                            "name": "tailscale-peer-relay",
                            "version": "0.0.1",
                            "urls": [f"{REPO_URL}/tailscale-peer-relay-0.0.1.tgz"],
                            "digest": "0" * 64,
                            "apiVersion": "v2",
                            "created": "2026-01-01T00:00:00Z",
                        }
                    ]
                },
            }
        )
    )
    result, _ = run_release("--out", str(tmp_path), "--repo-url", REPO_URL)
    assert result.returncode == 0, result.stderr
    versions = [
        e["version"] for e in yaml.safe_load((tmp_path / "index.yaml").read_text())["entries"]["tailscale-peer-relay"]
    ]
    assert sorted(versions) == sorted(["0.0.1", VERSION]), "an earlier release vanished from the index"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--oci", "ghcr.io/someone/charts"], "--oci must start with oci://"),
        (["--cosign-key", "cosign.key"], "give --oci too"),
        (["--oci", "oci://r/c", "--cosign-key", "k", "--cosign-keyless"], "exclude each other"),
        (["--gpg-key", "nobody", "--gpg-keyring", "/nonexistent/secring.gpg"], "no keyring /nonexistent/secring.gpg"),
        (["--frobnicate"], "unknown option --frobnicate"),
    ],
)
def test_release_refuses_bad_options_before_doing_anything(args, message, tmp_path):
    result, made = run_release("--out", str(tmp_path), *args)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not made and not list(tmp_path.iterdir()), "nothing may be written when the options are wrong"


def workflow():
    return yaml.safe_load((REPO / ".github" / "workflows" / "release.yaml").read_text())


def test_release_workflow_is_a_valid_github_workflow(tool):
    path = REPO / ".github" / "workflows" / "release.yaml"
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert workflow()[True]["push"]["tags"] == ["v*"], "the release workflow should run on version tags"


def test_release_workflow_publishes_with_scripts_release_and_only_known_options():
    runs = [step.get("run", "") for step in workflow()["jobs"]["release"]["steps"]]
    (call,) = [r for r in runs if "scripts/release" in r]
    used = {word for word in call.split() if word.startswith("--")}
    help_text = subprocess.run([str(REPO / "scripts" / "release"), "--help"], capture_output=True, text=True).stdout
    known = {word.rstrip(",") for word in help_text.split() if word.startswith("--")}
    assert used <= known, f"the workflow passes options scripts/release does not have: {used - known}"
    assert {"--oci", "--gpg-key", "--repo-url", "--agent-image", "--project-url"} <= used and (
        "--cosign-keyless" in used or "--cosign-key" in used
    )
    permissions = workflow()["jobs"]["release"]["permissions"]
    assert permissions == {"contents": "write", "packages": "write", "id-token": "write"}


def test_the_release_and_the_test_images_build_the_agent_image_with_one_script():
    # what the tests run on kind is what a release pushes: both call scripts/agent-image
    for caller in ("scripts/release", "scripts/images/build"):
        assert (
            '"$root/scripts/agent-image"' in (REPO / caller).read_text()
            or '"$ROOT/scripts/agent-image"' in (REPO / caller).read_text()
        ), f"{caller} should build the agent with scripts/agent-image"
