package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/health"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/tailcfg/nodecap"
	"tailscale.com/tsconst"
)

// Config is what the chart tells the agent: its environment (Env), as configFromEnv reads it.
type Config struct {
	Pod, PodUID, Namespace string
	Service                string // this replica's relay Service (empty with static endpoints)
	StatusConfigMap        string // where the agent writes its Status for the hook and helm test
	Port                   uint16
	Static                 []netip.AddrPort
	Resync                 time.Duration // a full pass at least this often while all is well
	Retry                  time.Duration // while tailscaled starts or logs in
	ResolveEvery           time.Duration // load balancer hostnames are resolved again this often
	LoginServer            string        // the control server, asked whether it answers before a re-login
	LoginServerCA          []byte        // PEM certificates trusted for it besides the system's roots (agent.loginServerCA)
	ReloginAfter           time.Duration // out of the map poll this long with control answering: log in again
	PollBackoff            time.Duration // and at least this long: the longest pause of tailscaled's map poll retries
	Sockets                UDPSockets
	LocalAPITimeout        time.Duration // each LocalAPI call's (localAPITimeout when zero)
}

// Status is the agent's report: what the hook and helm test read (the status ConfigMap), what /status serves.
type Status struct {
	Pod              string   `json:"pod"`
	PodUID           string   `json:"podUID"`
	Ready            bool     `json:"ready"`
	Reason           string   `json:"reason,omitempty"` // why not Ready
	BackendState     string   `json:"backendState,omitempty"`
	TailscaleVersion string   `json:"tailscaleVersion,omitempty"`
	Port             uint16   `json:"port"`
	Endpoints        []string `json:"endpoints,omitempty"` // in effect (tailscaled's preferences)
	EndpointsFrom    string   `json:"endpointsFrom,omitempty"`
	BoundFamilies    []string `json:"boundFamilies,omitempty"`
	LoginError       string   `json:"loginError,omitempty"` // tailscaled's last login error (its login-state health)
	APIServer        string   `json:"apiServer,omitempty"`  // empty: answering
	Warnings         []string `json:"warnings,omitempty"`
	RelayGrantedFrom []string `json:"relayGrantedFrom,omitempty"` // sources the policy grants the relay capability from
	RelayPeers       int      `json:"relayPeers,omitempty"`       // peers with an address among them (-1: not counted)
	Unusable         []string `json:"unusable,omitempty"`         // why no peer can use the relay, though it relays
	EventsDropped    int      `json:"eventsDropped,omitempty"`    // Events the API server did not take in time, or over the cap
	Since            string   `json:"since"`                      // when this status began
}

// Agent keeps one relay's settings right: see docs/how-it-works.md. Four goroutines share it: the loop (Run:
// passes), the Service watch, the IPN bus watch and the reporter (Events and the status ConfigMap), besides the HTTP
// handlers that read the status. Each field below is owned as its group says.
type Agent struct {
	// Set by NewAgent and never again, read by all (Events and HostnameCache lock their own state).
	cfg     Config
	ts      *local.Client
	kube    *Kube
	hosts   *HostnameCache
	events  *Events
	logf    func(string, ...any)
	now     func() time.Time
	wake    chan struct{} // a pass now (the watches)
	control *http.Client  // to the control server: the system's roots and cfg.LoginServerCA
	report  chan struct{} // report now (the loop, after a pass)

	// Guarded by mu: what the watches learn, and the loop's verdict. The watches own no other state. The Service
	// watch writes svc, svcErr and svcErrSince (setService) and the IPN bus watch health, which the loop reads
	// (pass, observe, desiredEndpoints); the loop writes status (publish), which the reporter and the HTTP handlers
	// read (Current).
	mu          sync.Mutex
	svc         *Service  // last Service the watch delivered
	svcErr      error     // the watch's last error, nil once it works again
	svcErrSince time.Time // when the watch's errors began
	status      Status    // the last pass's, as /status and the status ConfigMap show it
	// tailscaled's health warnings as its IPN bus last sent them, the login error among them (observe)
	health map[health.WarnableCode]health.UnhealthyState

	// The loop's own (Run and the steps of its passes): no other goroutine touches these, so no lock.
	loginError    string             // tailscaled's last login error (its login-state health), kept through its restarts
	lastGood      []netip.AddrPort   // endpoints of the last pass that had them
	zombieSince   time.Time          // since when the map poll is down while control and tailscaled answer (checkControl)
	controlTrust  string             // why the control server's certificate is not trusted, or ""
	mapMetrics    map[string]float64 // tailscaled's map request metrics at the last pass (mapPollActive)
	localTimedOut bool               // a LocalAPI call of this pass ran out of time
	lastRelaying  *Status            // the last pass that found the relay relaying
	busySince     time.Time          // since when tailscaled's LocalAPI has not answered in time (whileBusy)
	relayPeers    relayPeers         // the last count of the peers that may use the relay (countPeers)

	// The reporter's own (syncStatus).
	written string // status.json as the ConfigMap last had it (read back or written)
}

