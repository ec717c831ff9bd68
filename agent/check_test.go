package main

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func checkHarness(t *testing.T, status Status, static string) (*Check, *fakeAPIServer, *strings.Builder) {
	api := newFakeAPIServer(t)
	api.put("/apis/apps/v1/namespaces/relays/statefulsets/relay", map[string]any{
		"metadata": map[string]any{"name": "relay", "generation": 2},
		"status":   map[string]any{"observedGeneration": 2, "updateRevision": "relay-abc"}})
	api.put("/api/v1/namespaces/relays/pods/relay-0", map[string]any{
		"metadata": map[string]any{"name": "relay-0", "uid": "uid-0", "labels": map[string]any{"controller-revision-hash": "relay-abc"}},
		"status": map[string]any{"containerStatuses": []any{map[string]any{"name": "tailscale", "ready": false, "restartCount": 3,
			"state": map[string]any{"waiting": map[string]any{"reason": "CrashLoopBackOff"}}}}}})
	api.put(svcPath, service("relay-0", "SingleStack", map[string]any{"ip": "192.0.2.10"}))
	raw, _ := json.Marshal(status)
	api.put("/api/v1/namespaces/relays/configmaps/relay-status-0", map[string]any{
		"metadata": map[string]any{"name": "relay-status-0"}, "data": map[string]any{"status.json": string(raw)}})
	cfg := CheckConfig{Mode: "apply", Namespace: "relays", StatefulSet: "relay", Pods: []string{"relay-0"},
		StatusMaps: []string{"relay-status-0"}, Port: 40000, Timeout: 300 * time.Millisecond, Interval: 20 * time.Millisecond}
	cfg.Static, _ = ParseEndpoints(static)
	c := NewCheck(cfg, api.kube(), &fakeResolver{})
	logs := &strings.Builder{}
	c.logf = func(format string, args ...any) { logs.WriteString(format + "\n") }
	return c, api, logs
}

func TestTheCheckPassesWhenTheAgentOfTheCurrentPodReportsTheReleasesSettings(t *testing.T) {
	c, _, _ := checkHarness(t, Status{PodUID: "uid-0", Ready: true, BackendState: "Running", Port: 40000,
		Endpoints: []string{"192.0.2.10:40000"}}, "")
	if err := c.Run(context.Background()); err != nil {
		t.Fatalf("the check must pass: %v", err)
	}
}

func TestTheCheckNamesTheCauseTheAgentGotFromTailscaled(t *testing.T) {
	c, _, _ := checkHarness(t, Status{PodUID: "uid-0", BackendState: "NeedsLogin",
		Reason: "the relay is not logged in (NeedsLogin): register request: invalid key: auth-key not found"}, "")
	err := c.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "waiting for relay pod relay-0 to be Ready and logged in") ||
		!strings.Contains(err.Error(), "the relay says: the relay is not logged in (NeedsLogin): register request: invalid key") {
		t.Fatalf("the failure must name what it waited for and the login error: %v", err)
	}
}

func TestTheCheckIgnoresTheStatusOfAnEarlierPod(t *testing.T) {
	c, _, _ := checkHarness(t, Status{PodUID: "uid-of-the-pod-before", Ready: true, BackendState: "Running", Port: 40000,
		Endpoints: []string{"192.0.2.10:40000"}}, "")
	err := c.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "has reported nothing yet") || !strings.Contains(err.Error(), "CrashLoopBackOff") {
		t.Fatalf("a status written by another pod must not pass the check, and the failure must show the pod's state: %v", err)
	}
}

func TestTheCheckWantsTheReleasesEndpoints(t *testing.T) {
	c, _, _ := checkHarness(t, Status{PodUID: "uid-0", Ready: true, BackendState: "Running", Port: 40000,
		Endpoints: []string{"192.0.2.10:40000"}}, "198.51.100.7:40000")
	err := c.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "to put port 40000 and endpoints 198.51.100.7:40000 in effect") ||
		!strings.Contains(err.Error(), "reports port 40000, endpoints 192.0.2.10:40000") {
		t.Fatalf("other endpoints than the release's must fail, naming both: %v", err)
	}
}

func TestTheCheckTimesOutNamingALoadBalancerThatNeverAnswers(t *testing.T) {
	c, api, _ := checkHarness(t, Status{PodUID: "uid-0", BackendState: "Running"}, "")
	api.put(svcPath, service("relay-0", "SingleStack"))
	err := c.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "waiting for Service relay-0 to get a LoadBalancer address") {
		t.Fatalf("%v", err)
	}
}

func TestTheCheckWaitsForALoadBalancerHostnameThatDoesNotResolveYet(t *testing.T) {
	c, api, logs := checkHarness(t, Status{PodUID: "uid-0", Ready: true, BackendState: "Running", Port: 40000,
		Endpoints: []string{"192.0.2.10:40000"}}, "")
	api.put(svcPath, service("relay-0", "SingleStack", map[string]any{"hostname": "nlb-1.elb.example.com"}))
	dns := &fakeResolver{answer: map[string][]netip.Addr{"nlb-1.elb.example.com": {netip.MustParseAddr("192.0.2.10")}},
		nxdomain: map[string]int{"nlb-1.elb.example.com": 5}}
	c.hosts.Resolver = dns
	c.cfg.Timeout = 2 * time.Second
	if err := c.Run(context.Background()); err != nil {
		t.Fatalf("a hostname that resolves after a while must be waited for: %v", err)
	}
	if !strings.Contains(logs.String(), "waiting for DNS") {
		t.Errorf("the check should say it waits for DNS:\n%s", logs.String())
	}
	// one that never resolves: the timeout says the check waited for DNS
	c, api, _ = checkHarness(t, Status{PodUID: "uid-0", Ready: true, BackendState: "Running", Port: 40000}, "")
	api.put(svcPath, service("relay-0", "SingleStack", map[string]any{"hostname": "nlb-1.elb.example.com"}))
	c.hosts.Resolver = &fakeResolver{nxdomain: map[string]int{"nlb-1.elb.example.com": 1 << 30}}
	err := c.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "waited for DNS") || !strings.Contains(err.Error(), "nlb-1.elb.example.com") {
		t.Fatalf("the timeout must say the hostname did not resolve: %v", err)
	}
}

