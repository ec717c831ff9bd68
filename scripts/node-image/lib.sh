# shellcheck shell=bash
# Shared helpers for the offline kind node image build (sourced, not run).
# Everything built lands in $CACHE, keyed by the pinned versions in
# scripts/versions.env plus a hash of the script that builds it, so a second
# run reuses it and a version bump rebuilds only what changed.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
NODE_DIR="$ROOT/scripts/node-image"
# shellcheck source=scripts/versions.env
source "$ROOT/scripts/versions.env"
CACHE="${TSRELAY_CACHE:-$HOME/.cache/tailscale-relay-chart}"
mkdir -p "$CACHE"

# A caller captures these scripts' standard output as their answer (an image
# name, NAME=DIR lines), so only `answer` writes there; everything else, from
# logs to what docker, debootstrap and go print, goes to standard error.
exec {ANSWER_FD}>&1 1>&2
answer() { echo "$@" >&"$ANSWER_FD"; }

log() { echo "${LOG_PREFIX:-node-image}: $*" >&2; }
die() { echo "${LOG_PREFIX:-node-image}: error: $*" >&2; exit 1; }

# need_command COMMAND PACKAGE: fail with the reason instead of installing it
# here (apt-get from two parallel builds races on dpkg's lock)
need_command() { command -v "$1" >/dev/null || die "$1 is missing: run scripts/debian-packages (installs $2)"; }

# short_hash FILE... -> 12 hex chars over the files' contents
short_hash() { cat "$@" | sha256sum | cut -c1-12; }

# k8s_minor v1.34.4 -> 34 ; k8s_patch -> 4
k8s_minor() { local v="${1#v}"; v="${v#*.}"; echo "${v%%.*}"; }
k8s_patch() { local v="${1#v}"; echo "${v##*.}"; }
