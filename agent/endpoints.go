package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Resolver turns a load balancer's hostname (an AWS NLB's, say) into addresses. net.DefaultResolver in the agent.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// HostnameCache resolves load balancer hostnames again every Refresh and keeps the last answer while DNS fails: a
// DNS outage must not take the relay's endpoints away.
type HostnameCache struct {
	Resolver Resolver
	Refresh  time.Duration
	Now      func() time.Time

	mu      sync.Mutex
	answers map[string]hostnameAnswer
}

type hostnameAnswer struct {
	addrs []netip.Addr
	at    time.Time
}

// Lookup returns HOST's addresses, from the cache while they are fresh; a failed lookup keeps the last answer and
// says so in warning.
func (c *HostnameCache) Lookup(ctx context.Context, host string) (addrs []netip.Addr, warning string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.Now()
	last, have := c.answers[host]
	if have && now.Sub(last.at) < c.Refresh {
		return last.addrs, "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	found, err := c.Resolver.LookupNetIP(ctx, "ip", host)
	if err == nil && len(found) == 0 {
		err = fmt.Errorf("no address")
	}
	if err != nil {
		if have {
			return last.addrs, fmt.Sprintf("cannot resolve %s again (%v); keeping its last addresses", host, err), nil
		}
		return nil, "", fmt.Errorf("cannot resolve the load balancer's hostname %s: %w", host, err)
	}
	for i := range found {
		found[i] = found[i].Unmap()
	}
	slices.SortFunc(found, func(a, b netip.Addr) int { return a.Compare(b) })
	found = slices.Compact(found)
	if c.answers == nil {
		c.answers = map[string]hostnameAnswer{}
	}
	c.answers[host] = hostnameAnswer{addrs: found, at: now}
	return found, "", nil
}

// Waiting is an error that is a normal state, not a fault: the Service has no (complete) address yet.
type Waiting struct{ Reason string }

func (w Waiting) Error() string { return w.Reason }

// ServiceEndpoints returns the endpoints a relay advertises for its Service: every load balancer address (hostnames
// resolved) with PORT, IPv4 first, as tailscale sorts them. A RequireDualStack Service is not done until it has
// an address of each family.
func ServiceEndpoints(ctx context.Context, svc *Service, port uint16, hosts *HostnameCache) (eps []netip.AddrPort, warning string, err error) {
	var addrs []netip.Addr
	var warnings []string
	for _, ingress := range svc.Status.LoadBalancer.Ingress {
		switch {
		case ingress.IP != "":
			addr, err := netip.ParseAddr(ingress.IP)
			if err != nil {
				return nil, "", fmt.Errorf("Service %s: load balancer address %q: %w", svc.Metadata.Name, ingress.IP, err)
			}
			addrs = append(addrs, addr.Unmap())
		case ingress.Hostname != "":
			found, warn, err := hosts.Lookup(ctx, ingress.Hostname)
			if err != nil {
				return nil, "", err
			}
			if warn != "" {
				warnings = append(warnings, warn)
			}
			addrs = append(addrs, found...)
		}
	}
	if len(addrs) == 0 {
		return nil, "", Waiting{fmt.Sprintf("waiting for Service %s to get a load balancer address", svc.Metadata.Name)}
	}
	eps = sortedEndpoints(addrs, port)
	if svc.Spec.IPFamilyPolicy == "RequireDualStack" && len(Families(eps)) < 2 {
		return nil, "", Waiting{fmt.Sprintf("waiting for Service %s (RequireDualStack) to get an address of each family; has %s",
			svc.Metadata.Name, JoinEndpoints(eps))}
	}
	return eps, strings.Join(warnings, "; "), nil
}

func sortedEndpoints(addrs []netip.Addr, port uint16) []netip.AddrPort {
	eps := make([]netip.AddrPort, 0, len(addrs))
	for _, addr := range addrs {
		eps = append(eps, netip.AddrPortFrom(addr, port))
	}
	SortEndpoints(eps)
	return slices.Compact(eps)
}

// SortEndpoints sorts IPv4 first, then by address: the order in which endpoint lists are compared.
func SortEndpoints(eps []netip.AddrPort) {
	slices.SortFunc(eps, func(a, b netip.AddrPort) int {
		if a.Addr().Is4() != b.Addr().Is4() {
			if a.Addr().Is4() {
				return -1
			}
			return 1
		}
		return a.Compare(b)
	})
}

// ParseEndpoints reads "IPv4:port,[IPv6]:port" (relay.staticEndpoints).
func ParseEndpoints(list string) ([]netip.AddrPort, error) {
	var eps []netip.AddrPort
	for _, field := range strings.Split(list, ",") {
		if field = strings.TrimSpace(field); field == "" {
			continue
		}
		ep, err := netip.ParseAddrPort(field)
		if err != nil {
			return nil, fmt.Errorf("endpoint %q: %w", field, err)
		}
		eps = append(eps, netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port()))
	}
	SortEndpoints(eps)
	return slices.Compact(eps), nil
}

// SameEndpoints reports whether a and b are the same set of endpoints, in any order and spelling.
func SameEndpoints(a, b []netip.AddrPort) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	SortEndpoints(a)
	SortEndpoints(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func JoinEndpoints(eps []netip.AddrPort) string {
	parts := make([]string, len(eps))
	for i, ep := range eps {
		parts[i] = ep.String()
	}
	return strings.Join(parts, ",")
}

// Families of the endpoints: "IPv4", "IPv6", in that order.
func Families(eps []netip.AddrPort) []string {
	var v4, v6 bool
	for _, ep := range eps {
		if ep.Addr().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	var families []string
	if v4 {
		families = append(families, "IPv4")
	}
	if v6 {
		families = append(families, "IPv6")
	}
	return families
}

// UDPSockets reads the kernel's socket tables (/proc/net/udp, /proc/net/udp6) of this pod's network namespace.
type UDPSockets struct {
	IPv4Table, IPv6Table string
}

// Bound reports whether a socket of the family holds UDP PORT.
func (s UDPSockets) Bound(family string, port uint16) (bool, error) {
	table := s.IPv4Table
	if family == "IPv6" {
		table = s.IPv6Table
	}
	f, err := os.Open(table)
	if err != nil {
		return false, err
	}
	defer f.Close()
	suffix := fmt.Sprintf(":%04X", port)
	scanner := bufio.NewScanner(f)
	scanner.Scan() // header
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) > 1 && strings.HasSuffix(fields[1], suffix) {
			return true, nil
		}
	}
	return false, scanner.Err()
}
