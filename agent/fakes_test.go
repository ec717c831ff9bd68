package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tailscale.com/health"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/net/udprelay/status"
	"tailscale.com/tailcfg"
	"tailscale.com/tailcfg/nodecap"
	"tailscale.com/tailcfg/peercap"
	"tailscale.com/types/key"
	"tailscale.com/types/views"
)

// fakeTailscaled serves a LocalAPI on a unix socket that behaves like tailscaled 1.104.7's on the points the agent
// relies on (lines are tailscale.com v1.104.7's):
//   - status: BackendState, and Self's CapMap from the self node's (ipn/ipnlocal/local.go L1572-1592);
//   - prefs: GET, and PATCH of MaskedPrefs where only the fields marked Set change; a refusal is 400 with a JSON
//     {"error"} body (ipn/localapi/localapi.go L1036-1041), e.g. a locked config file (local.go L5119-5122);
//     nothing in EditPrefs checks the relay attribute, so a relay disabled by the tailnet takes the port
//     (local.go L5119-5146 checkPrefsLocked);
//   - debug-peer-relay-sessions: UDPPort is the configured port while the server runs, null when no port is set or
//     the tailnet disables the server (feature/relayserver/relayserver.go L189-191, L259-271);
//   - the IPN bus (initial state, prefs and health, then a Notify on every change), metrics (clientmetrics text),
//     logout (NeedsLogin).
//
// relogin() does what a fresh `tailscale up` does to the relay settings: resets them.
type fakeTailscaled struct {
	t      *testing.T
	socket string

	mu         sync.Mutex
	state      ipn.State
	prefs      ipn.Prefs
	health     map[health.WarnableCode]health.UnhealthyState
	inMapPoll  bool
	edits      int // PATCHes of the relay settings
	logouts    int
	down       bool // the LocalAPI answers nothing (tailscaled restarting)
	watchers   []chan ipn.Notify
	refuseEdit string
	busy       chan struct{} // non-nil: calls wait until it is closed (setBusy)
	// pollRequests: controlclient_map_requests_poll, one per streaming map request (control/controlclient/direct.go
	// L1034-1039); it grows while tailscaled retries
	pollRequests int
	retrying     bool // every metrics read sees a new map request in flight: a retry loop control refuses
	// reconnecting: every metrics read sees a new streaming map request that control answered (a proxy in front of
	// control cuts long polls): controlclient_map_response_message (mapMessages, direct.go L1293) grows too
	reconnecting bool
	mapMessages  int
	metricsReads int
	// relayDisabled: the tailnet's nodeAttrs give this node "disable-relay-server" (nodecap.DisableRelayServer)
	relayDisabled bool
	// noRelayGrant: the tailnet policy grants tailscale.com/cap/relay towards this node to no one
	noRelayGrant bool
}

// The fake tailnet: this node (tag:relay) and two peers, each with an IPv4 and an IPv6 address.
var (
	fakeSelfIPs  = []netip.Addr{netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("fd7a:115c:a1e0::1")}
	fakePeerIPs  = [][]netip.Addr{{netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("fd7a:115c:a1e0::2")}, {netip.MustParseAddr("100.64.0.3"), netip.MustParseAddr("fd7a:115c:a1e0::3")}}
	fakeSelfTags = []string{"tag:relay"}
)

func newFakeTailscaled(t *testing.T) *fakeTailscaled {
	dir, err := os.MkdirTemp("", "ts")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeTailscaled{t: t, socket: filepath.Join(dir, "tailscaled.sock"), state: ipn.Running, inMapPoll: true}
	listener, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	server := &httptest.Server{Listener: listener, Config: &http.Server{Handler: f}}
	server.Start()
	t.Cleanup(server.Close)
	return f
}

// setBusy: every LocalAPI call waits (until setBusy(false) or the caller gives up), as while tailscaled holds its
// lock to write its state Secret through an API server that does not answer (ipn/store/kubestore: WriteState under
// LocalBackend's mutex).
func (f *fakeTailscaled) setBusy(busy bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if busy && f.busy == nil {
		f.busy = make(chan struct{})
	} else if !busy && f.busy != nil {
		close(f.busy)
		f.busy = nil
	}
}

