package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// CheckConfig is what the hook Job and the helm test Pod check: their environment (Env), as checkConfigFromEnv
// reads it.
type CheckConfig struct {
	Mode        string // apply (the hook) or verify (helm test): the same checks, named in the log
	Namespace   string
	StatefulSet string
	Pods        []string // replica N's pod; its Service has the same name
	StatusMaps  []string // replica N's status ConfigMap
	Port        uint16
	Static      []netip.AddrPort
	Timeout     time.Duration
	Interval    time.Duration
	PullGrace   time.Duration // a relay pod whose image pull fails this long fails the check at once (pullGrace)
}

// pullGrace: how long a relay pod's image pull may fail before the check gives up on it, well before Helm's timeout
// (hook.imagePullGraceSeconds, IMAGE_PULL_GRACE_SECONDS; this by default).
// The kubelet retries a failed pull after 10, 20 and 40 s (its image back-off), so 45 s is three tries: enough for a
// registry's hiccup, and a wrong image name or a missing pull Secret is named within a minute.
const pullGrace = 45 * time.Second

// pullFailures: the waiting reasons of a container whose image the kubelet cannot pull (kubelet/images/types.go).
var pullFailures = map[string]bool{"ErrImagePull": true, "ImagePullBackOff": true, "InvalidImageName": true,
	"ErrImageNeverPull": true}

// Check waits until every replica of the current StatefulSet revision reports, through its agent's status, that it
// relays with the release's port and endpoints; or fails naming what it waited for and what it saw last.
type Check struct {
	cfg      CheckConfig
	kube     *Kube
	hosts    *HostnameCache
	logf     func(string, ...any)
	deadline time.Time
	pulling  map[string]time.Time // container (pod/name) → when its image pull was first seen failing
}

func NewCheck(cfg CheckConfig, kube *Kube, resolver Resolver) *Check {
	if cfg.PullGrace == 0 {
		cfg.PullGrace = pullGrace
	}
	return &Check{cfg: cfg, kube: kube, logf: log.Printf, pulling: map[string]time.Time{},
		hosts: &HostnameCache{Resolver: resolver, Refresh: 0, Now: time.Now}}
}

// waitFor retries try (which returns done, and what it saw) every Interval until done or the deadline.
func (c *Check) waitFor(ctx context.Context, what string, try func() (bool, string)) error {
	for {
		done, saw := try()
		if done {
			return nil
		}
		if !time.Now().Before(c.deadline) {
			if saw != "" {
				saw = "; " + saw
			}
			return fmt.Errorf("timed out after %s waiting for %s%s", c.cfg.Timeout, what, saw)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(c.cfg.Interval):
		}
	}
}

func (c *Check) Run(ctx context.Context) error {
	c.deadline = time.Now().Add(c.cfg.Timeout)
	c.logf("%s: release StatefulSet %s in namespace %s: %d replica(s), relay port %d, timeout %s", c.cfg.Mode,
		c.cfg.StatefulSet, c.cfg.Namespace, len(c.cfg.Pods), c.cfg.Port, c.cfg.Timeout)
	var revision string
	err := c.waitFor(ctx, "StatefulSet "+c.cfg.StatefulSet+" to report its current revision", func() (bool, string) {
		var sts StatefulSet
		if err := c.kube.Get(ctx, statefulSetPath(c.cfg.Namespace, c.cfg.StatefulSet), &sts); err != nil {
			return false, err.Error()
		}
		revision = sts.Status.UpdateRevision
		return sts.Status.ObservedGeneration == sts.Metadata.Generation && revision != "",
			fmt.Sprintf("generation %d, observed %d", sts.Metadata.Generation, sts.Status.ObservedGeneration)
	})
	if err != nil {
		return err
	}
	for i, pod := range c.cfg.Pods {
		if err := c.replica(ctx, pod, c.cfg.StatusMaps[i], revision); err != nil {
			return err
		}
	}
	c.logf("%s: all %d relay(s) relaying", c.cfg.Mode, len(c.cfg.Pods))
	return nil
}

