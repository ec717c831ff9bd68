package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
)

const udpHeader = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"

// socketTables writes /proc/net/udp and udp6 look-alikes with sockets on the given ports.
func socketTables(t *testing.T, v4, v6 []uint16) UDPSockets {
	dir := t.TempDir()
	write := func(name string, ports []uint16, addr string) string {
		var b strings.Builder
		b.WriteString(udpHeader)
		for i, p := range ports {
			fmt.Fprintf(&b, "%4d: %s:%04X %s:0000 07 00000000:00000000 00:00000000 00000000  1000        0 %d 2 0000000000000000 0\n",
				i, addr, p, strings.Repeat("0", len(addr)), 1000+i)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return UDPSockets{IPv4Table: write("udp", v4, "00000000"), IPv6Table: write("udp6", v6, strings.Repeat("0", 32))}
}

type fakeResolver struct {
	mu     sync.Mutex
	answer map[string][]netip.Addr
	fail   bool
	calls  int
	// nxdomain: lookups of the host that answer "no such host" before it resolves (a new cloud load balancer's
	// name); Go's resolver reports that as a *net.DNSError with IsNotFound (net/dnsclient_unix.go, errNoSuchHost)
	nxdomain map[string]int
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.fail {
		return nil, errors.New("server misbehaving")
	}
	if r.nxdomain[host] > 0 {
		r.nxdomain[host]--
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return r.answer[host], nil
}

type harness struct {
	t     *testing.T
	ts    *fakeTailscaled
	api   *fakeAPIServer
	agent *Agent
	dns   *fakeResolver
	stop  func()
	logs  *strings.Builder
}

const svcPath = "/api/v1/namespaces/relays/services/relay-0"

// startAgent runs one agent, for the whole test, against a fake tailscaled and API server.
func startAgent(t *testing.T, configure func(*Config), setup func(*harness)) *harness {
	h := &harness{t: t, ts: newFakeTailscaled(t), api: newFakeAPIServer(t), dns: &fakeResolver{answer: map[string][]netip.Addr{}}, logs: &strings.Builder{}}
	h.api.put("/api/v1/namespaces/relays/configmaps/relay-status-0", map[string]any{"metadata": map[string]any{"name": "relay-status-0"}})
	cfg := Config{Pod: "relay-0", PodUID: "uid-0", Namespace: "relays", Service: "relay-0", StatusConfigMap: "relay-status-0",
		Port: 40000, Resync: 50 * time.Millisecond, Retry: 20 * time.Millisecond, ResolveEvery: time.Hour,
		Sockets: socketTables(t, []uint16{40000}, []uint16{40000})}
	if configure != nil {
		configure(&cfg)
	}
	if setup != nil {
		setup(h)
	}
	h.agent = NewAgent(cfg, &local.Client{Socket: h.ts.socket, UseSocketOnly: true}, h.api.kube(), h.dns)
	var mu sync.Mutex
	h.agent.logf = func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(h.logs, format+"\n", args...)
	}
	h.agent.events.logf = h.agent.logf
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.agent.Run(ctx); close(done) }()
	h.stop = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			t.Fatal("the agent did not stop within 2 s of its context ending (SIGTERM)")
		}
	}
	t.Cleanup(h.stop)
	return h
}

// startRelaying starts the agent with its Service at 192.0.2.10 (and what SETUP adds after it) and waits until the
// relay advertises that address on port 40000: where most tests begin.
func startRelaying(t *testing.T, configure func(*Config), setup func(*harness)) *harness {
	t.Helper()
	h := startAgent(t, configure, func(h *harness) {
		h.api.put(svcPath, service("relay-0", "SingleStack", map[string]any{"ip": "192.0.2.10"}))
		if setup != nil {
			setup(h)
		}
	})
	h.waitRelaying("the first settings", 40000, "192.0.2.10:40000")
	return h
}