// The agent process stops at once on SIGTERM (PID 1 of its container: the kubelet would otherwise wait out the
// grace period).
func TestTheAgentProcessExitsAtOnceOnSIGTERM(t *testing.T) {
	if os.Getenv("RELAY_AGENT_PROCESS") == "1" {
		os.Args = []string{"relay-agent", "run"}
		main()
		os.Exit(0)
	}
	ts, api := newFakeTailscaled(t), newFakeAPIServer(t)
	// RELAY_AGENT_TEST_EXEC: what runs this test binary (go test -exec), which runs its copy too: qemu-aarch64 for the
	// arm64 run of tests/unit/test_agent.py, as the kernel runs no arm64 binary on its own here (no binfmt_misc)
	name, args := os.Args[0], []string{"-test.run=TestTheAgentProcessExitsAtOnceOnSIGTERM"}
	if wrapper := os.Getenv("RELAY_AGENT_TEST_EXEC"); wrapper != "" {
		name, args = wrapper, append([]string{os.Args[0]}, args...)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "RELAY_AGENT_PROCESS=1", "POD_NAME=relay-0", "POD_UID=uid-0", "NAMESPACE=relays",
		"RELAY_PORT=40000", "TS_SOCKET="+ts.socket, "STATUS_CONFIGMAP=relay-status-0", "KUBE_API_URL="+api.server.URL,
		"LISTEN_ADDRESS=127.0.0.1:0")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	started := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the agent must exit 0 on SIGTERM: %v\n%s", err, out.String())
		}
		if !strings.Contains(out.String(), "stopping") {
			t.Errorf("the agent should say it stops: %s", out.String())
		}
		t.Logf("stopped %s after SIGTERM", time.Since(started).Round(time.Millisecond))
	case <-time.After(3 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the agent was still running 3 s after SIGTERM:\n%s", out.String())
	}
}

func pullingPod(api *fakeAPIServer, reason string) {
	api.put("/api/v1/namespaces/relays/pods/relay-0", map[string]any{
		"metadata": map[string]any{"name": "relay-0", "uid": "uid-0", "labels": map[string]any{"controller-revision-hash": "relay-abc"}},
		"status": map[string]any{"containerStatuses": []any{
			map[string]any{"name": "tailscale", "image": "ghcr.io/tailscale/tailscale:v1.104.7", "ready": false,
				"state": map[string]any{"waiting": map[string]any{"reason": "ContainerCreating"}}},
			map[string]any{"name": "agent", "image": "ghcr.io/nobody/relay-agent:0.4.0", "ready": false,
				"state": map[string]any{"waiting": map[string]any{"reason": reason,
					"message": `Back-off pulling image "ghcr.io/nobody/relay-agent:0.4.0"`}}}}}})
}

func TestTheCheckFailsLongBeforeItsTimeoutNamingAnImageTheKubeletCannotPull(t *testing.T) {
	c, api, _ := checkHarness(t, Status{}, "")
	c.cfg.Timeout, c.cfg.PullGrace = 20*time.Second, 100*time.Millisecond
	pullingPod(api, "ImagePullBackOff")
	started := time.Now()
	err := c.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "relay pod relay-0 cannot start") ||
		!strings.Contains(err.Error(), "image ghcr.io/nobody/relay-agent:0.4.0 of its container agent") ||
		!strings.Contains(err.Error(), "ImagePullBackOff") || !strings.Contains(err.Error(), "agent.image") {
		t.Fatalf("the failure must name the pod, the image and its container, and the values to fix: %v", err)
	}
	if took := time.Since(started); took > 10*time.Second {
		t.Fatalf("the check waited %s (its timeout is %s) for an image that cannot be pulled", took, c.cfg.Timeout)
	}
}

func TestAPullThatFailsForLessThanItsGraceIsWaitedFor(t *testing.T) {
	c, api, _ := checkHarness(t, Status{}, "")
	c.cfg.PullGrace = time.Hour
	pullingPod(api, "ErrImagePull")
	err := c.Run(context.Background())
	if err == nil || strings.Contains(err.Error(), "cannot start") || !strings.Contains(err.Error(), "timed out") ||
		!strings.Contains(err.Error(), "agent ErrImagePull") {
		t.Fatalf("a pull failing for less than PullGrace must be waited for, and shown at the timeout: %v", err)
	}
}

func TestTheCheckFailsForARelayNoPeerCanUseNamingWhy(t *testing.T) {
	why := "no peer may use this relay: the tailnet policy grants tailscale.com/cap/relay towards this node (tags none: a user's node) to no one"
	c, _, _ := checkHarness(t, Status{PodUID: "uid-0", Ready: true, BackendState: "Running", Port: 40000,
		Endpoints: []string{"192.0.2.10:40000"}, Unusable: []string{why}}, "")
	err := c.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "with peers able to use the relay") ||
		!strings.Contains(err.Error(), "but no peer can use it: "+why) {
		t.Fatalf("a relay no peer can use must fail the check with the agent's words: %v", err)
	}
}
