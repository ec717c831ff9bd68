# shellcheck shell=bash disable=SC2034  # the names below are used by the scripts that source this
# Shared helpers for scripts/images/* (sourced, not run).
#
# Everything built lands in $CACHE/images/<what>-<version>-<hash>/, where the
# hash covers the script that builds it, so a warm run only checks that
# directories and image labels exist, and a version bump in
# scripts/versions.env rebuilds only what depends on it.

# errexit also inside $(...): the build steps report their output directory that way
shopt -s inherit_errexit

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$IMAGES_DIR/../.." && pwd)"
# shellcheck source=../versions.env
source "$ROOT/scripts/versions.env"
CACHE="${TSRELAY_CACHE:-$HOME/.cache/tailscale-relay-chart}"
ICACHE="$CACHE/images"
mkdir -p "$ICACHE"

export CGO_ENABLED=0 GOTOOLCHAIN=local

# Image names (all local: nothing is pulled, kind nodes get them by `kind load`).
RELAY_IMAGE="localhost/tailscale:v${TAILSCALE_VERSION}"
# The chart's agent, tagged by its sources (agent/ and the script that builds its image): a change rebuilds it.
AGENT_IMAGE="localhost/relay-agent:$(cat "$ROOT/scripts/agent-image" "$ROOT"/agent/go.* "$ROOT"/agent/*.go | sha256sum | cut -c1-12)"
# A toolbox for the tests only (sh, coreutils, curl, kubectl): ephemeral containers that read a pod's socket table.
TOOLBOX_IMAGE="localhost/toolbox:${KUBERNETES_VERSION}"
HEADSCALE_IMAGE="localhost/headscale:${HEADSCALE_VERSION}"
METALLB_CONTROLLER_IMAGE="localhost/metallb-controller:${METALLB_VERSION}"
METALLB_SPEAKER_IMAGE="localhost/metallb-speaker:${METALLB_VERSION}"
REGISTRY_IMAGE="localhost/registry:${DISTRIBUTION_VERSION}"
FLUX_SOURCE_IMAGE="localhost/flux-source-controller:${FLUX_SOURCE_CONTROLLER_VERSION}"
FLUX_HELM_IMAGE="localhost/flux-helm-controller:${FLUX_HELM_CONTROLLER_VERSION}"
ARGOCD_IMAGE="localhost/argocd:${ARGOCD_VERSION}"
ARGOCD_REDIS_IMAGE="localhost/argocd-redis:${NODE_DEBIAN_SUITE}"

# The kind cluster (as scripts/cluster names it) and the Headscale container on
# its docker network; `scripts/cluster down` removes containers named <cluster>-*.
CLUSTER_NAME="${KIND_CLUSTER_NAME:-${CLUSTER_NAME:-relay-test}}"
KIND_NETWORK="${KIND_EXPERIMENTAL_DOCKER_NETWORK:-kind}"
HEADSCALE_CONTAINER="$CLUSTER_NAME-headscale"
HEADSCALE_USER="relay-test"
HEADSCALE_PORT=8080
# Headscale's DERP server as the clients reach it: through scripts/images/derp-delay on DERP_DELAY_PORT in
# Headscale's network namespace, DERP_DELAY_MS (round trip, > 0) farther away than it is.
DERP_DELAY_MS="${DERP_DELAY_MS:-30}"
DERP_DELAY_PORT=8081
DERP_DELAY_PIDFILE="$CACHE/derp-delay.pid"
# The OCI registry the distribution tests push the chart to (and Flux pulls it from): plain HTTP.
REGISTRY_CONTAINER="$CLUSTER_NAME-registry"
REGISTRY_PORT=5000
# scripts/images/gitops (Flux and Argo CD, built and deployed in the background): its state, as JSON, and its log
GITOPS_STATE="$CACHE/gitops-$CLUSTER_NAME.json"
GITOPS_LOG="$CACHE/logs/gitops-$CLUSTER_NAME.log"

