// Command relay-agent runs in every relay pod of the tailscale-peer-relay chart, next to tailscaled: it keeps the
// relay's settings right (`run`) and, in the chart's hook Job and helm test Pod, checks them (`check`).
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"

	"tailscale.com/client/local"
)

// version is set at build time (-X main.version=...).
var version = "dev"

const usage = `usage: relay-agent run | check apply|verify | version
  run     keep this relay's port and endpoints right (the relay pod's agent container)
  check   wait until every replica relays with the release's settings (the hook Job, helm test)`

func main() {
	log.SetFlags(0)
	log.SetOutput(logWriter{})
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	// SIGTERM ends either command at once: the relay pod stops without waiting out its grace period.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	env := readEnv(os.Getenv)
	var err error
	switch os.Args[1] {
	case "run":
		err = run(ctx, env)
	case "check":
		mode := "apply"
		if len(os.Args) > 2 {
			mode = os.Args[2]
		}
		err = check(ctx, mode, env)
	case "version":
		fmt.Println(version)
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		log.Printf("FAILED: %v", err)
		os.Exit(1)
	}
}

// logWriter prefixes every line with the time (UTC, seconds), for people reading kubectl logs.
type logWriter struct{}

func (logWriter) Write(p []byte) (int, error) {
	return fmt.Fprintf(os.Stderr, "%s %s", time.Now().UTC().Format(time.RFC3339), p)
}

// Env is the agent's environment: what the chart sets for it (relay.agentEnv in chart/templates/_helpers.tpl, one
// helper for both commands) and what it leaves to the agent's defaults. main reads it once (readEnv); configFromEnv
// (run) and checkConfigFromEnv (check) make a Config and a CheckConfig of it. A field's env tag names its variable,
// then the commands that read it (run: the relay pod's agent container; check: the hook Job and helm test Pod), then
// "default" when the chart never sets it (the agent's default holds; someone running the agent by hand may set it).
// tests/unit/test_agent_env.py holds the chart's rendered environments to these tags, and env_test.go the code that
// reads Env. The API server's address is Kubernetes' environment (InClusterKube), not the chart's.
type Env struct {
	Namespace       envVar `env:"NAMESPACE,run,check"`
	RelayPort       envVar `env:"RELAY_PORT,run,check"`
	StaticEndpoints envVar `env:"STATIC_ENDPOINTS,run,check"` // comma-separated; empty: the Service's addresses

	PodName         envVar `env:"POD_NAME,run"`
	PodUID          envVar `env:"POD_UID,run"`
	ServiceName     envVar `env:"SERVICE_NAME,run"` // POD_NAME when unset (relay.replicaName)
	StatusConfigMap envVar `env:"STATUS_CONFIGMAP,run"`
	Socket          envVar `env:"TS_SOCKET,run"` // tailscaled's LocalAPI
	LoginServer     envVar `env:"LOGIN_SERVER,run"`
	LoginServerCA   envVar `env:"LOGIN_SERVER_CA,run"` // set only with agent.loginServerCA
	Resync          envVar `env:"RESYNC_SECONDS,run"`
	ReloginAfter    envVar `env:"RELOGIN_AFTER_SECONDS,run"`
	ListenAddress   envVar `env:"LISTEN_ADDRESS,run"`
	Retry           envVar `env:"RETRY_SECONDS,run,default"`
	ResolveEvery    envVar `env:"RESOLVE_SECONDS,run,default"`
	UDP4Table       envVar `env:"UDP4_TABLE,run,default"`
	UDP6Table       envVar `env:"UDP6_TABLE,run,default"`

	StatefulSet      envVar `env:"STATEFULSET,check"`
	Pods             envVar `env:"PODS,check"`              // comma-separated
	StatusConfigMaps envVar `env:"STATUS_CONFIGMAPS,check"` // comma-separated, replica by replica as PODS
	Timeout          envVar `env:"TIMEOUT_SECONDS,check"`
	PullGrace        envVar `env:"IMAGE_PULL_GRACE_SECONDS,check"`
	Interval         envVar `env:"INTERVAL_SECONDS,check,default"`
}

// envVar is one variable of Env: its name, for messages, and its value ("" when unset).
type envVar struct{ name, value string }

// readEnv reads every variable of Env from getenv (os.Getenv), each by the name its env tag gives.
func readEnv(getenv func(string) string) Env {
	var env Env
	fields := reflect.ValueOf(&env).Elem()
	for i := range fields.NumField() {
		name, _, _ := strings.Cut(fields.Type().Field(i).Tag.Get("env"), ",")
		fields.Field(i).Set(reflect.ValueOf(envVar{name: name, value: getenv(name)}))
	}
	return env
}

// or is the variable's value, or fallback when it is unset or empty.
func (v envVar) or(fallback string) string {
	if v.value != "" {
		return v.value
	}
	return fallback
}