func (c *Check) replica(ctx context.Context, name, statusMap, revision string) error {
	c.logf("%s: waiting for relay pod %s (revision %s) to be Ready and logged in to the tailnet", c.cfg.Mode, name, revision)
	var uid string
	var status *Status
	readStatus := func() string {
		status = nil
		var cm ConfigMap
		if err := c.kube.Get(ctx, configMapPath(c.cfg.Namespace, statusMap), &cm); err != nil {
			return "cannot read the relay agent's status ConfigMap " + statusMap + ": " + err.Error()
		}
		var st Status
		if err := json.Unmarshal([]byte(cm.Data["status.json"]), &st); err != nil || st.PodUID != uid {
			return "the relay agent of this pod has reported nothing yet"
		}
		status = &st
		return ""
	}
	// saw: what the agent says, or the pod's own state when the agent has said nothing
	saw := func(podState string) string {
		if status == nil {
			return podState
		}
		if status.Ready && len(status.Unusable) > 0 {
			return fmt.Sprintf("the relay relays on port %d, endpoints %s, but no peer can use it: %s", status.Port,
				strings.Join(status.Endpoints, ","), strings.Join(status.Unusable, "; "))
		}
		if status.Ready {
			return fmt.Sprintf("the relay agent reports port %d, endpoints %s", status.Port, strings.Join(status.Endpoints, ","))
		}
		return "the relay says: " + status.Reason
	}
	var cannotPull error
	err := c.waitFor(ctx, fmt.Sprintf("relay pod %s to be Ready and logged in to the tailnet (kubectl describe pod %s)", name, name), func() (bool, string) {
		var pod Pod
		if err := c.kube.Get(ctx, podPath(c.cfg.Namespace, name), &pod); err != nil {
			return false, err.Error()
		}
		if pod.Metadata.Labels["controller-revision-hash"] != revision || pod.Metadata.DeletionTimestamp != nil {
			return false, fmt.Sprintf("pod %s runs revision %s (terminating: %t)", name,
				pod.Metadata.Labels["controller-revision-hash"], pod.Metadata.DeletionTimestamp != nil)
		}
		if cannotPull = c.imagePull(&pod); cannotPull != nil {
			return true, ""
		}
		uid = pod.Metadata.UID
		podState := containerStates(&pod)
		if problem := readStatus(); problem != "" {
			return false, problem + "; " + podState
		}
		return status.BackendState == "Running", saw(podState)
	})
	if err == nil {
		err = cannotPull
	}
	if err != nil {
		return err
	}

	endpoints := c.cfg.Static
	if len(endpoints) > 0 {
		c.logf("%s: %s: using relay.staticEndpoints %s", c.cfg.Mode, name, JoinEndpoints(endpoints))
	} else {
		c.logf("%s: %s: waiting for Service %s to get a load balancer address", c.cfg.Mode, name, name)
		waitingForDNS := false
		err := c.waitFor(ctx, fmt.Sprintf("Service %s to get a LoadBalancer address (is a load balancer controller serving it? see kubectl describe service %s)", name, name), func() (bool, string) {
			var svc Service
			if err := c.kube.Get(ctx, servicePath(c.cfg.Namespace, name), &svc); err != nil {
				return false, err.Error()
			}
			eps, _, err := ServiceEndpoints(ctx, &svc, c.cfg.Port, c.hosts)
			if err != nil {
				var waiting Waiting
				var dnsErr *net.DNSError
				if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
					// A new cloud load balancer's hostname (an AWS NLB's) is in the Service's status before it
					// resolves, for a minute or more: the agent waits for it, and so does the check, within its timeout.
					if !waitingForDNS {
						c.logf("%s: %s: waiting for DNS: the load balancer's hostname does not resolve yet (a new cloud "+
							"load balancer's name can take minutes): %v", c.cfg.Mode, name, err)
						waitingForDNS = true
					}
					return false, "waited for DNS: the load balancer's hostname does not resolve yet: " + err.Error()
				}
				if !errors.As(err, &waiting) {
					return false, err.Error()
				}
				return false, "Service status: " + describeIngress(&svc)
			}
			endpoints = eps
			return true, ""
		})
		if err != nil {
			return err
		}
		c.logf("%s: %s: discovered endpoints %s from Service %s", c.cfg.Mode, name, JoinEndpoints(endpoints), name)
	}

	c.logf("%s: %s: waiting for the relay agent to report port %d and endpoints %s in effect", c.cfg.Mode, name, c.cfg.Port, JoinEndpoints(endpoints))
	// and for peers to be able to use it: the policy lets some use it, and it hears its home DERP region
	err = c.waitFor(ctx, fmt.Sprintf("the relay agent of %s to put port %d and endpoints %s in effect, with peers "+
		"able to use the relay (kubectl describe pod %s)", name, c.cfg.Port, JoinEndpoints(endpoints), name), func() (bool, string) {
		if problem := readStatus(); problem != "" {
			return false, problem
		}
		eps, _ := ParseEndpoints(strings.Join(status.Endpoints, ","))
		return status.Ready && status.Port == c.cfg.Port && SameEndpoints(eps, endpoints) && len(status.Unusable) == 0,
			saw("")
	})
	if err != nil {
		return err
	}
	peers := "peers that may use it: not counted"
	if status.RelayPeers >= 0 {
		peers = fmt.Sprintf("%d peer(s) may use it", status.RelayPeers)
	}
	c.logf("%s: %s: relaying on port %d with endpoints %s (UDP port bound for %s); %s", c.cfg.Mode, name, status.Port,
		strings.Join(status.Endpoints, ","), strings.Join(status.BoundFamilies, " and "), peers)
	return nil
}

// imagePull: an error naming the image of POD that the kubelet has failed to pull for PullGrace, or nil.
func (c *Check) imagePull(pod *Pod) error {
	for _, s := range slices.Concat(pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses) {
		key := pod.Metadata.Name + "/" + s.Name
		if s.State.Waiting == nil || !pullFailures[s.State.Waiting.Reason] {
			delete(c.pulling, key)
			continue
		}
		since, seen := c.pulling[key]
		if !seen {
			c.pulling[key] = time.Now()
			continue
		}
		if failing := time.Since(since); failing >= c.cfg.PullGrace {
			return fmt.Errorf("relay pod %s cannot start: the kubelet has not pulled image %s of its container %s for "+
				"%s (%s: %s). Check the image's name and tag (image.* for tailscale, agent.image.* for agent), that "+
				"the registry serves it for this node's platform, and imagePullSecrets", pod.Metadata.Name, s.Image,
				s.Name, failing.Round(time.Second), s.State.Waiting.Reason, s.State.Waiting.Message)
		}
	}
	return nil
}

func containerStates(pod *Pod) string {
	var states []string
	for _, s := range pod.Status.ContainerStatuses {
		state := "running"
		if s.State.Waiting != nil {
			state = s.State.Waiting.Reason
		}
		states = append(states, fmt.Sprintf("%s %s (ready %t, restarts %d)", s.Name, state, s.Ready, s.RestartCount))
	}
	if len(states) == 0 {
		return "no container has started"
	}
	return "containers: " + strings.Join(states, ", ")
}

func describeIngress(svc *Service) string {
	data, _ := json.Marshal(svc.Status.LoadBalancer)
	return string(data)
}