func NewAgent(cfg Config, ts *local.Client, kube *Kube, resolver Resolver) *Agent {
	if cfg.LocalAPITimeout == 0 {
		cfg.LocalAPITimeout = localAPITimeout
	}
	a := &Agent{cfg: cfg, ts: ts, kube: kube, logf: log.Printf, now: time.Now, wake: make(chan struct{}, 1),
		report: make(chan struct{}, 1)}
	a.hosts = &HostnameCache{Resolver: resolver, Refresh: cfg.ResolveEvery, Now: a.now}
	a.control = controlClient(cfg.LoginServerCA)
	a.events = &Events{kube: kube, cfg: cfg, now: a.now, logf: a.logf}
	return a
}

// poke asks for a pass now.
func (a *Agent) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Run works until ctx ends (SIGTERM): at once, nothing to drain.
func (a *Agent) Run(ctx context.Context) {
	a.logf("relay %s in namespace %s: port %d, endpoints %s, a pass every %s", a.cfg.Pod, a.cfg.Namespace, a.cfg.Port,
		a.endpointSource(), a.cfg.Resync)
	if len(a.cfg.Static) == 0 {
		go a.watchService(ctx)
	}
	go a.watchTailscaled(ctx)
	go a.reporter(ctx)
	for {
		st := a.pass(ctx)
		if ctx.Err() != nil {
			return
		}
		a.publish(st)
		wait := a.cfg.Resync
		if !st.Ready {
			wait = a.cfg.Retry
		}
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		case <-time.After(wait):
		}
	}
}

func (a *Agent) endpointSource() string {
	if len(a.cfg.Static) > 0 {
		return "static " + JoinEndpoints(a.cfg.Static)
	}
	return "from Service " + a.cfg.Service
}

// Current is the status of the last pass.
func (a *Agent) Current() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

// pass looks at tailscaled and the Service once, puts the settings right if they are not, and says where things stand.
func (a *Agent) pass(ctx context.Context) Status {
	st := Status{Pod: a.cfg.Pod, PodUID: a.cfg.PodUID, Port: a.cfg.Port}
	a.mu.Lock()
	if a.svcErr != nil {
		st.APIServer = fmt.Sprintf("unreachable since %s: %v", a.svcErrSince.UTC().Format(time.RFC3339), a.svcErr)
	}
	a.mu.Unlock()
	st.Reason = a.check(ctx, &st)
	st.Ready = st.Reason == ""
	st.EventsDropped = a.events.Dropped()
	return st
}

// localAPITimeout bounds each call to tailscaled's LocalAPI on its own (Config.LocalAPITimeout, this by default): a
// slow call (or a slow control server or DNS answer in the same pass) must not run out the time of the calls after it.
const localAPITimeout = 10 * time.Second

func (a *Agent) localCall(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.cfg.LocalAPITimeout)
}

// busyGrace: how long a relay whose tailscaled LocalAPI does not answer in time, with its port still bound, is taken
// to relay. tailscaled holds its lock while it writes its state Secret, and an API server that drops packets holds
// that write (seen on kind: 27 s after a preference change); a tailscaled stuck for longer is not taken to relay.
const busyGrace = 2 * time.Minute

// check fills st and returns why the relay is not ready, or "": one pass (steps), or, while tailscaled's LocalAPI
// does not answer in time, what the last relaying pass found if the relay port is still bound (whileBusy).
func (a *Agent) check(ctx context.Context, st *Status) string {
	a.localTimedOut = false
	reason := a.steps(ctx, st)
	if reason == "" {
		relaying := *st
		a.lastRelaying, a.busySince = &relaying, time.Time{}
		return ""
	}
	if a.localTimedOut && ctx.Err() == nil {
		return a.whileBusy(st, reason)
	}
	a.busySince = time.Time{}
	return reason
}

