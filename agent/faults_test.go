package main

// Faults of the relay's dependencies as production has them: an API server that drops packets, a status ConfigMap
// replaced from outside, a proxy that cuts watches, a control server outage longer than the re-login window, a
// tailnet that disables the relay server, Events that repeat.

import (
	"context"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/health"
	"tailscale.com/ipn"
)

func TestABlackHoledAPIServerNeitherDelaysNorFailsAPass(t *testing.T) {
	h := startRelaying(t, nil, nil)
	// A re-login itself can make one pass unready (tailscaled resets the port between the agent's apply and verify);
	// what must not happen is a pass that fails because it waited: a LocalAPI call whose time ran out.
	var unready atomic.Value
	stopWatching := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopWatching:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if st := h.agent.Current(); !st.Ready && strings.Contains(st.Reason, "deadline exceeded") {
				unready.CompareAndSwap(nil, st.Reason)
			}
		}
	}()
	// The API server drops every packet: each request hangs until the agent gives up (20 s). Two re-logins
	// meanwhile (each queues a SettingsApplied Event) are both repaired at once, and the relay stays Ready.
	h.api.stall()
	t.Cleanup(func() { h.api.unstall() }) // a failure below must not leave requests hanging for the cleanups
	h.ts.relogin()
	h.waitRelaying("the settings after a re-login while the API server is black-holed", 40000, "192.0.2.10:40000")
	time.Sleep(100 * time.Millisecond)
	h.ts.relogin()
	h.waitRelaying("the settings after a second re-login while the API server is black-holed", 40000, "192.0.2.10:40000")
	close(stopWatching)
	if reason := unready.Load(); reason != nil {
		t.Fatalf("a pass failed for want of time while only the API server was black-holed: %v", reason)
	}
	// once the API server answers: what waited is sent, and a new load balancer address is followed
	h.api.unstall()
	waitFor(t, "the Events queued during the black hole", func() (bool, string) {
		n := 0
		for _, r := range h.api.eventReasons() {
			if r == "SettingsApplied" {
				n++
			}
		}
		return n >= 1, fmt.Sprintf("%v", h.api.eventReasons())
	})
	h.api.put(svcPath, service("relay-0", "SingleStack", map[string]any{"ip": "192.0.2.40"}))
	h.waitRelaying("the new address once the API server answers", 40000, "192.0.2.40:40000")
}

func TestAStatusConfigMapReplacedFromOutsideIsWrittenAgainWithinAResync(t *testing.T) {
	h := startRelaying(t, nil, nil)
	waitFor(t, "the status ConfigMap to say Ready", func() (bool, string) {
		st, ok := h.api.status("relay-status-0")
		return ok && st.Ready, fmt.Sprintf("%+v", st)
	})
	// kubectl replace, helm upgrade --force, Argo CD Replace=true: the chart's empty ConfigMap again
	h.api.put("/api/v1/namespaces/relays/configmaps/relay-status-0", map[string]any{"metadata": map[string]any{"name": "relay-status-0"}})
	waitFor(t, "the status written again although the relay's status did not change", func() (bool, string) {
		st, ok := h.api.status("relay-status-0")
		return ok && st.Ready && st.PodUID == "uid-0", fmt.Sprintf("present %t: %+v", ok, st)
	})
}

