package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/health"
	"tailscale.com/ipn"
	"tailscale.com/tsconst"
)

// Config is what the chart tells the agent (environment variables, see configFromEnv).
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
	ReloginAfter           time.Duration // out of the map poll this long with control answering: log in again
	Sockets                UDPSockets
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
	Since            string   `json:"since"` // when this status began
}

// Agent keeps one relay's settings right: see README "How it works".
type Agent struct {
	cfg    Config
	ts     *local.Client
	kube   *Kube
	hosts  *HostnameCache
	events *Events
	logf   func(string, ...any)
	now    func() time.Time

	wake chan struct{}

	mu          sync.Mutex
	svc         *Service  // last Service the watch delivered
	svcErr      error     // the watch's last error, nil once it works again
	svcErrSince time.Time //
	health      map[health.WarnableCode]health.UnhealthyState
	loginError  string
	lastGood    []netip.AddrPort // endpoints of the last pass that had them
	status      Status
	written     string // the status last written to the ConfigMap (without Since)
	outOfPoll   time.Time
}

func NewAgent(cfg Config, ts *local.Client, kube *Kube, resolver Resolver) *Agent {
	a := &Agent{cfg: cfg, ts: ts, kube: kube, logf: log.Printf, now: time.Now, wake: make(chan struct{}, 1)}
	a.hosts = &HostnameCache{Resolver: resolver, Refresh: cfg.ResolveEvery, Now: a.now}
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
	for {
		st := a.pass(ctx)
		if ctx.Err() != nil {
			return
		}
		a.publish(ctx, st)
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
	return st
}

// check fills st and returns why the relay is not ready, or "".
func (a *Agent) check(ctx context.Context, st *Status) string {
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	status, err := a.ts.StatusWithoutPeers(callCtx)
	if err != nil {
		if a.loginError != "" {
			st.LoginError = a.loginError
			return fmt.Sprintf("tailscaled is not answering (restarting?); its last login error: %s", a.loginError)
		}
		return fmt.Sprintf("tailscaled's LocalAPI does not answer yet: %v", err)
	}
	st.BackendState, st.TailscaleVersion = status.BackendState, status.Version
	a.mu.Lock()
	if w, ok := a.health[tsconst.HealthWarnableLoginState]; ok && w.Args[health.ArgError] != "" {
		a.loginError = w.Args[health.ArgError]
	}
	for code, w := range a.health {
		if code != tsconst.HealthWarnableLoginState {
			st.Warnings = append(st.Warnings, w.Text)
		}
	}
	a.mu.Unlock()
	// Running, or Starting with a node key (after a restart): both need the control server's map poll.
	if status.BackendState == ipn.Running.String() || status.BackendState == ipn.Starting.String() {
		if reason := a.checkControl(ctx); reason != "" {
			return reason
		}
	} else {
		a.outOfPoll = time.Time{}
	}
	if status.BackendState != ipn.Running.String() {
		if a.loginError != "" {
			st.LoginError = a.loginError
			return fmt.Sprintf("the relay is not logged in (%s): %s", status.BackendState, a.loginError)
		}
		return fmt.Sprintf("the relay is not logged in yet (%s)", status.BackendState)
	}
	a.loginError = ""

	desired, from, warning, err := a.desiredEndpoints(ctx)
	if warning != "" {
		st.Warnings = append(st.Warnings, warning)
	}
	if err != nil {
		var waiting Waiting
		if errors.As(err, &waiting) {
			a.events.Once(ctx, "Normal", "WaitingForAddress", err.Error())
		}
		return err.Error()
	}
	st.EndpointsFrom = from

	prefs, err := a.ts.GetPrefs(callCtx)
	if err != nil {
		return fmt.Sprintf("cannot read the relay's preferences: %v", err)
	}
	if !a.inEffect(prefs, desired) {
		had := describeSettings(prefs)
		a.logf("setting relay port %d and endpoints %s (the relay had %s)", a.cfg.Port, JoinEndpoints(desired), had)
		port := a.cfg.Port
		prefs, err = a.ts.EditPrefs(callCtx, &ipn.MaskedPrefs{
			Prefs:                         ipn.Prefs{RelayServerPort: &port, RelayServerStaticEndpoints: desired},
			RelayServerPortSet:            true,
			RelayServerStaticEndpointsSet: true,
		})
		if err != nil || !a.inEffect(prefs, desired) {
			reason := fmt.Sprintf("tailscaled refused the relay settings (port %d, endpoints %s): %v", a.cfg.Port, JoinEndpoints(desired), err)
			if err == nil {
				reason = fmt.Sprintf("tailscaled did not keep the relay settings (port %d, endpoints %s): it has %s", a.cfg.Port,
					JoinEndpoints(desired), describeSettings(prefs))
			}
			a.events.Once(ctx, "Warning", "RefusedByTailscaled", reason)
			return reason
		}
		a.events.Emit(ctx, "Normal", "SettingsApplied", fmt.Sprintf("set relay port %d and endpoints %s (the relay had %s)",
			a.cfg.Port, JoinEndpoints(desired), had))
	}
	st.Endpoints = strings.Split(JoinEndpoints(prefs.RelayServerStaticEndpoints), ",")

	server, err := a.ts.DebugPeerRelaySessions(callCtx)
	if err != nil {
		return fmt.Sprintf("cannot read the relay server's state: %v", err)
	}
	if server.UDPPort == nil || *server.UDPPort != a.cfg.Port {
		return fmt.Sprintf("the relay server is not configured for UDP port %d", a.cfg.Port)
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
		a.mu.Lock()
		last := a.lastGood
		a.mu.Unlock()
		if !errors.As(err, &waiting) && last != nil {
			// DNS of a hostname load balancer failing for the first time after a change: keep what works.
			return last, "Service " + a.cfg.Service + " (last good)", err.Error(), nil
		}
		return nil, "", "", err
	}
	a.mu.Lock()
	last := a.lastGood
	a.lastGood = eps
	a.mu.Unlock()
	if last != nil && !SameEndpoints(last, eps) {
		a.events.Emit(ctx, "Normal", "EndpointsChanged", fmt.Sprintf("Service %s: endpoints %s, were %s", a.cfg.Service,
			JoinEndpoints(eps), JoinEndpoints(last)))
	}
	return eps, "Service " + a.cfg.Service, warning, nil
}

// watchService keeps a.svc current: a get, then a watch from its resourceVersion, which the API server ends after a
// minute (so a get every minute: an API server that stops serving this relay, or an RBAC change, which an open
// watch would not notice, shows within a minute); on any error the last Service stays, the error is recorded, and
// after a pause (1 s, doubling up to 30 s) it starts again with a get.
func (a *Agent) watchService(ctx context.Context) {
	pause := time.Second
	for ctx.Err() == nil {
		var svc Service
		err := a.kube.Get(ctx, servicePath(a.cfg.Namespace, a.cfg.Service), &svc)
		if err == nil {
			a.setService(ctx, &svc, nil)
			pause = time.Second
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
			if err == nil || ctx.Err() != nil {
				continue // the server ended the watch: get again at once
			}
			var apiErr *APIError
			if errors.As(err, &apiErr) && apiErr.Code == http.StatusGone {
				continue
			}
		}
		if ctx.Err() != nil {
			return
		}
		a.setService(ctx, nil, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 30*time.Second)
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
// request that control refuses (Headscale: 404 "node not found") is retried quietly, its error only logged. What it does expose is whether its map poll is up
// (the clientmetric controlclient_map_requests_active, 1 while a streaming map request is open). Out of the map poll
// for ReloginAfter while the control server itself answers means control refuses this node; a control server that
// does not answer is an outage, through which the relay keeps relaying on its last network map.
func (a *Agent) checkControl(ctx context.Context) string {
	if a.cfg.ReloginAfter <= 0 {
		return ""
	}
	active, err := a.mapPollActive(ctx)
	if err != nil || active {
		a.outOfPoll = time.Time{}
		return ""
	}
	if a.outOfPoll.IsZero() {
		a.outOfPoll = a.now()
	}
	out := a.now().Sub(a.outOfPoll)
	if out < a.cfg.ReloginAfter {
		return ""
	}
	if err := a.controlAnswers(ctx); err != nil {
		return "" // an outage of the control server: nothing to repair here
	}
	reason := fmt.Sprintf("the control server %s answers but has not let this relay into its map poll for %s "+
		"(node deleted on the control server?): logging out, so that the relay logs in again with its auth key",
		a.cfg.LoginServer, out.Round(time.Second))
	a.logf("%s", reason)
	a.events.Emit(ctx, "Warning", "LoggingInAgain", reason)
	logoutCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := a.ts.Logout(logoutCtx); err != nil {
		a.logf("logout: %v", err)
	}
	a.outOfPoll = time.Time{}
	return reason
}

func (a *Agent) mapPollActive(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	metrics, err := a.ts.DaemonMetrics(ctx)
	if err != nil {
		return false, err
	}
	scanner := bufio.NewScanner(bytes.NewReader(metrics))
	for scanner.Scan() {
		name, value, ok := strings.Cut(scanner.Text(), " ")
		if ok && name == "controlclient_map_requests_active" {
			n, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			return n > 0, err
		}
	}
	return false, errors.New("tailscaled reports no controlclient_map_requests_active")
}

// controlAnswers: the control server answers its unauthenticated /key endpoint (Tailscale's and Headscale's).
func (a *Agent) controlAnswers(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(a.cfg.LoginServer, "/")+"/key?v=1", nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s/key: %s", a.cfg.LoginServer, res.Status)
	}
	return nil
}

// publish makes a pass's status known: log line and Event when it changes, the status ConfigMap (again, if the
// last write failed), and queued Events.
func (a *Agent) publish(ctx context.Context, st Status) {
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
			a.events.Emit(ctx, "Normal", "Relaying", fmt.Sprintf("port %d, endpoints %s", st.Port, strings.Join(st.Endpoints, ",")))
		} else {
			a.logf("not ready: %s", st.Reason)
			if prev.Ready {
				a.events.Emit(ctx, "Warning", "NotRelaying", st.Reason)
			} else if st.LoginError != "" {
				a.events.Once(ctx, "Warning", "LoginFailed", st.Reason)
			}
		}
	}
	a.events.Flush(ctx)
	a.writeStatus(ctx, st)
}

func (a *Agent) writeStatus(ctx context.Context, st Status) {
	if a.cfg.StatusConfigMap == "" {
		return
	}
	key := st
	key.Since = ""
	data, _ := json.Marshal(key)
	if string(data) == a.written {
		return
	}
	body, _ := json.Marshal(st)
	patch := map[string]any{"data": map[string]string{"status.json": string(body)}}
	err := a.kube.Do(ctx, http.MethodPatch, configMapPath(a.cfg.Namespace, a.cfg.StatusConfigMap),
		"application/merge-patch+json", patch, nil)
	if err != nil {
		a.logf("cannot write the status ConfigMap %s (again at the next pass): %v", a.cfg.StatusConfigMap, err)
		return
	}
	a.written = string(data)
}