// whileBusy: tailscaled's LocalAPI did not answer in time. The relay server runs apart from tailscaled's lock, so
// while its UDP port is still bound for every family the last relaying pass found, for at most busyGrace, the relay
// is taken to relay, with a warning; otherwise REASON stands.
func (a *Agent) whileBusy(st *Status, reason string) string {
	last := a.lastRelaying
	if last == nil {
		return reason
	}
	if a.busySince.IsZero() {
		a.busySince = a.now()
	}
	if busy := a.now().Sub(a.busySince); busy > busyGrace {
		return fmt.Sprintf("%s (tailscaled has not answered in time for %s)", reason, busy.Round(time.Second))
	}
	for _, family := range last.BoundFamilies {
		if bound, err := a.cfg.Sockets.Bound(family, a.cfg.Port); err != nil || !bound {
			return reason
		}
	}
	st.LoginError = ""
	st.BackendState, st.TailscaleVersion = last.BackendState, last.TailscaleVersion
	st.Endpoints, st.EndpointsFrom, st.BoundFamilies = last.Endpoints, last.EndpointsFrom, last.BoundFamilies
	st.Warnings = append(st.Warnings, fmt.Sprintf("tailscaled's LocalAPI does not answer in time (%s; busy writing "+
		"its state to an API server that does not answer?): the relay port is still bound, so the relay is taken to "+
		"relay with the settings it had at %s", reason, a.busySince.UTC().Format(time.RFC3339)))
	return ""
}

// noteLocal records a LocalAPI call that ran out of time (whileBusy).
func (a *Agent) noteLocal(err error) {
	if errors.Is(err, context.DeadlineExceeded) {
		a.localTimedOut = true
	}
}

// steps: observe tailscaled, work out the endpoints, apply them, verify the relay server, and see whether peers can
// use it (usable: reported, not a reason to be unready).
func (a *Agent) steps(ctx context.Context, st *Status) string {
	self, reason := a.observe(ctx, st)
	if reason != "" {
		return reason
	}
	desired, reason := a.workOutEndpoints(ctx, st)
	if reason != "" {
		return reason
	}
	if reason := a.apply(ctx, st, desired); reason != "" {
		return reason
	}
	if reason := a.verify(ctx, st, self, desired); reason != "" {
		return reason
	}
	a.usable(ctx, st, self)
	return ""
}

// observe reads tailscaled's state and health, repairs a relay the control server no longer serves (checkControl),
// and says why the relay is not logged in, if it is not. It returns the relay's own node as tailscaled reports it.
func (a *Agent) observe(ctx context.Context, st *Status) (*ipnstate.PeerStatus, string) {
	callCtx, cancel := a.localCall(ctx)
	status, err := a.ts.StatusWithoutPeers(callCtx)
	cancel()
	if err != nil {
		a.noteLocal(err)
		a.resetZombie("tailscaled's LocalAPI does not answer") // that says nothing about the control server
		if a.loginError != "" {
			st.LoginError = a.loginError
			return nil, fmt.Sprintf("tailscaled is not answering (restarting?); its last login error: %s", a.loginError)
		}
		return nil, fmt.Sprintf("tailscaled's LocalAPI does not answer yet: %v", err)
	}
	st.BackendState, st.TailscaleVersion = status.BackendState, status.Version
	a.mu.Lock()
	loginError := a.health[tsconst.HealthWarnableLoginState].Args[health.ArgError] // "" without that warning
	for code, w := range a.health {
		if code != tsconst.HealthWarnableLoginState {
			st.Warnings = append(st.Warnings, w.Text)
		}
	}
	a.mu.Unlock()
	// a.loginError is the loop's own (not guarded by a.mu: no other goroutine touches it), kept through restarts
	if loginError != "" {
		a.loginError = loginError
	}
	// Running, or Starting with a node key (after a restart): both need the control server's map poll.
	if status.BackendState == ipn.Running.String() || status.BackendState == ipn.Starting.String() {
		if reason := a.checkControl(ctx); reason != "" {
			return nil, reason
		}
	} else {
		a.resetZombie("tailscaled is " + status.BackendState)
	}
	if status.BackendState != ipn.Running.String() {
		if a.loginError != "" {
			st.LoginError = a.loginError
			return nil, fmt.Sprintf("the relay is not logged in (%s): %s", status.BackendState, a.loginError)
		}
		return nil, fmt.Sprintf("the relay is not logged in yet (%s)", status.BackendState)
	}
	a.loginError = ""
	if a.controlTrust != "" {
		st.Warnings = append(st.Warnings, a.controlTrust)
	}
	return status.Self, ""
}

