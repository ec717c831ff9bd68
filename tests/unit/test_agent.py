"""The relay's agent (agent/, Go): its own tests pass, under the race detector and for arm64 under qemu, it is
formatted, vetted and clean under staticcheck, and its tailscale.com is the chart's Tailscale release
(scripts/versions.env), so a preference the agent sets is one tailscaled has."""

import os
import re
import subprocess

import pytest

from support.repo import REPO, versions

AGENT = REPO / "agent"


def go_env(cgo: bool = False, **extra: str) -> dict[str, str]:
    # the Go release tailscale.com's go.mod asks for, fetched by the go command from the module proxy; cgo off and
    # -trimpath, as scripts/agent-image builds the image's binary (but for the race detector, which needs cgo), so that
    # its builds in tests/unit/test_agent_image.py reuse the packages compiled here (a cold build cache: 8 s, not 2 min)
    return {
        **os.environ,
        "GOTOOLCHAIN": versions()["TAILSCALE_GO_TOOLCHAIN"],
        "CGO_ENABLED": str(int(cgo)),
        "GOFLAGS": "-trimpath -buildvcs=false",
        **extra,
    }


def go(*args: str, timeout: int = 900, cgo: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["go", *args], cwd=AGENT, capture_output=True, text=True, timeout=timeout, env=go_env(cgo, **env)
    )


def test_the_agents_go_tests_pass_under_the_race_detector():
    # One run of the agent's tests, with -race (no plain run besides: it would test nothing more, for ~17 s): the agent
    # is goroutines sharing state (agent.go's Agent: the loop, the Service and IPN bus watches, the reporter, the
    # HTTP handlers). -race needs cgo and its C compiler, gcc (scripts/debian-packages); the cgo-off build the image
    # ships has its tests run by the arm64 test below.
    result = go("test", "-race", "-count=1", "./...", cgo=True)
    output = f"{result.stdout}\n{result.stderr}"
    assert "WARNING: DATA RACE" not in output, (
        "the race detector saw two goroutines of the agent use the same memory, one writing, with nothing ordering "
        f"them (a field read or written without the lock that guards it?); the stacks name both:\n{output}"
    )
    assert result.returncode == 0, f"go test -race in agent/ failed (is gcc installed? scripts/setup):\n{output}"


def test_the_agents_go_tests_pass_on_arm64_under_qemu(tool):
    # The image is published for linux/arm64 too (Raspberry Pis, Ampere servers): the same tests, built for arm64 and
    # run by qemu-aarch64 (Debian's qemu-user, scripts/debian-packages) through go test -exec, which needs no
    # binfmt_misc; RELAY_AGENT_TEST_EXEC runs the SIGTERM test's own child process under it too.
    qemu = tool("qemu-aarch64")
    result = go("test", "-count=1", "-exec", qemu, "./...", GOARCH="arm64", RELAY_AGENT_TEST_EXEC=qemu)
    assert result.returncode == 0, (
        f"the agent's Go tests failed for linux/arm64 under {qemu}:\n{result.stdout}\n{result.stderr}"
    )


def test_the_agent_is_vetted_and_formatted():
    vet = go("vet", "./...")
    assert vet.returncode == 0, vet.stderr
    unformatted = subprocess.run(["gofmt", "-l", "."], cwd=AGENT, capture_output=True, text=True).stdout.split()
    assert not unformatted, f"gofmt -w these: {unformatted}"


def test_staticcheck_finds_nothing_in_the_agent(tool):
    # every check, also the style ones staticcheck leaves out by default (agent/staticcheck.conf)
    staticcheck = tool("staticcheck")
    result = subprocess.run(
        [staticcheck, "./..."], cwd=AGENT, capture_output=True, text=True, timeout=600, env=go_env()
    )
    assert result.returncode == 0, (
        "staticcheck found these in agent/: fix them, or turn the check off in agent/staticcheck.conf with the reason "
        f"beside it (run it: cd agent && GOTOOLCHAIN=$TAILSCALE_GO_TOOLCHAIN ../.tools/bin/staticcheck ./...)\n"
        f"{result.stdout}{result.stderr}"
    )


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