# The tailnet in a box (scripts/images/tailnet): a "LAN device" (a tailnet client
# in a docker container on the kind network, outside the cluster) and a
# "workload" (a tailnet node in its own pod), as in the write-up.
LAN_CLIENT_CONTAINER="$CLUSTER_NAME-lan-client"
WORKLOAD_NAMESPACE="tailnet-workload"
WORKLOAD_NODE="workload"

log() { echo "${LOG_PREFIX:-images}: $*" >&2; }
die() { echo "${LOG_PREFIX:-images}: error: $*" >&2; exit 1; }

# short_hash FILE... -> 12 hex chars over the files' contents
short_hash() { cat "$@" | sha256sum | cut -c1-12; }

KIND="${KIND:-$ROOT/.tools/bin/kind}"
[[ -x "$KIND" ]] || KIND="$(command -v kind || true)"

need_docker() {
  command -v docker >/dev/null || die "docker is not installed (run scripts/docker-up)"
  docker info >/dev/null 2>&1 || die "docker daemon is not reachable (run scripts/docker-up)"
}
have_docker() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }
need_kind() { [[ -n "$KIND" && -x "$KIND" ]] || die "kind not found (run scripts/install-tools)"; }

# kubectl for the toolbox image and for deploying: the node-image build's binary
# (same KUBERNETES_VERSION, same wrapper-module recipe) when it is there,
# otherwise scripts/images/build kubectl builds one.
find_kubectl() {
  local d
  for d in "$CACHE"/bin/kubernetes-"$KUBERNETES_VERSION"-*/ "$ICACHE"/bin/kubectl-"$KUBERNETES_VERSION"-*/; do
    if [[ -f "$d/.done" && -x "$d/kubectl" ]]; then
      echo "${d%/}/kubectl"
      return 0
    fi
  done
  return 1
}

# modcache_dir MODULE VERSION -> the module's directory in the Go module cache (downloaded when missing)
modcache_dir() {
  (cd /tmp && GOFLAGS=-mod=mod go mod download -json "$1@$2" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
}

# apply_manifest KUBECTL WHAT FILE [kubectl apply args...] : server-side apply of FILE. The first big apply to a
# new cluster may meet an API server that does not answer yet: retried 5 times, 10 s apart, the error shown each time.
apply_manifest() {
  local kubectl="$1" what="$2" file="$3" out i; shift 3
  for i in $(seq 5); do
    if out="$("$kubectl" apply --server-side --force-conflicts -f "$file" "$@" 2>&1)"; then return; fi
    [[ $i -lt 5 ]] || die "cannot apply the $what manifest $file: $out"
    log "$what: apply failed (attempt $i of 5), retrying in 10s: ${out:0:300}"
    sleep 10
  done
}

# wait_established KUBECTL CRD... : waits (60 s each) until every CRD is served (condition Established). A loop,
# not `kubectl wait --for condition=established`: that fails at once on a CRD so new that it has no status conditions
# yet (".status.conditions accessor error: <nil> is of the type <nil>"), as a first deploy to a new cluster meets.
wait_established() {
  local kubectl="$1" crd seen i; shift
  for crd in "$@"; do
    for i in $(seq 60); do
      seen="$("$kubectl" get "crd/$crd" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>&1)" &&
        [[ "$seen" == True ]] && break
      [[ $i -lt 60 ]] || die "CRD $crd is not Established after 60s (saw: ${seen:-no condition yet})"
      sleep 1
    done
  done
}

# pin_image_id KUBECTL NAMESPACE IMAGE WORKLOAD... : records IMAGE's docker image ID in each workload's pod
# template, so that a rebuilt image (same tag, new content, loaded by kind) rolls the pods; a no-op otherwise
pin_image_id() {
  local kubectl="$1" ns="$2" image="$3" id w; shift 3
  id="$(docker image inspect -f '{{.Id}}' "$image")"
  for w in "$@"; do
    "$kubectl" -n "$ns" patch "$w" --type merge \
      -p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"org.tailscale-relay-chart/image-id\":\"${id#sha256:}\"}}}}}" >/dev/null
  done
}

# kind_net_subnets -> "IPV4_SUBNET IPV6_SUBNET" of the kind docker network
kind_net_subnets() {
  docker network inspect "$KIND_NETWORK" -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null ||
    die "docker network '$KIND_NETWORK' not found (is the kind cluster up? scripts/cluster up)"
}

# addr_in SUBNET INDEX -> the address at INDEX of SUBNET (negative counts from the end)
addr_in() { python3 -c 'import ipaddress,sys; print(ipaddress.ip_network(sys.argv[1])[int(sys.argv[2])])' "$1" "$2"; }

# kind_addrs INDEX -> "IPV4 IPV6": the address at INDEX of each kind subnet (IPV6 empty on a single-stack network).
# Fixed addresses for the test services sit near the top, clear of the ones docker hands out from the bottom and
# of the MetalLB pools (-64..-17): Headscale at -6, the OCI registry at -7.
kind_addrs() {
  local s v4="" v6=""
  for s in $(kind_net_subnets); do
    case "$s" in
      *:*) v6="$(addr_in "$s" "$1")" ;;
      *) v4="$(addr_in "$s" "$1")" ;;
    esac
  done
  [[ -n "$v4" ]] || die "docker network '$KIND_NETWORK' has no IPv4 subnet"
  echo "$v4 $v6"
}
headscale_addrs() { kind_addrs -6; }

