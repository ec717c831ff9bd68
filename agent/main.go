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
	var err error
	switch os.Args[1] {
	case "run":
		err = run(ctx)
	case "check":
		mode := "apply"
		if len(os.Args) > 2 {
			mode = os.Args[2]
		}
		err = check(ctx, mode)
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

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func required(names ...string) error {
	var missing []string
	for _, name := range names {
		if os.Getenv(name) == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("environment variables unset: %s (the chart sets them)", strings.Join(missing, ", "))
	}
	return nil
}

func seconds(name, fallback string) (time.Duration, error) {
	n, err := strconv.ParseFloat(env(name, fallback), 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s=%q: want seconds", name, os.Getenv(name))
	}
	return time.Duration(n * float64(time.Second)), nil
}

func port(name string) (uint16, error) {
	n, err := strconv.ParseUint(os.Getenv(name), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%s=%q: want a UDP port 1-65535", name, os.Getenv(name))
	}
	return uint16(n), nil
}

// mapPollMaxBackoff is the longest pause between two of tailscaled's map poll retries: util/backoff/backoff.go
// L63-66 (min(n²·10 ms, max), times 0.5-1.5) with max 30 s (control/controlclient/auto.go L588), tailscale.com
// v1.104.7. The agent never logs a relay out before its map poll has had that long to come back.
const mapPollMaxBackoff = 45 * time.Second

func configFromEnv() (Config, error) {
	var cfg Config
	if err := required("POD_NAME", "POD_UID", "NAMESPACE", "RELAY_PORT", "TS_SOCKET", "STATUS_CONFIGMAP"); err != nil {
		return cfg, err
	}
	cfg.Pod, cfg.PodUID, cfg.Namespace = os.Getenv("POD_NAME"), os.Getenv("POD_UID"), os.Getenv("NAMESPACE")
	cfg.Service = env("SERVICE_NAME", cfg.Pod)
	cfg.StatusConfigMap = os.Getenv("STATUS_CONFIGMAP")
	cfg.LoginServer = env("LOGIN_SERVER", "https://controlplane.tailscale.com")
	cfg.PollBackoff = mapPollMaxBackoff
	if ca := os.Getenv("LOGIN_SERVER_CA"); ca != "" {
		if !x509.NewCertPool().AppendCertsFromPEM([]byte(ca)) {
			return cfg, errors.New("LOGIN_SERVER_CA (agent.loginServerCA) holds no PEM certificate")
		}
		cfg.LoginServerCA = []byte(ca)
	}
	cfg.Sockets = UDPSockets{IPv4Table: env("UDP4_TABLE", "/proc/net/udp"), IPv6Table: env("UDP6_TABLE", "/proc/net/udp6")}
	var err error
	if cfg.Port, err = port("RELAY_PORT"); err != nil {
		return cfg, err
	}
	if cfg.Static, err = ParseEndpoints(os.Getenv("STATIC_ENDPOINTS")); err != nil {
		return cfg, fmt.Errorf("STATIC_ENDPOINTS: %w", err)
	}
	for _, d := range []struct {
		to       *time.Duration
		name     string
		fallback string
	}{{&cfg.Resync, "RESYNC_SECONDS", "30"}, {&cfg.Retry, "RETRY_SECONDS", "2"},
		{&cfg.ResolveEvery, "RESOLVE_SECONDS", "60"}, {&cfg.ReloginAfter, "RELOGIN_AFTER_SECONDS", "120"}} {
		if *d.to, err = seconds(d.name, d.fallback); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

func run(ctx context.Context) error {
	cfg, err := configFromEnv()
	if err != nil {
		return err
	}
	kube, err := InClusterKube()
	if err != nil {
		return err
	}
	agent := NewAgent(cfg, &local.Client{Socket: os.Getenv("TS_SOCKET"), UseSocketOnly: true}, kube, net.DefaultResolver)
	listener, err := net.Listen("tcp", env("LISTEN_ADDRESS", ":9003"))
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

func check(ctx context.Context, mode string) error {
	if mode != "apply" && mode != "verify" {
		return errors.New(usage)
	}
	if err := required("NAMESPACE", "STATEFULSET", "PODS", "STATUS_CONFIGMAPS", "RELAY_PORT", "TIMEOUT_SECONDS"); err != nil {
		return err
	}
	cfg := CheckConfig{Mode: mode, Namespace: os.Getenv("NAMESPACE"), StatefulSet: os.Getenv("STATEFULSET"),
		Pods: strings.Split(os.Getenv("PODS"), ","), StatusMaps: strings.Split(os.Getenv("STATUS_CONFIGMAPS"), ",")}
	if len(cfg.Pods) != len(cfg.StatusMaps) {
		return errors.New("PODS and STATUS_CONFIGMAPS differ in length")
	}
	var err error
	if cfg.Port, err = port("RELAY_PORT"); err != nil {
		return err
	}
	if cfg.Static, err = ParseEndpoints(os.Getenv("STATIC_ENDPOINTS")); err != nil {
		return fmt.Errorf("STATIC_ENDPOINTS: %w", err)
	}
	if cfg.Timeout, err = seconds("TIMEOUT_SECONDS", ""); err != nil {
		return err
	}
	if cfg.Interval, err = seconds("INTERVAL_SECONDS", "2"); err != nil {
		return err
	}
	if cfg.PullGrace, err = seconds("IMAGE_PULL_GRACE_SECONDS", strconv.Itoa(int(pullGrace/time.Second))); err != nil {
		return err
	}
	kube, err := InClusterKube()
	if err != nil {
		return err
	}
	return NewCheck(cfg, kube, net.DefaultResolver).Run(ctx)
}