func TestTheStatusListsTailscaledsWarningsInAFixedOrder(t *testing.T) {
	h := startRelaying(t, nil, func(h *harness) {
		h.ts.health = map[health.WarnableCode]health.UnhealthyState{}
		for _, code := range []string{"c", "a", "d", "b"} {
			h.ts.health[health.WarnableCode(code)] = health.UnhealthyState{WarnableCode: health.WarnableCode(code), Text: "warning " + code}
		}
	})
	// a pass every 50 ms: 40 passes, each of which would list a map's warnings in a random order
	want := []string{"warning a", "warning b", "warning c", "warning d"}
	// from the first pass that has them: the IPN bus watch brings tailscaled's health, maybe after the first passes
	// (seen under qemu-aarch64, slower than the host)
	waitFor(t, "the status to list the warnings", func() (bool, string) {
		st := h.agent.Current()
		return len(st.Warnings) == len(want), fmt.Sprintf("%q", st.Warnings)
	})
	for range 200 {
		if st := h.agent.Current(); !slices.Equal(st.Warnings, want) {
			t.Fatalf("the status lists the warnings as %q, want %q: an order that changes rewrites the status ConfigMap",
				st.Warnings, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAWatchThatTheServerEndsAtOnceIsStartedAgainAfterAPause(t *testing.T) {
	h := startRelaying(t, nil, func(h *harness) {
		h.api.cutWatch = true
	})
	time.Sleep(1500 * time.Millisecond)
	// pauses of 1 s, then 2 s: a get at 0 s and one at 1 s; without pauses, hundreds
	if n := h.api.gets(svcPath); n > 3 {
		t.Fatalf("the Service was read %d times in 1.5 s: a watch cut at once must be restarted after a pause, not at once", n)
	}
}

func TestTheStatusNamesATailnetThatDisablesTheRelayServer(t *testing.T) {
	h := startAgent(t, nil, func(h *harness) {
		h.api.put(svcPath, service("relay-0", "SingleStack", map[string]any{"ip": "192.0.2.10"}))
		h.ts.relayDisabled = true
	})
	waitFor(t, "the status to name the node attribute", func() (bool, string) {
		st := h.agent.Current()
		return !st.Ready && strings.Contains(st.Reason, "disable-relay-server") && strings.Contains(st.Reason, "nodeAttrs"),
			fmt.Sprintf("%+v", st)
	})
}

func TestRepeatedEventsUpdateOneObjectAndNewObjectsAreCappedPerMinute(t *testing.T) {
	api := newFakeAPIServer(t)
	var mu sync.Mutex
	now := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e := &Events{kube: api.kube(), cfg: Config{Pod: "relay-0", PodUID: "uid-0", Namespace: "relays"}, now: clock,
		logf: func(string, ...any) {}}
	ctx := context.Background()
	for range 5 {
		e.Queue("Warning", "NotRelaying", "the relay server does not hold UDP port 40000 for IPv6")
		e.Flush(ctx)
	}
	if n := len(api.eventReasons()); n != 1 {
		t.Fatalf("5 identical Events made %d objects, want 1 with count 5", n)
	}
	api.mu.Lock()
	count := api.events[0]["count"]
	api.mu.Unlock()
	if fmt.Sprint(count) != "5" {
		t.Fatalf("the Event's count is %v, want 5", count)
	}
	// a flapping message (a DNS answer that rotates): new objects, at most maxNewPerMinute a minute
	for i := range 15 {
		e.Queue("Normal", "EndpointsChanged", fmt.Sprintf("endpoints 192.0.2.%d:40000", i))
	}
	e.Flush(ctx)
	if n, dropped := len(api.eventReasons()), e.Dropped(); n != maxNewPerMinute || dropped != 16-maxNewPerMinute {
		t.Fatalf("%d objects and %d dropped after 16 distinct Events in a minute; want %d and %d", n, dropped,
			maxNewPerMinute, 16-maxNewPerMinute)
	}
	mu.Lock()
	now = now.Add(61 * time.Second)
	mu.Unlock()
	e.Queue("Normal", "Relaying", "port 40000, endpoints 192.0.2.99:40000")
	e.Flush(ctx)
	if n := len(api.eventReasons()); n != maxNewPerMinute+1 {
		t.Fatalf("a minute later a new Event must be created: %d objects", n)
	}
}

func TestEventsTheAPIServerDoesNotTakeAreBoundedAndTheDropsCounted(t *testing.T) {
	api := newFakeAPIServer(t)
	api.setBroken(true)
	e := &Events{kube: api.kube(), cfg: Config{Pod: "relay-0", Namespace: "relays"}, now: time.Now, logf: func(string, ...any) {}}
	for i := range maxPending + 5 {
		e.Queue("Normal", "EndpointsChanged", fmt.Sprintf("endpoints %d", i))
		e.Flush(context.Background())
	}
	if e.Dropped() != 5 {
		t.Fatalf("%d Events dropped, want the 5 oldest", e.Dropped())
	}
	api.setBroken(false)
	e.Flush(context.Background())
	reasons := api.eventReasons()
	api.mu.Lock()
	first := api.events[0]["message"]
	api.mu.Unlock()
	if len(reasons) != maxNewPerMinute || first != "endpoints 5" {
		t.Fatalf("after the outage: %d Events, first %q; want %d from the oldest kept (endpoints 5)", len(reasons), first, maxNewPerMinute)
	}
}

// The re-login window's edge, on a fake clock: after a control server outage of 4 minutes the map poll is still in
// tailscaled's retry back-off (util/backoff/backoff.go L63-66: min(n²·10 ms, 30 s) times 0.5-1.5, the cap set in
// control/controlclient/auto.go L588: up to 45 s) while /key already answers. No logout until the poll has been
// down for PollBackoff with control answering all along.
func TestAControlServerBackFromAnOutageGivesTheMapPollItsWholeBackoff(t *testing.T) {
	var controlUp atomic.Bool
	control := fakeControl(t, &controlUp)
	ts := newFakeTailscaled(t)
	ts.setMapPoll(false) // the poll broke when the control server went away
	cfg := Config{Pod: "relay-0", Namespace: "relays", LoginServer: control, ReloginAfter: 30 * time.Second,
		PollBackoff: 45 * time.Second}
	a := NewAgent(cfg, &local.Client{Socket: ts.socket, UseSocketOnly: true}, newFakeAPIServer(t).kube(), &fakeResolver{})
	a.logf = func(string, ...any) {}
	start := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	now := start
	a.now = func() time.Time { return now }
	ctx := context.Background()
	pass := func(at time.Duration) (string, int) {
		now = start.Add(at)
		reason := a.checkControl(ctx)
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return reason, ts.logouts
	}
	for at := time.Duration(0); at < 4*time.Minute; at += 30 * time.Second {
		if reason, logouts := pass(at); logouts != 0 {
			t.Fatalf("logged out during the control server's outage (at %s): %s", at, reason)
		}
	}
	controlUp.Store(true)
	for _, at := range []time.Duration{240 * time.Second, 270 * time.Second, 284 * time.Second} {
		if reason, logouts := pass(at); logouts != 0 {
			t.Fatalf("logged out %s after the control server came back, while the map poll may still be in its "+
				"back-off (up to 45 s): %s", at-240*time.Second, reason)
		}
	}
	// tailscaled's LocalAPI not answering starts the clock again too
	ts.setDown(true)
	pass(285 * time.Second)
	ts.setDown(false)
	for _, at := range []time.Duration{320 * time.Second, 364 * time.Second} {
		if reason, logouts := pass(at); logouts != 0 {
			t.Fatalf("logged out %s after tailscaled answered again: %s", at-320*time.Second, reason)
		}
	}
	// down for the back-off and ReloginAfter with control answering all along: control refuses this node
	if reason, logouts := pass(366 * time.Second); logouts != 1 || !strings.Contains(reason, "logging out") {
		t.Fatalf("the map poll was down 46 s with control answering: want one logout, got %d (%q)", logouts, reason)
	}
}

func TestAControlServerBehindAPrivateCAIsTrustedWithLoginServerCA(t *testing.T) {
	control := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"publicKey":"mkey:00"}`)
	}))
	defer control.Close()
	ctx := context.Background()
	without := NewAgent(Config{LoginServer: control.URL}, nil, nil, &fakeResolver{})
	if err := without.controlAnswers(ctx); err == nil || !strings.Contains(without.controlTrust, "agent.loginServerCA") {
		t.Fatalf("a control server whose CA is not trusted must be named, with the value to set: %v, %q", err, without.controlTrust)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: control.Certificate().Raw})
	with := NewAgent(Config{LoginServer: control.URL, LoginServerCA: ca}, nil, nil, &fakeResolver{})
	if err := with.controlAnswers(ctx); err != nil || with.controlTrust != "" {
		t.Fatalf("with its CA in agent.loginServerCA the control server must be trusted: %v, %q", err, with.controlTrust)
	}
}

// A tailscale container crash-looping (containerboot restarting tailscaled, each time Starting with its node key and
// no map poll yet) for longer than ReloginAfter is no evidence against the node: tailscaled not answering starts
// the clock again.
func TestACrashLoopingTailscaledLongerThanTheReloginWindowIsNotLoggedOut(t *testing.T) {
	control := fakeControl(t, nil)
	h := startRelaying(t, func(c *Config) { c.LoginServer = control; c.ReloginAfter = 300 * time.Millisecond }, nil)
	h.ts.setMapPoll(false)
	for range 8 { // 1.6 s: more than five re-login windows
		h.ts.setDown(true)
		time.Sleep(100 * time.Millisecond)
		h.ts.setDown(false)
		h.ts.setState(ipn.Starting, "")
		time.Sleep(100 * time.Millisecond)
	}
	h.ts.mu.Lock()
	logouts := h.ts.logouts
	h.ts.mu.Unlock()
	h.ts.setMapPoll(true)
	if logouts != 0 {
		t.Fatalf("a crash loop of tailscaled logged the relay out %d times:\n%s", logouts, h.logs.String())
	}
	h.ts.setState(ipn.Running, "")
	h.waitRelaying("relaying once tailscaled runs again", 40000, "192.0.2.10:40000")
}

// tailscaled's LocalAPI stuck behind a state write (an API server that drops packets holds tailscaled's lock) while
// the relay server keeps its port: the relay stays Ready, with a warning, for up to busyGrace; a relay whose port
// is gone meanwhile is not Ready.
func TestARelayWhoseTailscaledIsBusyButWhosePortIsBoundStaysReady(t *testing.T) {
	h := startRelaying(t, func(c *Config) { c.LocalAPITimeout = 100 * time.Millisecond }, nil)
	h.ts.setBusy(true)
	t.Cleanup(func() { h.ts.setBusy(false) })
	waitFor(t, "a warning that tailscaled does not answer in time", func() (bool, string) {
		st := h.agent.Current()
		return len(st.Warnings) > 0 && strings.Contains(st.Warnings[0], "does not answer in time"), fmt.Sprintf("%+v", st)
	})
	for range 20 {
		if st := h.agent.Current(); !st.Ready {
			t.Fatalf("a busy tailscaled whose relay port is still bound made the relay unready: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// the relay server's socket gone (tailscaled died in its lock, say): not Ready
	for _, table := range []string{h.agent.cfg.Sockets.IPv4Table, h.agent.cfg.Sockets.IPv6Table} {
		if err := os.WriteFile(table, []byte(udpHeader), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "not ready once the port is no longer bound", func() (bool, string) {
		st := h.agent.Current()
		return !st.Ready && strings.Contains(st.Reason, "deadline exceeded"), fmt.Sprintf("%+v", st)
	})
}

// A node control refuses, whose tailscaled retries its map request often: the agent's passes (which tailscaled's
// notifications trigger) may each sample a retry in flight, which the active-requests gauge counts. The streaming
// request counter growing between passes tells it from an open stream (seen on kind: the gauge alone kept a deleted
// node from being logged out for over two minutes).
func TestARetryLoopSampledInFlightIsNotALiveMapPoll(t *testing.T) {
	control := fakeControl(t, nil)
	h := startRelaying(t, func(c *Config) { c.LoginServer = control; c.ReloginAfter = 200 * time.Millisecond }, nil)
	h.ts.mu.Lock()
	h.ts.retrying = true
	h.ts.mu.Unlock()
	waitFor(t, "a logout of the node whose map requests control refuses", func() (bool, string) {
		h.ts.mu.Lock()
		defer h.ts.mu.Unlock()
		return h.ts.logouts == 1, fmt.Sprintf("%d logouts; agent %+v", h.ts.logouts, h.agent.Current())
	})
}

// A proxy in front of the control server that cuts long polls (an idle timeout shorter than control's keep-alives)
// makes tailscaled open a new streaming map request between two passes, each answered: that node is served, and
// must not be logged out.
func TestAStreamAProxyCutsBetweenPassesIsALiveMapPoll(t *testing.T) {
	control := fakeControl(t, nil)
	h := startRelaying(t, func(c *Config) { c.LoginServer = control; c.ReloginAfter = 100 * time.Millisecond }, nil)
	h.ts.mu.Lock()
	h.ts.reconnecting = true
	reads := h.ts.metricsReads
	h.ts.mu.Unlock()
	// passes every 50 ms (Resync): 20 of them span the agent's window (100 ms) many times over
	waitFor(t, "20 passes with the map poll reconnecting between them, and no logout", func() (bool, string) {
		h.ts.mu.Lock()
		defer h.ts.mu.Unlock()
		if h.ts.logouts != 0 {
			t.Fatalf("a node whose map poll control answers was logged out (%d logouts) after %d passes",
				h.ts.logouts, h.ts.metricsReads-reads)
		}
		return h.ts.metricsReads >= reads+20, fmt.Sprintf("%d passes", h.ts.metricsReads-reads)
	})
}