# host_addr -> this host's IPv4 address on the kind network (the bridge's gateway): pods reach what the tests
# serve there (the classic chart repository for Argo CD)
host_addr() { docker network inspect "$KIND_NETWORK" -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 '\.'; }

# registry_addr -> the OCI registry's IPv4 address on the kind network, next to Headscale's
registry_addr() { local a; a="$(kind_addrs -7)"; echo "${a%% *}"; }

# metallb_ranges -> one "FIRST-LAST" range per kind subnet: the 48 addresses at
# -64..-17 (Headscale sits at -6), from which MetalLB hands out LoadBalancer IPs
metallb_ranges() {
  local sub
  for sub in $(kind_net_subnets); do echo "$(addr_in "$sub" -64)-$(addr_in "$sub" -17)"; done
}

# What pods (and this host) use to reach Headscale.
headscale_url() { local a; a="$(headscale_addrs)"; echo "http://${a%% *}:$HEADSCALE_PORT"; }

hs() { docker exec "$HEADSCALE_CONTAINER" headscale "$@"; }

headscale_running() {
  [[ "$(docker inspect -f '{{.State.Running}}' "$HEADSCALE_CONTAINER" 2>/dev/null)" == true ]]
}

# new_authkey [TAGS]: a fresh reusable pre-auth key (24h) of the test user, tagged with TAGS
new_authkey() {
  local uid key
  uid="$(headscale_user_id)"
  key="$(hs preauthkeys create --reusable --expiration 24h -u "$uid" ${1:+--tags "$1"} -o json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')" ||
    die "headscale could not create a pre-auth key"
  [[ -n "$key" ]] || die "headscale returned an empty pre-auth key"
  echo "$key"
}

# headscale_user_id -> id of $HEADSCALE_USER (created if missing)
# hs_forget_node NAME: deletes Headscale's nodes named NAME (none: nothing to do)
hs_forget_node() {
  local id
  for id in $(hs nodes list -o json | python3 -c 'import json, sys
print(*[n["id"] for n in json.load(sys.stdin) or [] if n.get("given_name") == sys.argv[1]])' "$1"); do
    hs nodes delete --identifier "$id" --force >/dev/null && log "headscale: forgot the earlier node $1 (id $id)"
  done
}

headscale_user_id() {
  local id
  pick() { hs users list -o json | python3 -c 'import json,sys; print(next((str(u["id"]) for u in json.load(sys.stdin) or [] if u["name"]==sys.argv[1]), ""))' "$HEADSCALE_USER"; }
  id="$(pick)"
  if [[ -z "$id" ]]; then
    hs users create "$HEADSCALE_USER" >/dev/null
    id="$(pick)"
  fi
  [[ -n "$id" ]] || die "cannot find or create headscale user $HEADSCALE_USER"
  echo "$id"
}
