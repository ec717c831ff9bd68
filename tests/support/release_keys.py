"""Throw-away signing keys and a runner for scripts/release, shared by the release unit tests and the distribution
integration tests."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from support.repo import REPO

RELEASE = REPO / "scripts" / "release"


@dataclass
class GpgKey:
    name: str
    secret_keyring: Path  # legacy format, what `helm package --sign` reads
    public_keyring: Path  # what `helm verify` / `helm pull --verify` read


def gpg_key(directory: Path, name: str = "Relay Chart Test <release-test@example.invalid>") -> GpgKey:
    """A new RSA signing key without passphrase in its own GNUPGHOME (RSA: Helm's OpenPGP reads it)."""
    home = directory / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    subprocess.run(
        [*gpg, "--passphrase", "", "--quick-gen-key", name, "rsa2048", "sign", "never"], check=True, capture_output=True
    )
    secret, public = directory / "secring.gpg", directory / "pubring.gpg"
    secret.write_bytes(subprocess.run([*gpg, "--export-secret-keys", name], check=True, capture_output=True).stdout)
    public.write_bytes(subprocess.run([*gpg, "--export", name], check=True, capture_output=True).stdout)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    return GpgKey(name, secret, public)


def run_release(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """Runs scripts/release (with ENV added to the environment); returns the result and what it printed on stdout
    as KEY=VALUE."""
    result = subprocess.run(
        [str(RELEASE), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/helm-cache", **(env or {})},
    )
    made = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return result, made


def tampered_copy(package: Path, directory: Path) -> Path:
    """The package with one line of values.yaml changed, re-compressed: what a compromised mirror would serve."""
    with tarfile.open(package) as archive:
        members = [(m, read_member(archive, m) if m.isfile() else None) for m in archive.getmembers()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for member, data in members:
            if member.name.endswith("/values.yaml"):
                assert data is not None, "values.yaml is a file"
                data = data.replace(b"port: 40000", b"port: 40001", 1)
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    target = directory / package.name
    target.write_bytes(gzip.compress(buffer.getvalue()))
    return target


def read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The contents of the regular file MEMBER of ARCHIVE."""
    handle = archive.extractfile(member)
    assert handle is not None, f"{member.name} is a regular file"
    return handle.read()