// workOutEndpoints: the endpoints the relay should advertise, and where they come from.
func (a *Agent) workOutEndpoints(ctx context.Context, st *Status) ([]netip.AddrPort, string) {
	desired, from, warning, err := a.desiredEndpoints(ctx)
	if warning != "" {
		st.Warnings = append(st.Warnings, warning)
	}
	if err != nil {
		var waiting Waiting
		if errors.As(err, &waiting) {
			a.events.Once("Normal", "WaitingForAddress", err.Error())
		}
		return nil, err.Error()
	}
	st.EndpointsFrom = from
	return desired, ""
}

// apply puts the relay port and the endpoints into tailscaled's preferences unless they are in effect already.
func (a *Agent) apply(ctx context.Context, st *Status, desired []netip.AddrPort) string {
	callCtx, cancel := a.localCall(ctx)
	defer cancel()
	prefs, err := a.ts.GetPrefs(callCtx)
	if err != nil {
		a.noteLocal(err)
		return fmt.Sprintf("cannot read the relay's preferences: %v", err)
	}
	if !a.inEffect(prefs, desired) {
		had := describeSettings(prefs)
		a.logf("setting relay port %d and endpoints %s (the relay had %s)", a.cfg.Port, JoinEndpoints(desired), had)
		port := a.cfg.Port
		editCtx, cancel := a.localCall(ctx)
		defer cancel()
		prefs, err = a.ts.EditPrefs(editCtx, &ipn.MaskedPrefs{
			Prefs:                         ipn.Prefs{RelayServerPort: &port, RelayServerStaticEndpoints: desired},
			RelayServerPortSet:            true,
			RelayServerStaticEndpointsSet: true,
		})
		if err != nil || !a.inEffect(prefs, desired) {
			a.noteLocal(err)
			reason := fmt.Sprintf("tailscaled refused the relay settings (port %d, endpoints %s): %v", a.cfg.Port, JoinEndpoints(desired), err)
			if err == nil {
				reason = fmt.Sprintf("tailscaled did not keep the relay settings (port %d, endpoints %s): it has %s", a.cfg.Port,
					JoinEndpoints(desired), describeSettings(prefs))
			}
			a.events.Once("Warning", "RefusedByTailscaled", reason)
			return reason
		}
		a.events.Queue("Normal", "SettingsApplied", fmt.Sprintf("set relay port %d and endpoints %s (the relay had %s)",
			a.cfg.Port, JoinEndpoints(desired), had))
	}
	st.Endpoints = strings.Split(JoinEndpoints(prefs.RelayServerStaticEndpoints), ",")
	return ""
}

// verify: the relay server runs on the port, and holds it for every family it advertises.
func (a *Agent) verify(ctx context.Context, st *Status, self *ipnstate.PeerStatus, desired []netip.AddrPort) string {
	callCtx, cancel := a.localCall(ctx)
	defer cancel()
	server, err := a.ts.DebugPeerRelaySessions(callCtx)
	if err != nil {
		a.noteLocal(err)
		return fmt.Sprintf("cannot read the relay server's state: %v", err)
	}
	if server.UDPPort == nil && self != nil && self.CapMap.Contains(nodecap.DisableRelayServer) {
		// tailscaled keeps the port in its preferences and does not run the server (feature/relayserver/relayserver.go
		// L189-191 relayServerShouldBeRunningLocked; L259-271 reports UDPPort null)
		return fmt.Sprintf("the tailnet disables the relay server on this node (node attribute %q in the tailnet "+
			"policy's nodeAttrs applies to it): remove that attribute for the relay's tags", nodecap.DisableRelayServer)
	}
	if server.UDPPort == nil {
		// the port is in tailscaled's preferences (apply), so the server failed to start (relayserver.go L179-187)
		return fmt.Sprintf("the relay server is not running on UDP port %d (see the relay's log for "+
			"'relayserver: error initializing server')", a.cfg.Port)
	}
	if *server.UDPPort != a.cfg.Port {
		return fmt.Sprintf("the relay server runs on UDP port %d, not %d", *server.UDPPort, a.cfg.Port)
	}
	for _, family := range Families(desired) {
		bound, err := a.cfg.Sockets.Bound(family, a.cfg.Port)
		if err != nil {
			return fmt.Sprintf("cannot read the socket table for %s: %v", family, err)
		}
		if !bound {
			return fmt.Sprintf("the relay server does not hold UDP port %d for %s (see the relay's log for "+
				"'relayserver: error initializing server', e.g. bind: permission denied or address already in use)", a.cfg.Port, family)
		}
		st.BoundFamilies = append(st.BoundFamilies, family)
	}
	return ""
}