func (f *fakeTailscaled) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	if busy := f.busy; busy != nil && !strings.HasSuffix(r.URL.Path, "watch-ipn-bus") {
		f.mu.Unlock()
		select {
		case <-busy:
		case <-r.Context().Done():
			return
		}
		f.mu.Lock()
	}
	if f.down {
		f.mu.Unlock()
		hj, _ := w.(http.Hijacker)
		conn, _, _ := hj.Hijack()
		conn.Close()
		return
	}
	w.Header().Set("Tailscale-Version", "1.104.7")
	path := strings.TrimPrefix(r.URL.Path, "/localapi/v0/")
	switch {
	case path == "status":
		tags := views.SliceOf(fakeSelfTags)
		st := ipnstate.Status{Version: "1.104.7", BackendState: f.state.String(),
			Self: &ipnstate.PeerStatus{TailscaleIPs: fakeSelfIPs, Tags: &tags}}
		if f.relayDisabled {
			st.Self.CapMap = tailcfg.NodeCapMap{nodecap.DisableRelayServer: nil}
		}
		if r.URL.Query().Get("peers") != "false" { // ipn/localapi/localapi.go L845-860
			st.Peer = map[key.NodePublic]*ipnstate.PeerStatus{}
			for _, ips := range fakePeerIPs {
				st.Peer[key.NewNode().Public()] = &ipnstate.PeerStatus{TailscaleIPs: ips}
			}
		}
		f.mu.Unlock()
		writeJSON(w, st)
	case path == "debug-packet-filter-rules" && r.Method == http.MethodPost:
		// this node's packet filter as control sent it (ipn/localapi/debug.go L305-320: nm.PacketFilterRules); Headscale
		// v0.29.3 compiles a grant's app capability into a CapGrant from the src nodes' addresses to this node's
		// (hscontrol/policy/v2/compiled.go L522-563, narrowed to this node in policyutil/reduce.go L105-177)
		rules := []tailcfg.FilterRule{{SrcIPs: []string{"*"}, DstPorts: []tailcfg.NetPortRange{{IP: "*",
			Ports: tailcfg.PortRange{First: 0, Last: 65535}}}}}
		if !f.noRelayGrant {
			var srcs []string
			for _, ips := range fakePeerIPs {
				for _, ip := range ips {
					srcs = append(srcs, ip.String())
				}
			}
			var dsts []netip.Prefix
			for _, ip := range fakeSelfIPs {
				dsts = append(dsts, netip.PrefixFrom(ip, ip.BitLen()))
			}
			rules = append(rules, tailcfg.FilterRule{SrcIPs: srcs, CapGrant: []tailcfg.CapGrant{{Dsts: dsts,
				CapMap: tailcfg.PeerCapMap{peercap.Relay: nil}}}})
		}
		f.mu.Unlock()
		writeJSON(w, rules)
	case path == "prefs" && r.Method == http.MethodGet:
		prefs := f.prefs
		f.mu.Unlock()
		writeJSON(w, prefs)
	case path == "prefs" && r.Method == http.MethodPatch:
		var mp ipn.MaskedPrefs
		if err := json.NewDecoder(r.Body).Decode(&mp); err != nil {
			f.mu.Unlock()
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if f.refuseEdit != "" {
			msg := f.refuseEdit
			f.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
			return
		}
		if mp.RelayServerPortSet {
			f.prefs.RelayServerPort = mp.RelayServerPort
		}
		if mp.RelayServerStaticEndpointsSet {
			f.prefs.RelayServerStaticEndpoints = mp.RelayServerStaticEndpoints
		}
		f.edits++
		prefs := f.prefs
		f.notifyLocked(ipn.Notify{Prefs: ptr(prefs.View())})
		f.mu.Unlock()
		writeJSON(w, prefs)
	case path == "debug-peer-relay-sessions":
		st := status.ServerStatus{UDPPort: f.prefs.RelayServerPort}
		if f.relayDisabled {
			st.UDPPort = nil
		}
		f.mu.Unlock()
		writeJSON(w, st)
	case path == "metrics":
		active := 0
		if f.inMapPoll {
			active = 1
		}
		if !f.inMapPoll || f.retrying {
			f.pollRequests++ // tailscaled retries its map request while it is out of the poll
		}
		if f.retrying {
			active = 1 // each retry is sampled while in flight
		}
		if f.reconnecting {
			f.pollRequests++
			f.mapMessages++ // the new stream's first message: the full network map
		}
		f.metricsReads++
		polls, messages := f.pollRequests, f.mapMessages
		f.mu.Unlock()
		fmt.Fprintf(w, "# TYPE controlclient_map_requests_active gauge\ncontrolclient_map_requests_active %d\n"+
			"# TYPE controlclient_map_requests_poll counter\ncontrolclient_map_requests_poll %d\n"+
			"# TYPE controlclient_map_response_message counter\ncontrolclient_map_response_message %d\n",
			active, polls, messages)
	case path == "logout" && r.Method == http.MethodPost:
		f.logouts++
		f.state = ipn.NeedsLogin
		f.notifyLocked(ipn.Notify{State: ptr(ipn.NeedsLogin)})
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	case path == "watch-ipn-bus":
		ch := make(chan ipn.Notify, 16)
		state, prefs := f.state, f.prefs
		ch <- ipn.Notify{State: &state, Prefs: ptr(prefs.View()), Health: &health.State{Warnings: f.health}}
		f.watchers = append(f.watchers, ch)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		enc := json.NewEncoder(w)
		for {
			select {
			case <-r.Context().Done():
				return
			case n, ok := <-ch:
				if !ok {
					return
				}
				if enc.Encode(n) != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		}
	default:
		f.mu.Unlock()
		http.Error(w, "not found", http.StatusNotFound)
	}
}

func (f *fakeTailscaled) notifyLocked(n ipn.Notify) {
	for _, ch := range f.watchers {
		select {
		case ch <- n:
		default:
		}
	}
}

// relogin: a new login (after a deleted node, say) resets the relay settings to none.
func (f *fakeTailscaled) relogin() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prefs.RelayServerPort, f.prefs.RelayServerStaticEndpoints = nil, nil
	f.state = ipn.Running
	f.notifyLocked(ipn.Notify{State: ptr(ipn.Running), Prefs: ptr(f.prefs.View())})
}

