package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"tailscale.com/health"
	"tailscale.com/tsconst"
)

func TestARelayTheGrantCoversSaysHowManyPeersMayUseIt(t *testing.T) {
	h := startRelaying(t, nil, nil)
	waitFor(t, "the status to count the two peers the grant covers, and nothing unusable", func() (bool, string) {
		st := h.agent.Current()
		return st.RelayPeers == 2 && len(st.RelayGrantedFrom) == 4 && len(st.Unusable) == 0, fmt.Sprintf("%+v", st)
	})
	waitFor(t, "a RelayUsable Event", func() (bool, string) {
		return slices.Contains(h.api.eventReasons(), "RelayUsable"), fmt.Sprint(h.api.eventReasons())
	})
}

func TestARelayNoPeerMayUseStaysReadyAndSaysWhichGrantIsMissing(t *testing.T) {
	h := startRelaying(t, nil, func(h *harness) {
		h.ts.noRelayGrant = true
	})
	waitFor(t, "the status to say no peer may use the relay, naming the grant and the node's tags", func() (bool, string) {
		st := h.agent.Current()
		said := strings.Join(st.Unusable, "; ")
		return st.Ready && strings.Contains(said, "no peer may use this relay") &&
			strings.Contains(said, `"tailscale.com/cap/relay": []`) && strings.Contains(said, "tags tag:relay"), fmt.Sprintf("%+v", st)
	})
	waitFor(t, "a RelayNotUsable Event", func() (bool, string) {
		return slices.Contains(h.api.eventReasons(), "RelayNotUsable"), fmt.Sprint(h.api.eventReasons())
	})
}

func TestARelayThatDoesNotHearItsHomeDERPRegionSaysPeersCannotReachIt(t *testing.T) {
	// tailscaled's text for no-derp-connection (health/warnings.go L148-175)
	text := "Tailscale could not connect to the 'Headscale Embedded DERP' relay server. Your Internet connection might " +
		"be down, or the server might be temporarily unavailable."
	h := startRelaying(t, nil, func(h *harness) {
		h.ts.health = map[health.WarnableCode]health.UnhealthyState{tsconst.HealthWarnableNoDERPConnection: {
			WarnableCode: tsconst.HealthWarnableNoDERPConnection, Text: text}}
	})
	waitFor(t, "the status to say peers cannot reach the relay, with tailscaled's words and the egress it needs", func() (bool, string) {
		st := h.agent.Current()
		said := strings.Join(st.Unusable, "; ")
		return st.Ready && strings.Contains(said, "does not hear its home DERP region") && strings.Contains(said, text) &&
			strings.Contains(said, "TCP 443"), fmt.Sprintf("%+v", st)
	})
}