func (a *Agent) inEffect(prefs *ipn.Prefs, desired []netip.AddrPort) bool {
	return prefs != nil && prefs.RelayServerPort != nil && *prefs.RelayServerPort == a.cfg.Port &&
		SameEndpoints(prefs.RelayServerStaticEndpoints, desired)
}

func describeSettings(prefs *ipn.Prefs) string {
	if prefs == nil || prefs.RelayServerPort == nil {
		return "no relay port"
	}
	eps := JoinEndpoints(prefs.RelayServerStaticEndpoints)
	if eps == "" {
		eps = "none"
	}
	return fmt.Sprintf("port %d, endpoints %s", *prefs.RelayServerPort, eps)
}

// desiredEndpoints: the static endpoints, or those of the Service as the watch last saw it. Through API server
// errors the last Service seen still counts: the load balancer keeps its addresses when the API server blinks.
func (a *Agent) desiredEndpoints(ctx context.Context) (eps []netip.AddrPort, from, warning string, err error) {
	if len(a.cfg.Static) > 0 {
		return a.cfg.Static, "relay.staticEndpoints", "", nil
	}
	a.mu.Lock()
	svc, svcErr := a.svc, a.svcErr
	a.mu.Unlock()
	if svc == nil {
		if svcErr == nil {
			return nil, "", "", Waiting{fmt.Sprintf("reading Service %s", a.cfg.Service)}
		}
		if IsNotFound(svcErr) {
			return nil, "", "", fmt.Errorf("Service %s does not exist (a replica added outside Helm has no Service: scale with replicaCount)", a.cfg.Service)
		}
		return nil, "", "", fmt.Errorf("cannot read Service %s: %v", a.cfg.Service, svcErr)
	}
	eps, warning, err = ServiceEndpoints(ctx, svc, a.cfg.Port, a.hosts)
	if err != nil {
		var waiting Waiting
		last := a.lastGood
		if !errors.As(err, &waiting) && last != nil {
			// DNS of a hostname load balancer failing for the first time after a change: keep what works.
			return last, "Service " + a.cfg.Service + " (last good)", err.Error(), nil
		}
		return nil, "", "", err
	}
	last := a.lastGood
	a.lastGood = eps
	if last != nil && !SameEndpoints(last, eps) {
		a.events.Queue("Normal", "EndpointsChanged", fmt.Sprintf("Service %s: endpoints %s, were %s", a.cfg.Service,
			JoinEndpoints(eps), JoinEndpoints(last)))
	}
	return eps, "Service " + a.cfg.Service, warning, nil
}

