"""The relay's agent (agent/, Go): its own tests pass, it is formatted and vetted, and its tailscale.com is the
chart's Tailscale release (scripts/versions.env), so a preference the agent sets is one tailscaled has."""

import os
import re
import subprocess

import pytest

from support.repo import REPO, versions

AGENT = REPO / "agent"


def go(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    # the Go release tailscale.com's go.mod asks for, fetched by the go command from the module proxy
    env = {**os.environ, "GOTOOLCHAIN": versions()["TAILSCALE_GO_TOOLCHAIN"], "CGO_ENABLED": "0"}
    return subprocess.run(["go", *args], cwd=AGENT, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_agents_go_tests_pass():
    result = go("test", "-count=1", "./...")
    assert result.returncode == 0, f"go test in agent/ failed:\n{result.stdout}\n{result.stderr}"


def test_the_agent_is_vetted_and_formatted():
    vet = go("vet", "./...")
    assert vet.returncode == 0, vet.stderr
    unformatted = subprocess.run(["gofmt", "-l", "."], cwd=AGENT, capture_output=True, text=True).stdout.split()
    assert not unformatted, f"gofmt -w these: {unformatted}"


def test_the_agent_uses_the_charts_tailscale_release():
    pinned = versions()
    mod = (AGENT / "go.mod").read_text()
    assert re.search(rf"^(require )?\s*tailscale\.com v{re.escape(pinned['TAILSCALE_VERSION'])}$", mod, re.M), (
        f"agent/go.mod should require tailscale.com v{pinned['TAILSCALE_VERSION']} (TAILSCALE_VERSION)"
    )
    replaced = set(re.findall(r"^replace (\S+) => (\S+) (\S+)$", mod, re.M))
    lines = pinned["TAILSCALE_TEST_REPLACE"].strip('"').split()
    wanted = {(old, *new.split("@")) for old, new in (line.split("=", 1) for line in lines)}
    assert replaced == wanted, "agent/go.mod's replace lines should be TAILSCALE_TEST_REPLACE's"


@pytest.mark.parametrize(
    "module", ["gvisor.dev/gvisor", "github.com/tailscale/gliderssh", "github.com/tailscale/wireguard-go"]
)
def test_no_replaced_module_is_linked_into_the_agent(module):
    # the replace lines only let the module graph resolve here; the binary must not depend on what they change
    deps = go("list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", ".")
    assert deps.returncode == 0, deps.stderr
    assert module not in deps.stdout.split(), f"relay-agent links {module}, which agent/go.mod replaces"
