#!/bin/sh
# Applies (mode "apply", the post-install/post-upgrade hook) or checks (mode "verify", helm test)
# the peer relay settings of every replica. Needs only a POSIX shell and kubectl, and RBAC limited
# to the relay's own pods, Services and StatefulSet.
#
# Environment (set by the chart): NAMESPACE, FULLNAME, REPLICAS, RELAY_PORT, STATIC_ENDPOINTS
# (comma-separated, empty = discover from each replica's LoadBalancer Service), TIMEOUT_SECONDS,
# TS_SOCKET (tailscaled's socket inside the relay container), CONTAINER (the relay container).
set -eu

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

# in_relay POD ARGS...: runs the tailscale CLI inside the relay container of POD.
in_relay() {
  pod="$1"; shift
  k exec "$pod" -c "$CONTAINER" -- tailscale --socket="$TS_SOCKET" "$@"
}

# Sorted, lower-case, one per line: the form in which endpoint lists are compared.
normalize() { printf '%s\n' "$1" | tr ',' '\n' | tr '[:upper:]' '[:lower:]' | sed '/^$/d' | sort; }

statefulset_observed() {
  out=$(k get statefulset "$FULLNAME" \
    -o jsonpath='{.metadata.generation} {.status.observedGeneration} {.status.updateRevision}' 2>/dev/null) || return 1
  # shellcheck disable=SC2086 # split the jsonpath answer into words
  set -- $out
  [ "$#" -eq 3 ] && [ "$1" = "$2" ] && revision="$3"
}

# pod_ready POD: Ready, not terminating, and running the StatefulSet's current revision,
# so an upgrade is applied to the new pod, not to the one being replaced.
pod_ready() {
  out=$(k get pod "$1" -o jsonpath='{.metadata.labels.controller-revision-hash} {.status.conditions[?(@.type=="Ready")].status} {.metadata.deletionTimestamp}' 2>/dev/null) || return 1
  # shellcheck disable=SC2086 # split the jsonpath answer into words
  set -- $out
  [ "$#" -eq 2 ] && [ "$1" = "$revision" ] && [ "$2" = "True" ]
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

# service_endpoints SERVICE: sets $endpoints from the LoadBalancer ingress IPs, both families.
service_endpoints() {
  ips=$(k get service "$1" -o jsonpath='{range .status.loadBalancer.ingress[*]}{.ip}{" "}{end}' 2>/dev/null) || return 1
  names=$(k get service "$1" -o jsonpath='{range .status.loadBalancer.ingress[*]}{.hostname}{" "}{end}' 2>/dev/null) || return 1
  if [ -z "${ips# }" ] && [ -n "${names# }" ]; then
    fail "Service $1 got only hostnames ($names) from its load balancer; a relay advertises IP addresses: set relay.staticEndpoints"
  fi
  [ -n "${ips# }" ] || return 1
  policy=$(k get service "$1" -o jsonpath='{.spec.ipFamilyPolicy}')
  have_v4=no; have_v6=no; endpoints=""
  for ip in $ips; do
    case "$ip" in
      *:*) endpoints="$endpoints,[$ip]:$RELAY_PORT"; have_v6=yes ;;
      *) endpoints="$endpoints,$ip:$RELAY_PORT"; have_v4=yes ;;
    esac
  done
  endpoints="${endpoints#,}"
  # A RequireDualStack Service is not done until it has an address of each family.
  [ "$policy" != "RequireDualStack" ] || { [ "$have_v4" = yes ] && [ "$have_v6" = yes ]; }
}

settings_match() {
  got_port=$(in_relay "$pod" get relay-server-port) || return 1
  got_endpoints=$(in_relay "$pod" get relay-server-static-endpoints) || return 1
  [ "$got_port" = "$RELAY_PORT" ] && [ "$(normalize "$got_endpoints")" = "$(normalize "$endpoints")" ]
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
  wait_until "relay pod $pod to be Ready and logged in to the tailnet (kubectl describe pod $pod; kubectl logs $pod)" pod_ready "$pod"

  if [ -n "$STATIC_ENDPOINTS" ]; then
    endpoints="$STATIC_ENDPOINTS"
    log "$pod: using relay.staticEndpoints $endpoints"
  else
    log "$pod: waiting for Service $service to get a load balancer address"
    timeout_hint() { log "Service $service status: $(k get service "$service" -o jsonpath='{.status}' 2>&1)"; }
    wait_until "Service $service to get a LoadBalancer address (is a load balancer controller serving it? see kubectl describe service $service)" service_endpoints "$service"
    log "$pod: discovered endpoints $endpoints from Service $service"
  fi

  if [ "$mode" = apply ]; then
    if settings_match; then
      log "$pod: already relaying on port $RELAY_PORT with endpoints $endpoints; nothing to change"
    else
      log "$pod: running tailscale set --relay-server-port=$RELAY_PORT --relay-server-static-endpoints=$endpoints"
      in_relay "$pod" set --relay-server-port="$RELAY_PORT" --relay-server-static-endpoints="$endpoints" ||
        fail "$pod: tailscale set was refused (see the message above)"
    fi
  fi

  if ! settings_match; then
    fail "$pod: relay settings are port '${got_port:-}' endpoints '${got_endpoints:-}', expected port '$RELAY_PORT' endpoints '$endpoints' (write IPv6 addresses in canonical RFC 5952 form)"
  fi
  log "$pod: relay settings confirmed: port $got_port, endpoints $got_endpoints"
  i=$((i + 1))
done

log "all $REPLICAS relay(s) configured"