// watchService keeps a.svc current: a get, then a watch from its resourceVersion, which the API server ends after a
// minute (so a get every minute: an API server that stops serving this relay, or an RBAC change, which an open
// watch would not notice, shows within a minute); on any error the last Service stays, the error is recorded, and
// after a pause (1 s, doubling up to 30 s) it starts again with a get. A watch the server ends sooner than
// minWatchLife (a proxy or load balancer in front of the API server that cuts streams) gets the same pauses without
// an error: a get and a watch a pause, not a spin.
func (a *Agent) watchService(ctx context.Context) {
	const minWatchLife = 10 * time.Second
	pause := time.Second
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(pause):
		}
		pause = min(2*pause, 30*time.Second)
		return true
	}
	for ctx.Err() == nil {
		var svc Service
		err := a.kube.Get(ctx, servicePath(a.cfg.Namespace, a.cfg.Service), &svc)
		if err == nil {
			a.setService(ctx, &svc, nil)
			started := time.Now()
			query := url.Values{"fieldSelector": {"metadata.name=" + a.cfg.Service},
				"resourceVersion": {svc.Metadata.ResourceVersion}, "timeoutSeconds": {"60"}}
			err = a.kube.Watch(ctx, "/api/v1/namespaces/"+url.PathEscape(a.cfg.Namespace)+"/services", query, func(ev WatchEvent) error {
				switch ev.Type {
				case "ADDED", "MODIFIED":
					var changed Service
					if err := json.Unmarshal(ev.Object, &changed); err != nil {
						return err
					}
					a.setService(ctx, &changed, nil)
				case "DELETED":
					a.setService(ctx, nil, &APIError{Code: http.StatusNotFound, Message: "the Service was deleted"})
				case "ERROR":
					var status struct {
						Code    int
						Message string
					}
					_ = json.Unmarshal(ev.Object, &status)
					return &APIError{Code: status.Code, Message: status.Message} // e.g. 410 Gone: get again
				}
				return nil
			})
			if ctx.Err() != nil {
				return
			}
			var apiErr *APIError
			if err == nil || errors.As(err, &apiErr) && apiErr.Code == http.StatusGone {
				// the server ended the watch (or its resourceVersion is too old): get again
				if time.Since(started) >= minWatchLife {
					pause = time.Second
					continue
				}
				if !wait() {
					return
				}
				continue
			}
		}
		if ctx.Err() != nil {
			return
		}
		a.setService(ctx, nil, err)
		if !wait() {
			return
		}
	}
}

// setService records the watch's news: a Service, or an error (svc nil: the last Service stays, unless it is gone).
func (a *Agent) setService(ctx context.Context, svc *Service, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		if IsNotFound(err) {
			a.svc = nil
		}
		if a.svcErr == nil {
			a.svcErrSince = a.now()
			a.logf("cannot read or watch Service %s (keeping its last addresses): %v", a.cfg.Service, err)
			a.events.Queue("Warning", "APIServerUnreachable", fmt.Sprintf("cannot read or watch Service %s: %v; "+
				"the relay keeps its settings and endpoints meanwhile", a.cfg.Service, err))
		}
		a.svcErr = err
		a.poke()
		return
	}
	if a.svcErr != nil {
		a.logf("Service %s readable again (after %s)", a.cfg.Service, a.now().Sub(a.svcErrSince).Round(time.Second))
		a.events.Queue("Normal", "APIServerReachable", fmt.Sprintf("Service %s readable again after %s (error was: %v)",
			a.cfg.Service, a.now().Sub(a.svcErrSince).Round(time.Second), a.svcErr))
	}
	a.svc, a.svcErr = svc, nil
	a.poke()
}