func (h *harness) waitRelaying(what string, port uint16, endpoints string) {
	h.t.Helper()
	want, err := ParseEndpoints(endpoints)
	if err != nil {
		h.t.Fatal(err)
	}
	waitFor(h.t, what, func() (bool, string) {
		gotPort, got, edits := h.ts.settings()
		st := h.agent.Current()
		return gotPort == port && SameEndpoints(got, want) && st.Ready,
			fmt.Sprintf("tailscaled has port %d endpoints %v (%d edits); agent: ready=%t %q", gotPort, got, edits, st.Ready, st.Reason)
	})
}

// waitEvents waits until the pod has an Event with each reason. The reporter posts the Events a pass queued from
// its own goroutine, after the pass: a test that sees the pass's effect (the status, a logout) cannot look for them
// at once (seen failing under qemu-aarch64, slower than the host: the logout came before its LoggingInAgain Event).
func (h *harness) waitEvents(reasons ...string) {
	h.t.Helper()
	waitFor(h.t, fmt.Sprintf("Events %v on the pod", reasons), func() (bool, string) {
		got := h.api.eventReasons()
		for _, reason := range reasons {
			if !slices.Contains(got, reason) {
				return false, fmt.Sprintf("no %s Event; Events: %v", reason, got)
			}
		}
		return true, ""
	})
}

func TestOneRunningAgentRepairsAReloginAndFollowsANewLoadBalancerAddress(t *testing.T) {
	h := startAgent(t, nil, func(h *harness) {
		h.api.put(svcPath, service("relay-0", "PreferDualStack", map[string]any{"ip": "192.0.2.10"}, map[string]any{"ip": "2001:db8::10"}))
	})
	h.waitRelaying("the first settings", 40000, "192.0.2.10:40000,[2001:db8::10]:40000")

	h.ts.relogin()
	h.waitRelaying("the settings again after a re-login reset them", 40000, "192.0.2.10:40000,[2001:db8::10]:40000")

	h.api.put(svcPath, service("relay-0", "PreferDualStack", map[string]any{"ip": "192.0.2.20"}, map[string]any{"ip": "2001:db8::20"}))
	h.waitRelaying("the load balancer's new addresses", 40000, "192.0.2.20:40000,[2001:db8::20]:40000")

	if _, _, edits := h.ts.settings(); edits != 3 {
		t.Errorf("the relay settings were written %d times, want 3 (first start, after the re-login, new address): "+
			"a pass must not rewrite settings that are in effect", edits)
	}
	waitFor(t, "the status ConfigMap to report the new endpoints", func() (bool, string) {
		st, ok := h.api.status("relay-status-0")
		return ok && st.Ready && st.PodUID == "uid-0" && slices.Equal(st.Endpoints, []string{"192.0.2.20:40000", "[2001:db8::20]:40000"}),
			fmt.Sprintf("%+v", st)
	})
	h.waitEvents("SettingsApplied", "Relaying", "EndpointsChanged")
}

func TestThroughAnAPIServerOutageTheRelayKeepsItsEndpointsAndStaysReady(t *testing.T) {
	h := startRelaying(t, nil, nil)

	h.api.setBroken(true)
	waitFor(t, "the agent to notice the API server is gone", func() (bool, string) {
		st := h.agent.Current()
		return st.APIServer != "", fmt.Sprintf("%+v", st)
	})
	// a relay that was relaying keeps doing so: readiness stays, and a re-login meanwhile is still repaired
	h.ts.relogin()
	h.waitRelaying("the settings after a re-login during the outage, from the last Service seen", 40000, "192.0.2.10:40000")
	st := h.agent.Current()
	if !st.Ready || !strings.Contains(st.APIServer, "503") {
		t.Fatalf("during the outage the relay must stay Ready and say why the API server is not answering: %+v", st)
	}

	h.api.setBroken(false)
	waitFor(t, "the agent to see the API server again and tell it what happened", func() (bool, string) {
		reasons := h.api.eventReasons()
		return slices.Contains(reasons, "APIServerUnreachable") && slices.Contains(reasons, "APIServerReachable") &&
			h.agent.Current().APIServer == "", fmt.Sprintf("Events %v, status %+v", reasons, h.agent.Current())
	})
	h.api.put(svcPath, service("relay-0", "SingleStack", map[string]any{"ip": "192.0.2.30"}))
	h.waitRelaying("a new address after the outage (the watch is back)", 40000, "192.0.2.30:40000")
}

