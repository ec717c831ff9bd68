#!/bin/sh
# Checks, after every install, upgrade and rollback (mode "apply", the hook Job) and in helm test
# (mode "verify"), that every replica relays with the release's settings. The relay-settings
# sidecar in each relay pod applies them and keeps them right; this script is what makes a wrong
# release fail loudly, naming what it waited for. Needs only a POSIX shell and kubectl, and RBAC to
# get the relay's own pods, their logs, Services and StatefulSet: no exec.
#
# Environment (set by the chart): NAMESPACE, FULLNAME, REPLICAS, RELAY_PORT, STATIC_ENDPOINTS
# (comma-separated, empty = discover from each replica's LoadBalancer Service), TIMEOUT_SECONDS,
# CONTAINER (the relay container), SIDECAR (the relay-settings container).
set -eu
# shellcheck source=relay-endpoints.sh
. "$(dirname "$0")/relay-endpoints.sh"

mode="${1:-apply}"
case "$mode" in
  apply | verify) ;;
  *) echo "usage: $0 apply|verify" >&2; exit 2 ;;
esac

deadline=$(($(date +%s) + TIMEOUT_SECONDS))

log() { printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$mode" "$*"; }
fail() { log "FAILED: $*"; exit 1; }

# wait_until DESCRIPTION COMMAND...: retries COMMAND until it succeeds or the deadline passes.
wait_until() {
  what="$1"; shift
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      cause=""
      timeout_hint
      fail "timed out after ${TIMEOUT_SECONDS}s waiting for $what${cause:+; the relay says: $cause}"
    fi
    sleep 2
  done
}

# Extra detail for a timeout, redefined by the step that is waiting.
# shellcheck disable=SC2329 # called by wait_until
timeout_hint() { :; }

k() { kubectl --namespace "$NAMESPACE" "$@"; }

# Sorted, lower-case, one per line: the form in which endpoint lists are compared.
normalize() { printf '%s\n' "$1" | tr ',' '\n' | tr '[:upper:]' '[:lower:]' | sed '/^$/d' | sort; }

statefulset_observed() {
  out=$(k get statefulset "$FULLNAME" \
    -o jsonpath='{.metadata.generation} {.status.observedGeneration} {.status.updateRevision}' 2>/dev/null) || return 1
  # shellcheck disable=SC2086 # split the jsonpath answer into words
  set -- $out
  [ "$#" -eq 3 ] && [ "$1" = "$2" ] && revision="$3"
}

# relay_ready POD: the relay container is Ready (logged in to the tailnet), the pod is not terminating,
# and it runs the StatefulSet's current revision, so an upgrade is checked on the new pod, not on the
# one being replaced. (The pod itself is Ready only once the sidecar has the settings in effect.)
relay_ready() {
  out=$(k get pod "$1" -o jsonpath="{.metadata.labels.controller-revision-hash} {.status.containerStatuses[?(@.name==\"$CONTAINER\")].ready} {.metadata.deletionTimestamp}" 2>/dev/null) || return 1
  # shellcheck disable=SC2086 # split the jsonpath answer into words
  set -- $out
  [ "$#" -eq 2 ] && [ "$1" = "$revision" ] && [ "$2" = "true" ]
}

# Shows the end of the relay's log and picks its last complaint (a bad auth key, say) as the cause.
pod_log_hint() {
  relay_log=$(k logs "$pod" -c "$CONTAINER" --tail=40 2>&1) || true
  log "last lines of the relay log of $pod:"
  printf '%s\n' "$relay_log" | grep -v RATELIMIT | tail -n 15 | sed 's/^/    /'
  cause=$(printf '%s\n' "$relay_log" | grep -v RATELIMIT |
    grep -iE 'error|invalid|denied|not found|expired|unauthori[sz]ed|forbidden|failed' | tail -n 1 |
    sed -E 's/^[0-9]{4}\/[0-9]{2}\/[0-9]{2} [0-9:.]+ //') || true
}

# service_endpoints (relay-endpoints.sh), except that hostname-only load balancers fail at once.
lb_endpoints() {
  service_endpoints "$1" && return 0
  [ "$hostnames_only" = no ] || fail "$reason"
  return 1
}

# sidecar_confirms: the relay-settings sidecar's latest report is "in effect" with $RELAY_PORT and $endpoints.
sidecar_confirms() {
  report=$(k logs "$pod" -c "$SIDECAR" --tail=400 2>/dev/null | grep -E 'relay-settings: (in effect|not ready):' | tail -n 1) || return 1
  case "$report" in
    *"relay-settings: in effect: "*) ;;
    *) return 1 ;;
  esac
  got_port=$(printf '%s\n' "$report" | sed -n 's/.* port=\([0-9]*\) .*/\1/p')
  got_endpoints=$(printf '%s\n' "$report" | sed -n 's/.* endpoints=\([^ ]*\) .*/\1/p')
  [ "$got_port" = "$RELAY_PORT" ] && [ "$(normalize "$got_endpoints")" = "$(normalize "$endpoints")" ]
}

# The sidecar's last complaint, as the cause of a timeout.
sidecar_hint() {
  log "last report of the relay-settings sidecar of $pod: ${report:-none}"
  cause=$(printf '%s\n' "${report:-}" | sed -n 's/.*relay-settings: not ready: //p')
}

log "release $FULLNAME in namespace $NAMESPACE: $REPLICAS replica(s), relay port $RELAY_PORT, timeout ${TIMEOUT_SECONDS}s"
timeout_hint() { log "the StatefulSet controller has not reported the current revision of $FULLNAME"; }
wait_until "StatefulSet $FULLNAME to report its current revision" statefulset_observed

i=0
while [ "$i" -lt "$REPLICAS" ]; do
  pod="$FULLNAME-$i"
  service="$FULLNAME-$i"

  log "waiting for relay pod $pod (revision $revision) to be Ready"
  timeout_hint() { pod_log_hint; }
  wait_until "relay pod $pod to be Ready and logged in to the tailnet (kubectl describe pod $pod; kubectl logs $pod)" relay_ready "$pod"

  if [ -n "$STATIC_ENDPOINTS" ]; then
    endpoints="$STATIC_ENDPOINTS"
    log "$pod: using relay.staticEndpoints $endpoints"
  else
    log "$pod: waiting for Service $service to get a load balancer address"
    timeout_hint() { log "Service $service status: $(k get service "$service" -o jsonpath='{.status}' 2>&1)"; }
    wait_until "Service $service to get a LoadBalancer address (is a load balancer controller serving it? see kubectl describe service $service)" lb_endpoints "$service"
    log "$pod: discovered endpoints $endpoints from Service $service"
  fi

  log "$pod: waiting for the relay-settings sidecar to report port $RELAY_PORT and endpoints $endpoints in effect"
  report=""
  timeout_hint() { sidecar_hint; }
  wait_until "the relay-settings sidecar of $pod to put port $RELAY_PORT and endpoints $endpoints in effect (kubectl logs $pod -c $SIDECAR)" sidecar_confirms
  log "$pod: relaying on port $got_port with endpoints $got_endpoints"
  i=$((i + 1))
done

log "all $REPLICAS relay(s) relaying"