// setDown: tailscaled goes away (its watchers' streams end), as while containerboot restarts it.
func (f *fakeTailscaled) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
	if down {
		endStreams(&f.watchers)
	}
}

func (f *fakeTailscaled) setState(state ipn.State, loginError string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = state
	f.health = nil
	if loginError != "" {
		f.health = map[health.WarnableCode]health.UnhealthyState{"login-state": {
			WarnableCode: "login-state", Title: "Logged out",
			Text: "You are logged out. The last login error was: " + loginError,
			Args: health.Args{health.ArgError: loginError}}}
	}
	f.notifyLocked(ipn.Notify{State: &state, Health: &health.State{Warnings: f.health}})
}

func (f *fakeTailscaled) settings() (uint16, []netip.AddrPort, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var port uint16
	if f.prefs.RelayServerPort != nil {
		port = *f.prefs.RelayServerPort
	}
	return port, f.prefs.RelayServerStaticEndpoints, f.edits
}

func ptr[T any](v T) *T { return &v }

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// fakeAPIServer is the part of the Kubernetes API the agent and the check use: objects by path (GET), a watch of
// the Services collection (fieldSelector metadata.name), merge PATCH of ConfigMaps, POST of Events. broken makes
// every request fail with 503 and ends open watches, as an API server restart does.
type fakeAPIServer struct {
	t      *testing.T
	server *httptest.Server

	mu       sync.Mutex
	objects  map[string]map[string]any // path -> object
	version  int
	watches  []chan WatchEvent
	changes  []serviceChange // every Service change, for a watch from an older resourceVersion
	events   []map[string]any
	broken   bool
	stalled  chan struct{} // non-nil: every request hangs until it is closed or the client gives up (a black hole)
	cutWatch bool          // watches end at once with nothing sent, as a proxy that cuts streams does
	requests int
	getsOf   map[string]int
}

