#!/bin/sh
# The relay-settings sidecar: keeps this relay's peer relay settings right for as long as it runs.
#
# Every INTERVAL_SECONDS it works out the endpoints the relay must advertise (STATIC_ENDPOINTS, else
# this pod's own Service's LoadBalancer IPs with RELAY_PORT) and compares them, and RELAY_PORT, with
# tailscaled's preferences, read from its LocalAPI over the socket the two containers share. When
# they differ (first start, a re-login that reset the preferences, a new load balancer address) it
# sets them again, as `tailscale set --relay-server-port --relay-server-static-endpoints` would.
# It is Ready (the file READY_FILE exists) only while the relay is logged in, its settings are the
# wanted ones and the relay server holds its UDP port: so the pod is Ready only when it relays.
#
# Needs a POSIX shell, kubectl and curl, and RBAC to get this pod's Service; never exec.
# Environment (set by the chart): POD_NAME, NAMESPACE, RELAY_PORT, STATIC_ENDPOINTS (comma-separated,
# empty = from the Service), TS_SOCKET, INTERVAL_SECONDS, READY_FILE; for tests: UDP_TABLES (the
# socket tables to look in, default /proc/net/udp and udp6) and MAX_PASSES (stop after that many).
set -u

# shellcheck source=relay-endpoints.sh
. "$(dirname "$0")/relay-endpoints.sh"

log() { printf '%s relay-settings: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }

# localapi PATH [CURL ARGS...]: tailscaled's LocalAPI (what the tailscale CLI talks to).
localapi() {
  path="$1"; shift
  curl --silent --show-error --max-time 10 --unix-socket "$TS_SOCKET" \
    --header 'Sec-Tailscale: localapi' "$@" "http://local-tailscaled.sock/localapi/v0/$path"
}

# JSON from the LocalAPI on one line without blanks, so sed can pick fields out of it.
compact() { tr -d ' \t\r\n'; }
json_port() { sed -n 's/.*"RelayServerPort":\([0-9]*\).*/\1/p'; }
# The endpoint list ends at the first '"]' (IPv6 literals contain ']', never '"').
json_endpoints() { sed -n 's/.*"RelayServerStaticEndpoints":\[\("[^"]*"\(,"[^"]*"\)*\)\].*/\1/p' | tr -d '"'; }

# desired_endpoints: sets $desired, or $reason and fails.
desired_endpoints() {
  if [ -n "$STATIC_ENDPOINTS" ]; then desired="$STATIC_ENDPOINTS"; return 0; fi
  if ! service_endpoints "$POD_NAME"; then
    case "$reason" in
      "cannot read Service"*) reason="$reason (a replica added outside Helm has no Service: scale with replicaCount)" ;;
    esac
    return 1
  fi
  desired="$endpoints"
}

# udp_bound PORT: some socket in this pod's network namespace holds UDP PORT (the relay server's).
udp_bound() {
  hex=$(printf ':%04X' "$1")
  # shellcheck disable=SC2086 # a list of files
  cat ${UDP_TABLES:-/proc/net/udp /proc/net/udp6} 2>/dev/null | awk -v p="$hex" '$2 ~ p"$" {found=1} END {exit !found}'
}

# json_list A,B -> "A","B"
json_list() { printf '%s' "$1" | sed 's/[^,][^,]*/"&"/g'; }

# One pass: sets $reason (empty when all is well).
reconcile() {
  reason=""
  # (curl's status, not the pipe's: compact after the answer is in)
  status=$(localapi 'status?peers=false' 2>&1) || { reason="tailscaled's LocalAPI does not answer yet: $status"; return; }
  status=$(printf '%s' "$status" | compact)
  case "$status" in
    *'"BackendState":"Running"'*) ;;
    *) reason="the relay is not logged in yet ($(printf '%s' "$status" | sed -n 's/.*"BackendState":"\([A-Za-z]*\)".*/\1/p'))"; return ;;
  esac
  desired_endpoints || return
  prefs=$(localapi prefs 2>&1) || { reason="cannot read the relay's preferences: $prefs"; return; }
  prefs=$(printf '%s' "$prefs" | compact)
  port=$(printf '%s' "$prefs" | json_port)
  stored=$(printf '%s' "$prefs" | json_endpoints)
  # tailscale stores endpoints deduplicated, IPv4 first, IPv6 canonical: compare with what it stored
  # the last time these endpoints were set, not with our spelling of them.
  if [ "$port" != "$RELAY_PORT" ] || [ "$desired" != "${applied_desired:-}" ] || [ "$stored" != "${applied_stored:-}" ]; then
    log "setting relay port $RELAY_PORT and endpoints $desired (the relay had port '${port}' endpoints '${stored}')"
    body="{\"RelayServerPortSet\":true,\"RelayServerPort\":$RELAY_PORT,\"RelayServerStaticEndpointsSet\":true,\"RelayServerStaticEndpoints\":[$(json_list "$desired")]}"
    answer=$(localapi prefs --request PATCH --header 'Content-Type: application/json' --data "$body" 2>&1 | compact)
    port=$(printf '%s' "$answer" | json_port)
    stored=$(printf '%s' "$answer" | json_endpoints)
    if [ "$port" != "$RELAY_PORT" ]; then
      reason="tailscaled refused the relay settings: $answer"
      applied_desired=""
      return
    fi
    applied_desired="$desired"; applied_stored="$stored"
  fi
  udp_bound "$RELAY_PORT" ||
    reason="the relay server does not hold UDP port $RELAY_PORT (see the relay's log for 'relayserver: error initializing server', e.g. bind: permission denied)"
}

# The script is PID 1 of its container, and PID 1 ignores the signals it has no handler for: without this trap
# SIGTERM did nothing and every relay pod stop waited out terminationGracePeriodSeconds before the SIGKILL.
# The sleeps below run in the background and are waited for, so that the trap runs at once.
sleeper=""
stop() {
  log "stopping (signal)"
  rm -f "$READY_FILE"
  [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null
  exit 0
}
trap stop TERM INT

log "relay $POD_NAME in namespace $NAMESPACE: port $RELAY_PORT, endpoints ${STATIC_ENDPOINTS:-from Service $POD_NAME}, every ${INTERVAL_SECONDS}s"
rm -f "$READY_FILE"
last="" passes=0
while :; do
  reconcile
  if [ -z "$reason" ]; then
    now="in effect: port=$RELAY_PORT endpoints=$desired stored=$stored"
    : >"$READY_FILE"
  else
    now="not ready: $reason"
    rm -f "$READY_FILE"
  fi
  # say it when it changes; the hook and helm test read the last "in effect" line
  [ "$now" = "$last" ] || log "$now"
  last="$now" passes=$((passes + 1))
  [ "$passes" != "${MAX_PASSES:-}" ] || exit 0
  # while tailscaled starts or logs in, look again soon (only its socket is asked, not the API server)
  case "$reason" in
    "tailscaled's LocalAPI"* | "the relay is not logged in"*) pause="$((INTERVAL_SECONDS < 2 ? INTERVAL_SECONDS : 2))" ;;
    *) pause="$INTERVAL_SECONDS" ;;
  esac
  sleep "$pause" &
  sleeper=$!
  wait "$sleeper"
  sleeper=""
done
