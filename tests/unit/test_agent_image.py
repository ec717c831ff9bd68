"""scripts/agent-image: the agent's image as a release pushes it and the test cluster runs it: an OCI image layout
with an image per platform, nothing in it but the static binary, non-root, reproducible; its arm64 binary runs (under
qemu-aarch64)."""

import hashlib
import io
import json
import re
import subprocess
import tarfile

import pytest

from support.repo import REPO

SCRIPT = REPO / "scripts" / "agent-image"


def blob(layout, digest):
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two builds of the same sources into two layouts: (layout, digest) each."""
    runs = []
    for name in ("first", "second"):
        layout = tmp_path_factory.mktemp(name) / "oci"
        result = subprocess.run(
            [
                str(SCRIPT),
                "--out",
                str(layout),
                "--platforms",
                "linux/amd64,linux/arm64",
                "--version",
                "9.9.9",
                "--tag",
                "localhost/relay-agent:test",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr
        answers = dict(line.split("=", 1) for line in result.stdout.splitlines())
        runs.append((layout, answers))
    return runs


def test_the_index_has_an_image_per_platform_and_each_holds_only_the_agent(built):
    layout, answers = built[0]
    (top,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert top["digest"] == answers["DIGEST"] and top["annotations"]["org.opencontainers.image.ref.name"] == "9.9.9"
    index = json.loads(blob(layout, answers["DIGEST"]))
    assert hashlib.sha256(blob(layout, answers["DIGEST"])).hexdigest() == answers["DIGEST"].removeprefix("sha256:")
    platforms = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert platforms == {"amd64": answers["IMAGE_linux_amd64"], "arm64": answers["IMAGE_linux_arm64"]}
    for arch, digest in platforms.items():
        manifest = json.loads(blob(layout, digest))
        config = json.loads(blob(layout, manifest["config"]["digest"]))
        assert config["architecture"] == arch and config["os"] == "linux"
        assert config["config"]["User"] == "65532:65532", "the agent image must not default to root"
        assert config["config"]["Entrypoint"] == ["/relay-agent"]
        assert config["config"]["Labels"]["org.opencontainers.image.version"] == "9.9.9"
        (layer,) = manifest["layers"]
        with tarfile.open(fileobj=io.BytesIO(blob(layout, layer["digest"]))) as archive:
            members = archive.getmembers()
            assert [m.name for m in members] == ["relay-agent"], "nothing but the binary: no shell, no package manager"
            binary = archive.extractfile(members[0]).read()
        machine = {"amd64": 0x3E, "arm64": 0xB7}[arch]
        assert binary[:4] == b"\x7fELF" and int.from_bytes(binary[18:20], "little") == machine, f"{arch}: wrong binary"
        assert b".interp" not in binary, f"{arch}: the binary must be static (no dynamic loader)"


def platform_binary(layout, image_digest) -> bytes:
    """The relay-agent binary of one platform's image."""
    manifest = json.loads(blob(layout, image_digest))
    (layer,) = manifest["layers"]
    with tarfile.open(fileobj=io.BytesIO(blob(layout, layer["digest"]))) as archive:
        member = archive.extractfile("relay-agent")
        assert member, "the layer has no relay-agent"
        return member.read()


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["version"]], ids=["help", "check-help", "version"])
def test_the_arm64_binary_answers_under_qemu_as_the_amd64_one_does(built, tool, tmp_path, args):
    # The image is published for linux/arm64 (Raspberry Pis, Ampere servers): its binary, from the image built above,
    # run by qemu-aarch64 (Debian's qemu-user, scripts/debian-packages), answers what the host's amd64 binary answers.
    qemu = tool("qemu-aarch64")
    layout, answers = built[0]
    answered = {}
    for arch, command in (("amd64", []), ("arm64", [qemu])):
        binary = tmp_path / f"relay-agent-{arch}"
        binary.write_bytes(platform_binary(layout, answers[f"IMAGE_linux_{arch}"]))
        binary.chmod(0o755)
        result = subprocess.run([*command, str(binary), *args], capture_output=True, text=True, timeout=60)
        # without the time the agent's log lines start with
        stderr = re.sub(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", "", result.stderr, flags=re.M)
        answered[arch] = (result.returncode, result.stdout, stderr)
    _, stdout, stderr = answered["arm64"]
    assert ("9.9.9" if args == ["version"] else "usage: relay-agent") in stdout + stderr, (
        f"the arm64 binary under {qemu} did not answer {args}: {answered['arm64']}"
    )
    assert answered["arm64"] == answered["amd64"], f"the arm64 and amd64 binaries answer {args} differently: {answered}"


def test_two_builds_of_the_same_sources_are_the_same_image(built):
    (_, first), (_, second) = built
    assert first["DIGEST"] == second["DIGEST"], "the agent image is not reproducible: a rebuild changed its digest"


def test_docker_load_gets_the_first_platform_under_the_tag(built):
    layout, answers = built[0]
    (entry,) = json.loads((layout / "manifest.json").read_text())
    manifest = json.loads(blob(layout, answers["IMAGE_linux_amd64"]))
    assert entry["RepoTags"] == ["localhost/relay-agent:test"]
    assert entry["Config"] == "blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")
    assert entry["Layers"] == ["blobs/sha256/" + manifest["layers"][0]["digest"].removeprefix("sha256:")]
