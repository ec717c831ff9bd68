module tailscale-peer-relay-chart/agent

go 1.27.4

require (
	golang.org/x/crypto/x509roots/fallback v0.0.0-20260113154411-7d0074ccc6f1
	tailscale.com v1.104.7
)

require (
	filippo.io/edwards25519 v1.2.0 // indirect
	github.com/akutz/memconn v0.1.0 // indirect
	github.com/coder/websocket v1.8.15 // indirect
	github.com/dblohm7/wingoes v0.0.0-20260526185140-fb298caac7ca // indirect
	github.com/fxamacker/cbor/v2 v2.9.3 // indirect
	github.com/go-json-experiment/json v0.0.0-20260820222146-c27c302e5fc3 // indirect
	github.com/google/go-cmp v0.7.0 // indirect
	github.com/hdevalence/ed25519consensus v0.2.0 // indirect
	github.com/jsimonetti/rtnetlink v1.4.2 // indirect
	github.com/mdlayher/netlink v1.11.2 // indirect
	github.com/mdlayher/socket v0.7.0 // indirect
	github.com/mitchellh/go-ps v1.0.0 // indirect
	github.com/tailscale/go-winio v0.0.0-20231025203758-c4f33415bf55 // indirect
	github.com/x448/float16 v0.8.4 // indirect
	go4.org/mem v0.0.0-20240501181205-ae6ca9944745 // indirect
	go4.org/netipx v0.0.0-20260823151212-3075585bcbeb // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/exp v0.0.0-20260908205506-85c1c2202aba // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sync v0.24.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.zx2c4.com/wireguard/windows v1.0.1 // indirect
)

// Graph only: the module proxy here refuses three versions tailscale.com v1.104.7 pins (scripts/versions.env,
// TAILSCALE_TEST_REPLACE, the same lines); none of their packages is linked into relay-agent (go list -deps).
replace gvisor.dev/gvisor => gvisor.dev/gvisor v0.0.0-20260905035102-160fafc42237

replace github.com/tailscale/gliderssh => github.com/tailscale/gliderssh v0.3.4-0.20260716005906-1a0f895faf28

replace github.com/tailscale/wireguard-go => github.com/tailscale/wireguard-go v0.0.0-20260928213032-417aef361226