// watchTailscaled follows tailscaled's IPN bus: a change of state or preferences asks for a pass at once (a
// re-login resets the relay settings), and its health warnings (the login error among them) are kept.
func (a *Agent) watchTailscaled(ctx context.Context) {
	for ctx.Err() == nil {
		watcher, err := a.ts.WatchIPNBus(ctx, ipn.NotifyInitialState|ipn.NotifyInitialPrefs|ipn.NotifyInitialHealthState)
		if err == nil {
			for {
				n, err := watcher.Next()
				if err != nil {
					break
				}
				if n.Health != nil {
					a.mu.Lock()
					a.health = n.Health.Warnings
					a.mu.Unlock()
				}
				if n.State != nil || n.Prefs != nil || n.Health != nil {
					a.poke()
				}
			}
			watcher.Close()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// checkControl finds a relay the control server no longer knows (its node deleted) and logs it in again. tailscaled
// has no state for that: it keeps its last network map and stays Running (or, restarted, Starting), and the map
// request that control refuses (Headscale: 404 "node not found") is retried quietly, its error only logged. What it
// does expose is whether its map poll is up (the clientmetric controlclient_map_requests_active, 1 while a
// streaming map request is open).
//
// The rule: log out only when the map poll has been down, while the control server and tailscaled's LocalAPI
// answered, on every pass for ReloginAfter and for at least PollBackoff. Any pass on which the control server,
// tailscaled or its LocalAPI does not answer starts the clock again: an outage is no evidence against this node,
// and after one, tailscaled's map poll is still in its retry back-off (PollBackoff, its longest pause) while the
// control server already answers. Through an outage the relay keeps relaying on its last network map.
func (a *Agent) checkControl(ctx context.Context) string {
	if a.cfg.ReloginAfter <= 0 {
		return ""
	}
	active, err := a.mapPollActive(ctx)
	if err != nil {
		a.resetZombie(fmt.Sprintf("cannot read tailscaled's map poll metrics: %v", err))
		return ""
	}
	if active {
		a.resetZombie("the map poll is up again")
		return ""
	}
	if err := a.controlAnswers(ctx); err != nil {
		a.resetZombie(fmt.Sprintf("the control server does not answer (%v)", err)) // an outage: nothing to repair
		return ""
	}
	if a.zombieSince.IsZero() {
		a.zombieSince = a.now()
		a.logf("the map poll is down while the control server %s answers: the relay is logged out to log in again "+
			"if that lasts %s", a.cfg.LoginServer, max(a.cfg.ReloginAfter, a.cfg.PollBackoff))
	}
	out := a.now().Sub(a.zombieSince)
	if out < a.cfg.ReloginAfter || out < a.cfg.PollBackoff {
		return ""
	}
	reason := fmt.Sprintf("the control server %s answers but has not let this relay into its map poll for %s "+
		"(node deleted on the control server?): logging out, so that the relay logs in again with its auth key",
		a.cfg.LoginServer, out.Round(time.Second))
	a.logf("%s", reason)
	a.events.Queue("Warning", "LoggingInAgain", reason)
	logoutCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := a.ts.Logout(logoutCtx); err != nil {
		a.logf("logout: %v", err)
	}
	a.zombieSince = time.Time{}
	return reason
}

// resetZombie starts checkControl's clock again, saying why in the log if it ran.
func (a *Agent) resetZombie(why string) {
	if !a.zombieSince.IsZero() {
		a.logf("the map poll has been down for %s; the clock starts again: %s",
			a.now().Sub(a.zombieSince).Round(time.Second), why)
	}
	a.zombieSince = time.Time{}
}

// mapPollActive: tailscaled's streaming map request is open and it is the one of the last pass, or a new one that
// control answered. The gauge controlclient_map_requests_active counts a request from before it is sent until it
// ends (control/controlclient/direct.go L1034-1036), so a retry that control refuses at once is "active" for the
// moment it is in flight, and a pass that samples it then (passes follow tailscaled's notifications, which retries
// trigger) would take a refused node for a live one. So with the gauge up the poll also counts as up only while
// controlclient_map_requests_poll (one per streaming request, L1037-1038) has not grown since the last pass, or
// controlclient_map_response_message (one per message control sent, keep-alives included, L1293) has: an open
// stream does not grow the first, a stream that a proxy cuts and tailscaled opens again grows both, a refused retry
// loop only the first.
func (a *Agent) mapPollActive(ctx context.Context) (bool, error) {
	callCtx, cancel := a.localCall(ctx)
	defer cancel()
	metrics, err := a.ts.DaemonMetrics(callCtx)
	if err != nil {
		a.noteLocal(err)
		return false, err
	}
	values := map[string]float64{}
	scanner := bufio.NewScanner(bytes.NewReader(metrics))
	for scanner.Scan() {
		name, value, ok := strings.Cut(scanner.Text(), " ")
		if ok && (name == metricMapActive || name == metricMapPolls || name == metricMapMessages) {
			n, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil {
				return false, fmt.Errorf("%s: %w", name, err)
			}
			values[name] = n
		}
	}
	active, ok := values[metricMapActive]
	if !ok {
		return false, fmt.Errorf("tailscaled reports no %s", metricMapActive)
	}
	last := a.mapMetrics
	a.mapMetrics = values
	if last == nil {
		return active > 0, nil
	}
	grew := func(name string) bool {
		now, counted := values[name]
		before, seen := last[name]
		return counted && seen && now > before
	}
	return active > 0 && (!grew(metricMapPolls) || grew(metricMapMessages)), nil
}

// tailscaled's clientmetrics of its map requests (control/controlclient/direct.go L1994-2000, tailscale.com v1.104.7)
const (
	metricMapActive   = "controlclient_map_requests_active"
	metricMapPolls    = "controlclient_map_requests_poll"
	metricMapMessages = "controlclient_map_response_message"
)

// controlAnswers: the control server answers its unauthenticated /key endpoint (Tailscale's and Headscale's), asked
// as tailscaled asks it (control/controlclient/direct.go, loadServerPubKeys: ?v=<its capability version>).
func (a *Agent) controlAnswers(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	keyURL := fmt.Sprintf("%s/key?v=%d", strings.TrimSuffix(a.cfg.LoginServer, "/"), tailcfg.CurrentCapabilityVersion)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, keyURL, nil)
	if err != nil {
		return err
	}
	res, err := a.control.Do(req)
	if err != nil {
		var unknownCA x509.UnknownAuthorityError
		if errors.As(err, &unknownCA) {
			a.controlTrust = fmt.Sprintf("cannot check whether the control server %s answers: its certificate is "+
				"signed by an authority the agent does not trust (give its CA in agent.loginServerCA); until then a "+
				"relay whose node was deleted is not logged in again", a.cfg.LoginServer)
		}
		return err
	}
	a.controlTrust = ""
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s/key: %s", a.cfg.LoginServer, res.Status)
	}
	return nil
}

// controlClient: Go's client with the system's roots (Mozilla's, built in: roots.go) and the PEM certificates in
// extra, for a control server behind a private CA.
func controlClient(extra []byte) *http.Client {
	if len(extra) == 0 {
		return http.DefaultClient
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	pool.AppendCertsFromPEM(extra)
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: transport}
}

// publish makes a pass's status known: /status and /readyz at once, a log line and an Event when it changes; the
// reporter sends the Events and the status ConfigMap. Nothing here waits for the API server.
func (a *Agent) publish(st Status) {
	slices.Sort(st.Warnings) // tailscaled's health is a map: its order must not look like a change
	a.mu.Lock()
	prev := a.status
	changed := prev.Ready != st.Ready || prev.Reason != st.Reason || prev.Since == ""
	if changed {
		st.Since = a.now().UTC().Format(time.RFC3339)
	} else {
		st.Since = prev.Since
	}
	a.status = st
	a.mu.Unlock()
	if changed {
		if st.Ready {
			a.logf("relaying: port %d, endpoints %s (%s), UDP port bound for %s", st.Port, strings.Join(st.Endpoints, ","),
				st.EndpointsFrom, strings.Join(st.BoundFamilies, " and "))
			a.events.Queue("Normal", "Relaying", fmt.Sprintf("port %d, endpoints %s", st.Port, strings.Join(st.Endpoints, ",")))
		} else {
			a.logf("not ready: %s", st.Reason)
			if prev.Ready {
				a.events.Queue("Warning", "NotRelaying", st.Reason)
			} else if st.LoginError != "" {
				a.events.Once("Warning", "LoginFailed", st.Reason)
			}
		}
	}
	select {
	case a.report <- struct{}{}:
	default:
	}
}

// reporter sends the Events and the status ConfigMap after every pass, and at least every Resync, from its own
// goroutine: a slow or black-holed API server delays only it (each request is bounded by Kube.Do), never a pass.
func (a *Agent) reporter(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.report:
		case <-time.After(a.cfg.Resync):
		}
		a.events.Flush(ctx)
		a.syncStatus(ctx)
	}
}

