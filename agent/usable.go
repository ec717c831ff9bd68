package main

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"tailscale.com/health"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/tailcfg/peercap"
	"tailscale.com/tsconst"
)

// A relay that relays can still be of no use: no peer may use it, or peers cannot reach it. Neither makes it unready
// (readiness takes the pod out of its Service, which fixes neither, and a DERP outage would flap every relay at once);
// both are reported (Status.Unusable, a Warning Event) and fail the hook and helm test (check.go).

// relayGrant: the peer capability a peer needs towards a relay to allocate a session on it. tailscaled checks it on
// every allocation request, peer (src) to relay (dst), in the relay's own packet filter (wgengine/magicsock/
// magicsock.go L2525 nodeHasCap(c.filt, peer, c.self, peercap.Relay); tailscale.com v1.104.7).
const relayGrant = peercap.Relay

// peersEvery: how often the peers the policy lets use the relay are counted again (a status with every peer, whose
// size grows with the tailnet); sooner when the grant's sources change (Headscale lists each node's addresses, so
// they change as nodes come and go), but not more often than peersAgainAfter.
const (
	peersEvery      = 10 * time.Minute
	peersAgainAfter = time.Minute
)

// derpWarnings: tailscaled's health warnings that say the relay cannot hear its home DERP region, which is where peers
// send their allocation requests (wgengine/magicsock/relaymanager.go L1053-1056; health/warnings.go L135-209).
var derpWarnings = []health.WarnableCode{tsconst.HealthWarnableNoDERPHome, tsconst.HealthWarnableNoDERPConnection,
	tsconst.HealthWarnableDERPTimedOut}

// usable fills st.RelayGrantedFrom, st.RelayPeers and st.Unusable: who may use the relay, and why no peer can.
func (a *Agent) usable(ctx context.Context, st *Status, self *ipnstate.PeerStatus) {
	callCtx, cancel := a.localCall(ctx)
	rules, err := a.ts.DebugPacketFilterRules(callCtx)
	cancel()
	if err != nil {
		a.noteLocal(err)
		st.Warnings = append(st.Warnings, fmt.Sprintf("cannot read tailscaled's packet filter, so who may use the "+
			"relay is unknown: %v", err))
	} else {
		st.RelayGrantedFrom = grantedFrom(rules, self.TailscaleIPs)
		if len(st.RelayGrantedFrom) == 0 {
			a.relayPeers = relayPeers{}
			st.Unusable = append(st.Unusable, fmt.Sprintf("no peer may use this relay: the tailnet policy grants %s "+
				"towards this node (tags %s) to no one. Add a grant whose dst covers it, e.g. "+
				`{"src": ["autogroup:member"], "dst": ["tag:relay"], "app": {%q: []}}`+
				", with every device that should use the relay in src", relayGrant, tagsOf(self), relayGrant))
		} else {
			st.RelayPeers = a.countPeers(ctx, st.RelayGrantedFrom)
		}
	}
	a.mu.Lock()
	for _, code := range derpWarnings {
		if w, ok := a.health[code]; ok {
			st.Unusable = append(st.Unusable, fmt.Sprintf("peers cannot reach this relay: it does not hear its home "+
				"DERP region (tailscaled: %s), and peers ask a relay for a session over DERP. Let the relay reach its "+
				"DERP servers: egress to TCP 443 (and 80) and UDP 3478 (an egress NetworkPolicy, a firewall, a proxy)",
				strings.TrimSpace(w.Text)))
			break
		}
	}
	a.mu.Unlock()
	if reason := strings.Join(st.Unusable, "; "); reason != "" {
		a.events.Once("Warning", "RelayNotUsable", reason)
	} else if len(st.RelayGrantedFrom) > 0 && st.RelayPeers >= 0 {
		a.events.Once("Normal", "RelayUsable", fmt.Sprintf("%d peer(s) of the tailnet may use this relay (%s "+
			"granted from %s)", st.RelayPeers, relayGrant, strings.Join(st.RelayGrantedFrom, ", ")))
	}
}

// grantedFrom: the sources the packet filter grants the relay capability from, towards one of SELF's addresses
// (the CapGrant rules, as wgengine/filter/tailcfg.go L98-113 reads them), in order, without repeats.
func grantedFrom(rules []tailcfg.FilterRule, self []netip.Addr) []string {
	var from []string
	for _, rule := range rules {
		for _, grant := range rule.CapGrant {
			_, inMap := grant.CapMap[relayGrant]
			if !inMap && !slices.Contains(grant.Caps, relayGrant) {
				continue
			}
			towardsSelf := slices.ContainsFunc(grant.Dsts, func(dst netip.Prefix) bool {
				return slices.ContainsFunc(self, dst.Contains)
			})
			if !towardsSelf {
				continue
			}
			for _, src := range rule.SrcIPs {
				if !slices.Contains(from, src) {
					from = append(from, src)
				}
			}
		}
	}
	return from
}

// relayPeers: the last count of the peers the grant covers (countPeers), and what it was counted for.
type relayPeers struct {
	from  string
	at    time.Time
	count int
}

// countPeers: how many peers of the tailnet have an address in FROM; counted again when FROM changes or every
// peersEvery (-1 while it cannot be counted).
func (a *Agent) countPeers(ctx context.Context, from []string) int {
	key := strings.Join(from, ",")
	since := a.now().Sub(a.relayPeers.at)
	if !a.relayPeers.at.IsZero() && (since < peersAgainAfter || a.relayPeers.from == key && since < peersEvery) {
		return a.relayPeers.count
	}
	callCtx, cancel := a.localCall(ctx)
	status, err := a.ts.Status(callCtx)
	cancel()
	if err != nil {
		a.noteLocal(err)
		return -1
	}
	count := 0
	for _, peer := range status.Peer {
		if slices.ContainsFunc(peer.TailscaleIPs, func(ip netip.Addr) bool { return inSources(from, ip) }) {
			count++
		}
	}
	a.relayPeers = relayPeers{from: key, at: a.now(), count: count}
	return count
}

// inSources: IP is in one of a filter rule's SrcIPs: "*", an address, a prefix or a range "a-b"
// (wgengine/filter/tailcfg.go parseIPSet).
func inSources(sources []string, ip netip.Addr) bool {
	for _, src := range sources {
		if src == "*" {
			return true
		}
		if from, to, isRange := strings.Cut(src, "-"); isRange {
			lo, err1 := netip.ParseAddr(from)
			hi, err2 := netip.ParseAddr(to)
			if err1 == nil && err2 == nil && lo.BitLen() == ip.BitLen() && lo.Compare(ip) <= 0 && ip.Compare(hi) <= 0 {
				return true
			}
			continue
		}
		if prefix, err := netip.ParsePrefix(src); err == nil && prefix.Contains(ip) {
			return true
		}
		if addr, err := netip.ParseAddr(src); err == nil && addr == ip {
			return true
		}
	}
	return false
}

func tagsOf(self *ipnstate.PeerStatus) string {
	if self.Tags == nil || self.Tags.Len() == 0 {
		return "none: a user's node"
	}
	return strings.Join(self.Tags.AsSlice(), ", ")
}