func TestAHostnameOnlyLoadBalancerIsResolvedAndItsLastAnswerKeptWhenDNSFails(t *testing.T) {
	h := startAgent(t, func(c *Config) { c.ResolveEvery = 30 * time.Millisecond }, func(h *harness) {
		h.dns.answer["nlb.example.com"] = []netip.Addr{netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("192.0.2.5")}
		h.api.put(svcPath, service("relay-0", "PreferDualStack", map[string]any{"hostname": "nlb.example.com"}))
	})
	h.waitRelaying("the resolved addresses of both families", 40000, "192.0.2.5:40000,[2001:db8::5]:40000")

	h.dns.mu.Lock()
	h.dns.fail = true
	h.dns.mu.Unlock()
	waitFor(t, "a warning that DNS failed while the last answer is kept", func() (bool, string) {
		st := h.agent.Current()
		return st.Ready && len(st.Warnings) > 0 && strings.Contains(st.Warnings[0], "keeping its last addresses"), fmt.Sprintf("%+v", st)
	})
	h.dns.mu.Lock()
	h.dns.fail = false
	h.dns.answer["nlb.example.com"] = []netip.Addr{netip.MustParseAddr("192.0.2.6")}
	h.dns.mu.Unlock()
	h.waitRelaying("the new answer once DNS works again", 40000, "192.0.2.6:40000")
}

func TestStaticEndpointsOverrideTheService(t *testing.T) {
	h := startAgent(t, func(c *Config) {
		c.Service = ""
		c.Static, _ = ParseEndpoints("[2001:db8::1]:40000,198.51.100.1:40000")
	}, nil)
	h.waitRelaying("the static endpoints", 40000, "198.51.100.1:40000,[2001:db8::1]:40000")
}

func TestReadyNeedsTheRelayPortBoundForEachAdvertisedFamily(t *testing.T) {
	h := startAgent(t, func(c *Config) { c.Sockets = socketTables(t, []uint16{40000}, []uint16{41641}) }, func(h *harness) {
		h.api.put(svcPath, service("relay-0", "PreferDualStack", map[string]any{"ip": "192.0.2.10"}, map[string]any{"ip": "2001:db8::10"}))
	})
	waitFor(t, "the agent to say IPv6 lacks the relay port", func() (bool, string) {
		st := h.agent.Current()
		return !st.Ready && strings.Contains(st.Reason, "does not hold UDP port 40000 for IPv6"), fmt.Sprintf("%+v", st)
	})
	rec := httptest.NewRecorder()
	h.agent.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "IPv6") {
		t.Errorf("/readyz must fail naming the missing family: %d %q", rec.Code, rec.Body.String())
	}
}

func TestARequireDualStackServiceWaitsForBothFamilies(t *testing.T) {
	h := startAgent(t, nil, func(h *harness) {
		h.api.put(svcPath, service("relay-0", "RequireDualStack", map[string]any{"ip": "192.0.2.10"}))
	})
	waitFor(t, "the agent to wait for the IPv6 address", func() (bool, string) {
		st := h.agent.Current()
		return !st.Ready && strings.Contains(st.Reason, "an address of each family"), fmt.Sprintf("%+v", st)
	})
	if _, eps, _ := h.ts.settings(); eps != nil {
		t.Errorf("no endpoints may be set before the Service has both families: %v", eps)
	}
	h.api.put(svcPath, service("relay-0", "RequireDualStack", map[string]any{"ip": "192.0.2.10"}, map[string]any{"ip": "2001:db8::10"}))
	h.waitRelaying("both families", 40000, "192.0.2.10:40000,[2001:db8::10]:40000")
}