// syncStatus makes the status ConfigMap say what the agent reports. It reads the ConfigMap back (one GET a resync)
// and writes only when it differs: a ConfigMap replaced or emptied from outside (helm upgrade --force, Argo CD
// Replace=true, kubectl replace) is right again within one resync, and an unchanged status costs no write (no new
// resourceVersion for GitOps tools to notice). Writing on every resync would cost one write a resync instead.
func (a *Agent) syncStatus(ctx context.Context) {
	if a.cfg.StatusConfigMap == "" {
		return
	}
	st := a.Current()
	if st.Since == "" {
		return // no pass yet
	}
	body, _ := json.Marshal(st)
	path := configMapPath(a.cfg.Namespace, a.cfg.StatusConfigMap)
	var cm ConfigMap
	if err := a.kube.Get(ctx, path, &cm); err != nil {
		if a.written != string(body) {
			a.logf("cannot read the status ConfigMap %s (again at the next pass): %v", a.cfg.StatusConfigMap, err)
		}
		return
	}
	if cm.Data["status.json"] == string(body) {
		a.written = string(body)
		return
	}
	if a.written == string(body) {
		a.logf("the status ConfigMap %s was changed from outside: writing the status again", a.cfg.StatusConfigMap)
	}
	patch := map[string]any{"data": map[string]string{"status.json": string(body)}}
	if err := a.kube.Do(ctx, http.MethodPatch, path, "application/merge-patch+json", patch, nil); err != nil {
		a.logf("cannot write the status ConfigMap %s (again at the next pass): %v", a.cfg.StatusConfigMap, err)
		return
	}
	a.written = string(body)
}