func required(vars ...envVar) error {
	var missing []string
	for _, v := range vars {
		if v.value == "" {
			missing = append(missing, v.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("environment variables unset: %s (the chart sets them)", strings.Join(missing, ", "))
	}
	return nil
}

func seconds(v envVar, fallback string) (time.Duration, error) {
	n, err := strconv.ParseFloat(v.or(fallback), 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s=%q: want seconds", v.name, v.value)
	}
	return time.Duration(n * float64(time.Second)), nil
}

func port(v envVar) (uint16, error) {
	n, err := strconv.ParseUint(v.value, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%s=%q: want a UDP port 1-65535", v.name, v.value)
	}
	return uint16(n), nil
}

// mapPollMaxBackoff is the longest pause between two of tailscaled's map poll retries: util/backoff/backoff.go
// L63-66 (min(n²·10 ms, max), times 0.5-1.5) with max 30 s (control/controlclient/auto.go L588), tailscale.com
// v1.104.7. The agent never logs a relay out before its map poll has had that long to come back.
const mapPollMaxBackoff = 45 * time.Second

// configFromEnv is the relay agent's Config (relay-agent run) from its environment.
func configFromEnv(env Env) (Config, error) {
	var cfg Config
	if err := required(env.PodName, env.PodUID, env.Namespace, env.RelayPort, env.Socket,
		env.StatusConfigMap); err != nil {
		return cfg, err
	}
	cfg.Pod, cfg.PodUID, cfg.Namespace = env.PodName.value, env.PodUID.value, env.Namespace.value
	cfg.Service = env.ServiceName.or(cfg.Pod)
	cfg.StatusConfigMap = env.StatusConfigMap.value
	cfg.LoginServer = env.LoginServer.or("https://controlplane.tailscale.com")
	cfg.PollBackoff = mapPollMaxBackoff
	if ca := env.LoginServerCA.value; ca != "" {
		if !x509.NewCertPool().AppendCertsFromPEM([]byte(ca)) {
			return cfg, fmt.Errorf("%s (agent.loginServerCA) holds no PEM certificate", env.LoginServerCA.name)
		}
		cfg.LoginServerCA = []byte(ca)
	}
	cfg.Sockets = UDPSockets{IPv4Table: env.UDP4Table.or("/proc/net/udp"), IPv6Table: env.UDP6Table.or("/proc/net/udp6")}
	var err error
	if cfg.Port, err = port(env.RelayPort); err != nil {
		return cfg, err
	}
	if cfg.Static, err = ParseEndpoints(env.StaticEndpoints.value); err != nil {
		return cfg, fmt.Errorf("%s: %w", env.StaticEndpoints.name, err)
	}
	for _, d := range []struct {
		to       *time.Duration
		from     envVar
		fallback string
	}{{&cfg.Resync, env.Resync, "30"}, {&cfg.Retry, env.Retry, "2"},
		{&cfg.ResolveEvery, env.ResolveEvery, "60"}, {&cfg.ReloginAfter, env.ReloginAfter, "120"}} {
		if *d.to, err = seconds(d.from, d.fallback); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

func run(ctx context.Context, env Env) error {
	cfg, err := configFromEnv(env)
	if err != nil {
		return err
	}
	kube, err := InClusterKube()
	if err != nil {
		return err
	}
	agent := NewAgent(cfg, &local.Client{Socket: env.Socket.value, UseSocketOnly: true}, kube, net.DefaultResolver)
	listener, err := net.Listen("tcp", env.ListenAddress.or(":9003"))
	if err != nil {
		return err
	}
	server := &http.Server{Handler: agent.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go server.Serve(listener)
	agent.Run(ctx)
	log.Printf("stopping (%v)", context.Cause(ctx))
	shutdown, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = server.Shutdown(shutdown)
	return nil
}

// Handler serves /readyz (the agent container's readiness: 200 only while the relay relays) and /status (JSON).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		st := a.Current()
		if !st.Ready {
			reason := st.Reason
			if reason == "" {
				reason = "starting"
			}
			http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "relaying: port %d, endpoints %s\n", st.Port, strings.Join(st.Endpoints, ","))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a.Current())
	})
	return mux
}

// checkConfigFromEnv is the check's CheckConfig (relay-agent check MODE) from its environment.
func checkConfigFromEnv(mode string, env Env) (CheckConfig, error) {
	cfg := CheckConfig{Mode: mode}
	if err := required(env.Namespace, env.StatefulSet, env.Pods, env.StatusConfigMaps, env.RelayPort,
		env.Timeout); err != nil {
		return cfg, err
	}
	cfg.Namespace, cfg.StatefulSet = env.Namespace.value, env.StatefulSet.value
	cfg.Pods, cfg.StatusMaps = strings.Split(env.Pods.value, ","), strings.Split(env.StatusConfigMaps.value, ",")
	if len(cfg.Pods) != len(cfg.StatusMaps) {
		return cfg, fmt.Errorf("%s and %s differ in length", env.Pods.name, env.StatusConfigMaps.name)
	}
	var err error
	if cfg.Port, err = port(env.RelayPort); err != nil {
		return cfg, err
	}
	if cfg.Static, err = ParseEndpoints(env.StaticEndpoints.value); err != nil {
		return cfg, fmt.Errorf("%s: %w", env.StaticEndpoints.name, err)
	}
	if cfg.Timeout, err = seconds(env.Timeout, ""); err != nil {
		return cfg, err
	}
	if cfg.Interval, err = seconds(env.Interval, "2"); err != nil {
		return cfg, err
	}
	if cfg.PullGrace, err = seconds(env.PullGrace, strconv.Itoa(int(pullGrace/time.Second))); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func check(ctx context.Context, mode string, env Env) error {
	if mode != "apply" && mode != "verify" {
		return errors.New(usage)
	}
	cfg, err := checkConfigFromEnv(mode, env)
	if err != nil {
		return err
	}
	kube, err := InClusterKube()
	if err != nil {
		return err
	}
	return NewCheck(cfg, kube, net.DefaultResolver).Run(ctx)
}