type serviceChange struct {
	version int
	event   WatchEvent
}

func newFakeAPIServer(t *testing.T) *fakeAPIServer {
	f := &fakeAPIServer{t: t, objects: map[string]map[string]any{}}
	f.server = httptest.NewServer(f)
	t.Cleanup(f.server.Close)
	return f
}

func (f *fakeAPIServer) kube() *Kube { return &Kube{Base: f.server.URL, HTTP: f.server.Client()} }

func (f *fakeAPIServer) put(path string, obj map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.version++
	meta, _ := obj["metadata"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
		obj["metadata"] = meta
	}
	meta["resourceVersion"] = fmt.Sprint(f.version)
	_, existed := f.objects[path]
	f.objects[path] = obj
	if strings.Contains(path, "/services/") {
		raw, _ := json.Marshal(obj)
		kind := "MODIFIED"
		if !existed {
			kind = "ADDED"
		}
		event := WatchEvent{Type: kind, Object: raw}
		f.changes = append(f.changes, serviceChange{f.version, event})
		for _, ch := range f.watches {
			ch <- event
		}
	}
}

func (f *fakeAPIServer) setBroken(broken bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.broken = broken
	if broken {
		endStreams(&f.watches)
	}
}

// endStreams ends every open stream (IPN bus watchers, API watches) as a restarting server does.
func endStreams[T any](streams *[]chan T) {
	for _, ch := range *streams {
		close(ch)
	}
	*streams = nil
}

// gets counts the GETs of one path (not watches).
func (f *fakeAPIServer) gets(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.getsOf[path]
}

func (f *fakeAPIServer) eventReasons() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var reasons []string
	for _, e := range f.events {
		reasons = append(reasons, e["reason"].(string))
	}
	return reasons
}

func (f *fakeAPIServer) status(name string) (Status, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cm := f.objects["/api/v1/namespaces/relays/configmaps/"+name]
	data, _ := cm["data"].(map[string]any)
	raw, ok := data["status.json"].(string)
	var st Status
	if ok {
		_ = json.Unmarshal([]byte(raw), &st)
	}
	return st, ok
}

// stall makes the API server a black hole: requests get no answer (packets dropped, not refused) until unstall.
func (f *fakeAPIServer) stall() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stalled = make(chan struct{})
	endStreams(&f.watches)
}

func (f *fakeAPIServer) unstall() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stalled != nil {
		close(f.stalled)
		f.stalled = nil
	}
}