func TestAFailedLoginIsNamedFromTailscaledsHealthNotItsLog(t *testing.T) {
	h := startAgent(t, nil, func(h *harness) {
		h.api.put(svcPath, service("relay-0", "SingleStack", map[string]any{"ip": "192.0.2.10"}))
		h.ts.setState(ipn.NeedsLogin, "register request: invalid key: auth-key not found")
	})
	waitFor(t, "the status to name the login error", func() (bool, string) {
		st, _ := h.api.status("relay-status-0")
		return !st.Ready && strings.Contains(st.Reason, "auth-key not found") && st.LoginError != "", fmt.Sprintf("%+v", st)
	})
	// tailscaled restarts (containerboot exits after a failed login): the cause stays known meanwhile
	h.ts.setDown(true)
	waitFor(t, "the cause to outlive tailscaled's restart", func() (bool, string) {
		st := h.agent.Current()
		return strings.Contains(st.Reason, "not answering") && strings.Contains(st.Reason, "auth-key not found"), fmt.Sprintf("%+v", st)
	})
	h.waitEvents("LoginFailed")
	h.ts.setDown(false)
	h.ts.setState(ipn.Running, "")
	h.waitRelaying("the settings once the login works", 40000, "192.0.2.10:40000")
}

func TestTailscaledRefusingTheSettingsIsReported(t *testing.T) {
	h := startAgent(t, nil, func(h *harness) {
		h.api.put(svcPath, service("relay-0", "SingleStack", map[string]any{"ip": "192.0.2.10"}))
		// tailscaled's own refusal when a config file owns the prefs (ipn/ipnlocal/local.go L5121)
		h.ts.refuseEdit = "can't reconfigure tailscaled when using a config file; config file is locked"
	})
	waitFor(t, "the refusal in the status", func() (bool, string) {
		st := h.agent.Current()
		return !st.Ready && strings.Contains(st.Reason, "refused") && strings.Contains(st.Reason, "config file is locked"), fmt.Sprintf("%+v", st)
	})
	h.waitEvents("RefusedByTailscaled")
}

func TestARelayTheControlServerNoLongerServesLogsOutToLogInAgain(t *testing.T) {
	for _, state := range []ipn.State{ipn.Running, ipn.Starting} {
		t.Run("while "+state.String(), func(t *testing.T) { testRelogin(t, state) })
	}
}

// testRelogin: the node deleted while tailscaled runs (Running, the map poll ends) or before it restarts (Starting:
// it has a node key, and control refuses its map requests).
func testRelogin(t *testing.T, state ipn.State) {
	control := fakeControl(t, nil)
	h := startRelaying(t, func(c *Config) { c.LoginServer = control; c.ReloginAfter = 200 * time.Millisecond }, nil)
	h.ts.setMapPoll(false) // the node was deleted: every map request is refused
	h.ts.setState(state, "")
	waitFor(t, "a logout, which makes containerboot restart tailscaled and log in with the auth key", func() (bool, string) {
		h.ts.mu.Lock()
		defer h.ts.mu.Unlock()
		return h.ts.logouts == 1, fmt.Sprintf("%d logouts; agent %+v", h.ts.logouts, h.agent.Current())
	})
	h.waitEvents("LoggingInAgain")
	// logged in again as a new node: the settings are set on it
	h.ts.setMapPoll(true)
	h.ts.relogin()
	h.waitRelaying("the settings on the new login", 40000, "192.0.2.10:40000")
}

func TestAControlServerOutageIsNoReasonToLogOut(t *testing.T) {
	control := fakeControl(t, &atomic.Bool{}) // down
	h := startRelaying(t, func(c *Config) { c.LoginServer = control; c.ReloginAfter = 100 * time.Millisecond }, nil)
	h.ts.setMapPoll(false)
	time.Sleep(600 * time.Millisecond)
	h.ts.mu.Lock()
	logouts := h.ts.logouts
	h.ts.mu.Unlock()
	if logouts != 0 || !h.agent.Current().Ready {
		t.Fatalf("with the control server down the relay must keep relaying on its last network map: %d logouts, %+v",
			logouts, h.agent.Current())
	}
}
