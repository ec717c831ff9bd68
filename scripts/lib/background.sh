# shellcheck shell=bash
# A step that runs in the background while the rest goes on, and writes what it is doing to a JSON state file that
# tests and scripts wait on (sourced, not run). Used by scripts/images/gitops (Flux and Argo CD) and
# scripts/install-tools (the tools only a few tests need).
#   {"state": "running"|"ready"|"failed", "pid": N, "log": PATH, "since": UNIX TIME, "detail": TEXT, "run": TEXT, ...}
# "run" is what the step's command line contains (tests/support/background.py: a "running" state whose process has
# another command line is dead). The caller sets, before it calls these:
#   BACKGROUND_STATE  the state file          BACKGROUND_LOG  the log of a background run
#   BACKGROUND_RUN    the words that start the run, e.g. "images/gitops run"
#   BACKGROUND_EXTRA  optional: more JSON members for the state, e.g. '"tools": ["cosign"]'
# and defines log and die.

# background_write_state STATE PID DETAIL: replaced in one rename, so a reader never sees half a file
background_write_state() {
  local detail="${3//\\/\\\\}"
  detail="${detail//\"/\\\"}"
  mkdir -p "$(dirname "$BACKGROUND_STATE")"
  printf '{"state": "%s", "pid": %d, "log": "%s", "since": %d, "detail": "%s", "run": "%s"%s}\n' \
    "$1" "$2" "$BACKGROUND_LOG" "$(date +%s)" "$detail" "$BACKGROUND_RUN" "${BACKGROUND_EXTRA:+, $BACKGROUND_EXTRA}" \
    >"$BACKGROUND_STATE.tmp.$$"
  mv "$BACKGROUND_STATE.tmp.$$" "$BACKGROUND_STATE"
}

# background_running_pid: the pid of a background run that is still running, if any. A state that says running
# with pid 0 is a run that has just started and not yet written its own pid: it gets 30 s to.
background_running_pid() {
  local pid tries=0
  while true; do
    [[ -f "$BACKGROUND_STATE" ]] && grep -q '"state": "running"' "$BACKGROUND_STATE" || return 1
    pid="$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' "$BACKGROUND_STATE")"
    [[ "$pid" == 0 && $tries -lt 300 ]] || break
    sleep 0.1
    tries=$((tries + 1))
  done
  [[ -n "$pid" && "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$BACKGROUND_RUN"* ]] && echo "$pid"
}

# background_start COMMAND...: runs COMMAND (which must call background_begin) in its own process group at the lowest
# CPU priority, so it takes only the CPU the rest leaves idle; returns at once. Nothing happens if a run is going on.
background_start() {
  local pid
  if pid="$(background_running_pid)"; then
    log "a background run is going on (pid $pid, log $BACKGROUND_LOG)"
    return 0
  fi
  mkdir -p "$(dirname "$BACKGROUND_LOG")"
  # the state exists before this returns (a test started right after must not find the previous run's); the run
  # writes its own pid into it at once
  background_write_state running 0 "starting"
  # setsid: its own process group, which background_stop signals whole (go build's children included). A new
  # session is also a new scheduler autogroup (kernel.sched_autogroup_enabled), where nice only ranks the group's own
  # processes against each other: the group's nice (/proc/self/autogroup) is what puts it below everything else.
  setsid sh -c 'echo 19 >/proc/self/autogroup 2>/dev/null; exec nice -n 19 "$@"' background "$@" \
    >"$BACKGROUND_LOG" 2>&1 </dev/null &
  log "started in the background (pid $!, log $BACKGROUND_LOG, state $BACKGROUND_STATE)"
}

# background_stop: SIGTERM to a background run's process group, and waits up to 30 s for it to end
background_stop() {
  local pid
  if pid="$(background_running_pid)"; then
    log "stopping the background run (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 30); do [[ -d "/proc/$pid" ]] || break; sleep 1; done
  fi
}

# what a run is doing, for its state and for the exit trap
background_step="starting"
# background_at STEP: what the run does now, in its state
background_at() { background_step="$1"; background_write_state running $$ "$background_step"; }
# background_begin: in the run itself. Any failure (a failed step, a die, a stop) leaves "failed" and what it was
# doing, for the waiters to show.
background_on_exit() {
  local code=$?
  [[ $code -eq 0 ]] || background_write_state failed $$ "$background_step: failed (exit $code); see $BACKGROUND_LOG"
}
background_begin() {
  trap background_on_exit EXIT
  # background_stop signals the whole process group: the step running now ends too, then this trap
  trap 'background_step="stopped by SIGTERM during: $background_step"; exit 143' TERM
  background_at "starting"
}
# background_ready DETAIL: the run is done
background_ready() { background_write_state ready $$ "$1"; }