func (f *fakeAPIServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	if stalled := f.stalled; stalled != nil {
		f.mu.Unlock()
		select {
		case <-stalled:
		case <-r.Context().Done():
			return
		}
		f.mu.Lock()
	}
	f.requests++
	if f.broken {
		f.mu.Unlock()
		http.Error(w, `{"kind":"Status","message":"the server is currently unable to handle the request"}`, http.StatusServiceUnavailable)
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Query().Get("watch") == "true":
		if f.cutWatch {
			f.mu.Unlock()
			return
		}
		name := strings.TrimPrefix(r.URL.Query().Get("fieldSelector"), "metadata.name=")
		// from resourceVersion, as an API server watches: the changes since the version the agent read (its GET) come
		// first, so that none made between that GET and this watch is lost (seen under qemu-aarch64, slower)
		var missed []WatchEvent
		if since, err := strconv.Atoi(r.URL.Query().Get("resourceVersion")); err == nil {
			for _, change := range f.changes {
				if change.version > since {
					missed = append(missed, change.event)
				}
			}
		}
		ch := make(chan WatchEvent, 16+len(missed))
		for _, event := range missed {
			ch <- event
		}
		f.watches = append(f.watches, ch)
		f.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		enc := json.NewEncoder(w)
		for {
			select {
			case <-r.Context().Done():
				return
			case ev, ok := <-ch:
				if !ok {
					return
				}
				var obj struct{ Metadata ObjectMeta }
				_ = json.Unmarshal(ev.Object, &obj)
				if obj.Metadata.Name != name {
					continue
				}
				_ = enc.Encode(ev)
				w.(http.Flusher).Flush()
			}
		}
	case r.Method == http.MethodGet:
		if f.getsOf == nil {
			f.getsOf = map[string]int{}
		}
		f.getsOf[r.URL.Path]++
		obj, ok := f.objects[r.URL.Path]
		f.mu.Unlock()
		if !ok {
			http.Error(w, `{"kind":"Status","message":"not found"}`, http.StatusNotFound)
			return
		}
		writeJSON(w, obj)
	case r.Method == http.MethodPatch && strings.Contains(r.URL.Path, "/configmaps/"):
		defer f.mu.Unlock()
		if r.Header.Get("Content-Type") != "application/merge-patch+json" {
			http.Error(w, "want a merge patch", http.StatusUnsupportedMediaType)
			return
		}
		obj, ok := f.objects[r.URL.Path]
		if !ok {
			http.Error(w, `{"kind":"Status","message":"configmaps not found"}`, http.StatusNotFound)
			return
		}
		var patch struct{ Data map[string]string }
		_ = json.NewDecoder(r.Body).Decode(&patch)
		data, _ := obj["data"].(map[string]any)
		if data == nil {
			data = map[string]any{}
			obj["data"] = data
		}
		for k, v := range patch.Data {
			data[k] = v
		}
		writeJSON(w, obj)
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/events"):
		defer f.mu.Unlock()
		var ev map[string]any
		_ = json.NewDecoder(r.Body).Decode(&ev)
		f.events = append(f.events, ev)
		w.WriteHeader(http.StatusCreated)
		writeJSON(w, ev)
	case r.Method == http.MethodPatch && strings.Contains(r.URL.Path, "/events/"):
		// a merge patch of count and lastTimestamp, as client-go's recorder sends for a repeated Event
		defer f.mu.Unlock()
		name := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		var patch map[string]any
		_ = json.NewDecoder(r.Body).Decode(&patch)
		for _, ev := range f.events {
			if meta, _ := ev["metadata"].(map[string]any); meta["name"] == name {
				for k, v := range patch {
					ev[k] = v
				}
				writeJSON(w, ev)
				return
			}
		}
		http.Error(w, `{"kind":"Status","message":"events not found"}`, http.StatusNotFound)
	default:
		f.mu.Unlock()
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusMethodNotAllowed)
	}
}

func service(name string, policy string, ingress ...map[string]any) map[string]any {
	items := make([]any, len(ingress))
	for i, in := range ingress {
		items[i] = in
	}
	return map[string]any{
		"metadata": map[string]any{"name": name, "namespace": "relays"},
		"spec":     map[string]any{"ipFamilyPolicy": policy},
		"status":   map[string]any{"loadBalancer": map[string]any{"ingress": items}},
	}
}

// headscaleMinCapabilityVersion: the oldest client Headscale v0.29.3 serves (fakeControl).
const headscaleMinCapabilityVersion = 113

// fakeControl serves a control server's unauthenticated /key (Tailscale's and Headscale's answer 200 with the
// server's public keys) and returns its URL; while up is false it answers 502, as a control server whose proxy is
// up and whose backend is down. up nil: always up. As Headscale v0.29.3 does (hscontrol/handlers.go L188-204), it
// refuses a request without the client's capability version, or with one below the oldest it supports
// (capver.MinSupportedCapabilityVersion, 113: hscontrol/capver/capver_generated.go L89), with 400.
func fakeControl(t *testing.T, up *atomic.Bool) string {
	control := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if up != nil && !up.Load() {
			http.Error(w, "bad gateway", http.StatusBadGateway)
			return
		}
		if v, err := strconv.Atoi(r.URL.Query().Get("v")); err != nil || v < headscaleMinCapabilityVersion {
			http.Error(w, "unsupported client version", http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, `{"publicKey":"mkey:00"}`)
	}))
	t.Cleanup(control.Close)
	return control.URL
}

// setMapPoll: tailscaled's streaming map request is open (controlclient_map_requests_active 1) or not.
func (f *fakeTailscaled) setMapPoll(active bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inMapPoll = active
}

// waitFor polls cond for up to 10 s and fails the test with what it waited for and the last thing it saw.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var saw string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, saw = cond(); ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("waited 10s for %s; last saw: %s", what, saw)
}
