package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// envTags is Env's fields by name: the variable their env tag names and its options (commands, "default").
func envTags() map[string][]string {
	tags := map[string][]string{}
	fields := reflect.TypeFor[Env]()
	for i := range fields.NumField() {
		tags[fields.Field(i).Name] = strings.Split(fields.Field(i).Tag.Get("env"), ",")
	}
	return tags
}

// Each of Env's fields reads one variable, the one its env tag names, for the commands the tag names; tests/unit/
// test_agent_env.py reads the same tags to hold the chart's environments to them.
func TestEachEnvFieldReadsTheVariableItsTagNames(t *testing.T) {
	env := reflect.ValueOf(readEnv(func(name string) string { return "value of " + name }))
	seen := map[string]string{}
	for field, tag := range envTags() {
		name, options := tag[0], tag[1:]
		if name == "" || strings.ToUpper(name) != name {
			t.Errorf("Env.%s: its env tag %q must start with the variable's name, in capitals", field, tag)
		}
		if other, twice := seen[name]; twice {
			t.Errorf("Env.%s and Env.%s both read %s", field, other, name)
		}
		seen[name] = field
		got := env.FieldByName(field).Interface().(envVar)
		if got.name != name || got.value != "value of "+name {
			t.Errorf("Env.%s read %+v, want the variable %s", field, got, name)
		}
		if !slices.Contains(options, "run") && !slices.Contains(options, "check") {
			t.Errorf("Env.%s: its env tag %q names neither command (run, check) that reads it", field, tag)
		}
		for _, option := range options {
			if option != "run" && option != "check" && option != "default" {
				t.Errorf("Env.%s: its env tag %q has %q: want run, check or default", field, tag, option)
			}
		}
	}
}

// envReaders: the functions that turn Env into each command's configuration. A function with an Env parameter that
// is not here may pass it on, not read its fields.
var envReaders = map[string]string{"configFromEnv": "run", "run": "run", "checkConfigFromEnv": "check"}

// What each command reads of Env is what the env tags say it reads, and no code but main and InClusterKube (the API
// server's address: Kubernetes' environment, not the chart's) reads the environment itself.
func TestEachCommandReadsTheEnvFieldsItsTagsNameAndNothingReadsTheEnvironmentBesideEnv(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	read := map[string][]string{}
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		parsed, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range parsed.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			param := ""
			for _, field := range fn.Type.Params.List {
				if typ, ok := field.Type.(*ast.Ident); ok && typ.Name == "Env" && len(field.Names) == 1 {
					param = field.Names[0].Name
				}
			}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				x, ok := sel.X.(*ast.Ident)
				switch {
				case !ok:
				case x.Name == "os" && slices.Contains([]string{"Getenv", "LookupEnv", "Environ"}, sel.Sel.Name):
					if fn.Name.Name != "main" && fn.Name.Name != "InClusterKube" {
						t.Errorf("%s: %s reads the environment (os.%s): read it through Env", file, fn.Name.Name, sel.Sel.Name)
					}
				case param != "" && x.Name == param:
					command, ok := envReaders[fn.Name.Name]
					if !ok {
						t.Errorf("%s: %s reads Env.%s: add it to envReaders with its command", file, fn.Name.Name, sel.Sel.Name)
					}
					read[command] = append(read[command], sel.Sel.Name)
				}
				return true
			})
		}
	}
	for field, tag := range envTags() {
		for _, command := range []string{"run", "check"} {
			if tagged, reads := slices.Contains(tag[1:], command), slices.Contains(read[command], field); tagged != reads {
				t.Errorf("Env.%s (%s): its env tag %q says %s reads it: %v; the code: %v", field, tag[0], strings.Join(tag, ","),
					command, tagged, reads)
			}
		}
	}
}

// Each variable lands in its own field of the command's configuration, and what is unset is named.
func TestEachCommandsConfigurationIsMadeOfItsVariables(t *testing.T) {
	vars := map[string]string{"POD_NAME": "relay-0", "POD_UID": "uid-0", "NAMESPACE": "relays", "RELAY_PORT": "40000",
		"STATIC_ENDPOINTS": "192.0.2.10:40000", "TS_SOCKET": "/tmp/tailscaled.sock", "STATUS_CONFIGMAP": "status-0",
		"RESYNC_SECONDS": "30", "RETRY_SECONDS": "1.5", "RESOLVE_SECONDS": "61", "RELOGIN_AFTER_SECONDS": "120",
		"UDP6_TABLE": "/udp6", "STATEFULSET": "relay", "PODS": "relay-0,relay-1", "STATUS_CONFIGMAPS": "status-0,status-1",
		"TIMEOUT_SECONDS": "240", "INTERVAL_SECONDS": "3"}
	env := readEnv(func(name string) string { return vars[name] })
	static := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.10:40000")}
	cfg, err := configFromEnv(env)
	want := Config{Pod: "relay-0", PodUID: "uid-0", Namespace: "relays", Service: "relay-0", StatusConfigMap: "status-0",
		Port: 40000, Static: static, Resync: 30 * time.Second, Retry: 1500 * time.Millisecond,
		ResolveEvery: 61 * time.Second, LoginServer: "https://controlplane.tailscale.com", ReloginAfter: 2 * time.Minute,
		PollBackoff: mapPollMaxBackoff, Sockets: UDPSockets{IPv4Table: "/proc/net/udp", IPv6Table: "/udp6"}}
	if err != nil || !reflect.DeepEqual(cfg, want) {
		t.Errorf("configFromEnv: %v\n got %+v\nwant %+v", err, cfg, want)
	}
	checkCfg, err := checkConfigFromEnv("verify", env)
	wantCheck := CheckConfig{Mode: "verify", Namespace: "relays", StatefulSet: "relay", Pods: []string{"relay-0", "relay-1"},
		StatusMaps: []string{"status-0", "status-1"}, Port: 40000, Static: static, Timeout: 4 * time.Minute,
		Interval: 3 * time.Second, PullGrace: pullGrace}
	if err != nil || !reflect.DeepEqual(checkCfg, wantCheck) {
		t.Errorf("checkConfigFromEnv: %v\n got %+v\nwant %+v", err, checkCfg, wantCheck)
	}
	env.PodUID.value, env.Socket.value = "", ""
	if _, err := configFromEnv(env); err == nil || err.Error() != "environment variables unset: POD_UID, TS_SOCKET (the chart sets them)" {
		t.Errorf("configFromEnv without POD_UID and TS_SOCKET: %v", err)
	}
}
