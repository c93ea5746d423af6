package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/nfsteer/nfsteer/internal/keytest"
	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/signing"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/nfsteer/nfsteer/tests/redislab"
	"github.com/redis/go-redis/v9"
	"gopkg.in/yaml.v3"
)

// result is what one run of the command line gave.
type result struct {
	code           int
	stdout, stderr string
}

// nfsteer runs the command line in-process against the Redis in NFSTEER_REDIS.
func nfsteer(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"nfsteer"}, args...), &out, &errb)
	return result{code, out.String(), errb.String()}
}

// labMapFile writes the lab map (labmap.Firewall) to a file of the test's
// and returns its path.
func labMapFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lab.yaml")
	if err := os.WriteFile(path, []byte(labmap.Firewall), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// labRedis starts a redis-server holding the lab map as version 1.
func labRedis(t *testing.T) *store.Store {
	t.Helper()
	srv := redislab.Start(t, redislab.Options{})
	t.Setenv("NFSTEER_REDIS", srv.URL)
	if r := nfsteer(t, "apply", "-f", labMapFile(t)); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	s, err := store.Open(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// liveTable is the live map in s, compiled.
func liveTable(t *testing.T, s *store.Store) *steering.Table {
	t.Helper()
	p, err := s.Live(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tab, err := steering.CompilePublished(p)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func liveVersion(t *testing.T, s *store.Store) uint64 {
	t.Helper()
	v, err := s.LiveVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// An edit's own mistakes are named before Redis is read: with Redis
// unreachable, a malformed tenant, service or instance is reported, not
// the connection (which a well-formed edit reports).
func TestCLINamesBadInputBeforeRedis(t *testing.T) {
	const down = "redis://127.0.0.1:1"
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"a prefix that is none", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/33", "--chain", "fw"}, `tenants.initech.prefixes[0]: "10.30.0.0/33" is not a CIDR prefix`},
		{"a service twice in a chain", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw,dlp,fw"}, `tenants.initech.chain[2]: service "fw" appears twice in the chain`},
		{"an ingress that is not an interface name", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--ingress", "eth1/2"}, "tenants.initech.ingress[0]"},
		{"a snat address that is none", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--ingress", "c3", "--snat", "10.61.0"}, `tenants.initech.snat: "10.61.0" is not an IP address`},
		{"a service's instance with a bad address", []string{"service", "add", "ids", "--instance", "ids-1=10.200.0.300"}, `services.ids.instances.ids-1[0]: "10.200.0.300" is not an IP address`},
		{"a service with an unknown function", []string{"service", "add", "ids", "--function", "inspect", "--instance", "ids-1=10.200.0.31"}, `services.ids.function: unknown function "inspect"`},
		{"an instance with a bad address", []string{"instance", "add", "--service", "dlp", "dlp-3", "10.200.0.300"}, `services.dlp.instances.dlp-3[0]: "10.200.0.300" is not an IP address`},
		{"an instance with a bad name", []string{"instance", "add", "--service", "dlp", "dlp 3", "10.200.0.31"}, `services.dlp.instances.dlp 3: name "dlp 3" must be`},
		{"a well-formed tenant", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw"}, "connecting to Redis at 127.0.0.1:1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := nfsteer(t, append(tt.args, "--redis", down)...)
			if r.code != 1 || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("nfsteer %s with Redis down: exit %d, stderr %q; want exit 1 and %q", strings.Join(tt.args, " "), r.code, r.stderr, tt.want)
			}
		})
	}
}

// Every wrong thing people type gives a message naming what was wrong, a
// non-zero status (2 for usage errors), and leaves the live map version as
// it was.
func TestCLIRefusesBadInput(t *testing.T) {
	s := labRedis(t)
	tests := []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"no command", nil, 2, "a subcommand is needed"},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"unknown subcommand", []string{"tenant", "rename"}, 2, `unknown command "rename"`},
		{"unknown flag", []string{"tenant", "list", "--colour"}, 2, "flag provided but not defined: -colour"},
		{"missing required flag", []string{"tenant", "add", "initech", "--chain", "fw"}, 2, "nfsteer tenant add needs --prefix (see --help)"},
		{"a typo in a command", []string{"instnce", "list", "--redis", "redis://127.0.0.1:1"}, 2, `unknown command "instnce" for nfsteer (did you mean "instance"?)`},
		{"a typo in a subcommand", []string{"tenant", "lst"}, 2, `unknown command "lst" for nfsteer tenant (did you mean "list"?)`},
		{"help on nothing", []string{"help", "nope"}, 2, `unknown command "nope" for nfsteer`},
		{"an argument to a command that takes none", []string{"tenant", "list", "foo"}, 2, `nfsteer tenant list takes no arguments, got ["foo"]`},
		{"no name", []string{"tenant", "remove"}, 2, "takes one tenant name, got 0"},
		{"bad output format", []string{"tenant", "list", "-o", "xml"}, 2, `--output "xml": want table, json or yaml`},
		{"duplicate tenant", []string{"tenant", "add", "acme", "--prefix", "10.30.0.0/24", "--chain", "dlp"}, 1, `tenant "acme": already in the map`},
		{"chain naming a missing service", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw,ids"}, 1, "tenants.initech.chain[1]"},
		{"overlapping prefix", []string{"tenant", "add", "initech", "--prefix", "10.10.1.128/25", "--chain", "dlp"}, 1, "tenants.initech.prefixes[0]"},
		{"malformed allow rule", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--allow", "{proto: tcp"}, 2, "--allow"},
		{"allow rule with an unknown key (it would open every port)", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--allow", `{proto: tcp, dst: 10.99.0.0/24, port: 443}`}, 2, `unknown key "port"`},
		{"allow rule with ports not a list", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--allow", `{proto: tcp, ports: 443}`}, 2, "`443` where a list is wanted"},
		{"allow rule with a bad port", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--allow", `{proto: tcp, ports: ["99999"]}`}, 1, "tenants.initech.allow[0].ports[0]"},
		{"allow rules on a chain without a firewall", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "dlp", "--allow", `{proto: tcp, ports: ["443"]}`}, 1, "tenants.initech.allow: allow rules, but no service of the chain [dlp] is a firewall"},
		{"unreachable Redis (go-redis logs nothing of its own)", []string{"tenant", "list", "--redis", "redis://127.0.0.1:1"}, 1, "connecting to Redis at 127.0.0.1:1"},
		{"unknown tenant", []string{"tenant", "remove", "initech"}, 1, `no such name in the map: tenant "initech"`},
		{"duplicate service", []string{"service", "add", "fw", "--instance", "fw-9=10.200.0.19"}, 1, `service "fw": already in the map`},
		{"service with a taken instance name", []string{"service", "add", "ids", "--instance", "fw-1=10.200.0.31"}, 1, `instance "fw-1": already in the map`},
		{"service with a malformed instance", []string{"service", "add", "ids", "--instance", "ids-1"}, 2, "want NAME=ADDR"},
		{"service with an unknown function", []string{"service", "add", "ids", "--function", "ips", "--instance", "ids-1=10.200.0.31"}, 1, `services.ids.function: unknown function "ips"`},
		{"removing a service still in a chain", []string{"service", "remove", "dlp"}, 1, `service "dlp": still in use: in the chain of tenant acme (change their chains first)`},
		{"unknown service", []string{"service", "remove", "ids"}, 1, `no such name in the map: service "ids"`},
		{"an ingress that is not an interface name", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--ingress", "eth1/2"}, 1, "tenants.initech.ingress[0]"},
		{"a snat address on a map without an overlay", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--ingress", "c3", "--snat", "10.61.0.9"}, 1, "tenants.initech.snat: a tenant with a snat address needs the map's overlay"},
		{"a snat address that is not one", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--ingress", "c3", "--snat", "10.61.0"}, 1, `tenants.initech.snat: "10.61.0" is not an IP address`},
		{"a router for a tenant without snat", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--via", "10.30.0.1"}, 1, "tenants.initech.via: only a tenant with a snat address has a router of its own"},
		{"a tenant tag too large", []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--tag", "70000"}, 2, "--tag 70000: want 1 to 4095"},
		{"an outer interface that does not exist", []string{"agent", "--node", "gw", "--map", "m.yaml", "--outer", "nfsteer-nope0"}, 2, "--outer nfsteer-nope0: no such interface in this network namespace"},
		{"an unknown overload policy", []string{"agent", "--node", "gw", "--overload", "maybe"}, 2, `--overload "maybe": want drop or bypass`},
		{"a rule priority with no room for nfsteer's rules", []string{"agent", "--node", "gw", "--rule-priority", "20000"}, 2, "--rule-priority 20000: want 1 to 8184"},
		{"instance of an unknown service", []string{"instance", "add", "--service", "ids", "ids-1", "10.200.0.31"}, 1, `service "ids"`},
		{"duplicate instance", []string{"instance", "add", "--service", "dlp", "fw-1", "10.200.0.31"}, 1, `instance "fw-1": already in the map`},
		{"instance with a bad address", []string{"instance", "add", "--service", "dlp", "dlp-3", "10.200.0.300"}, 1, `services.dlp.instances.dlp-3[0]: "10.200.0.300" is not an IP address`},
		{"instance with a taken address", []string{"instance", "add", "--service", "dlp", "dlp-3", "10.200.0.21"}, 1, "duplicate instance address 10.200.0.21"},
		{"instance without address", []string{"instance", "add", "--service", "dlp", "dlp-3"}, 2, "takes NAME and one or two addresses"},
		{"drain of an unknown instance", []string{"instance", "drain", "fw-9"}, 1, `no such name in the map: instance "fw-9"`},
		{"undrain of an unknown instance", []string{"instance", "undrain", "fw-9"}, 1, `instance "fw-9"`},
		{"remove of an unknown instance", []string{"instance", "remove", "fw-9"}, 1, `instance "fw-9"`},
		{"sessions of an unknown instance", []string{"sessions", "list", "--instance", "fw-9"}, 1, `instance "fw-9"`},
		{"sessions of an unknown tenant", []string{"sessions", "list", "--tenant", "initech"}, 1, `tenant "initech"`},
		{"sessions with a bad role", []string{"sessions", "list", "--role", "tertiary"}, 2, `--role "tertiary"`},
		{"session with a bad flow", []string{"sessions", "show", "tcp/10.0.0.1/10.0.0.2:80"}, 2, "not a flow key"},
		{"session that does not exist", []string{"sessions", "show", "tcp/10.10.1.2:1/10.99.0.2:80"}, 1, "no such session"},
		{"trace with a bad address", []string{"trace", "--src", "10.10.1.x", "--dst", "10.99.0.2"}, 2, `--src "10.10.1.x": not an IP address`},
		{"trace with mixed families", []string{"trace", "--src", "10.10.1.2", "--dst", "fd00::2"}, 2, "same family"},
		{"trace with a bad protocol", []string{"trace", "--src", "10.10.1.2", "--dst", "10.99.0.2", "--proto", "quic"}, 2, `unknown protocol "quic"`},
		{"trace with a bad port", []string{"trace", "--src", "10.10.1.2", "--dst", "10.99.0.2", "--dport", "70000"}, 2, "at most 65535"},
		{"diff of a missing file", []string{"map", "diff", "-f", "testdata/nope.yaml"}, 1, "testdata/nope.yaml"},
		{"map show in a bad format", []string{"map", "show", "--format", "svg"}, 2, `--format "svg"`},
		{"completion of an unknown shell", []string{"completion", "fish"}, 2, `completion "fish"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := nfsteer(t, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("nfsteer %s: exit %d, stderr %q; want exit %d and %q", strings.Join(tt.args, " "), r.code, r.stderr, tt.code, tt.want)
			}
			if strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("nfsteer %s: an error of %d lines; want one:\n%s", strings.Join(tt.args, " "), strings.Count(r.stderr, "\n"), r.stderr)
			}
			if v := liveVersion(t, s); v != 1 {
				t.Errorf("live map version is %d after a refused command, want 1", v)
			}
		})
	}
}

// With --output json an error is also a JSON object on standard output, so
// a script parsing it does not read an empty document as success.
func TestCLIJSONErrors(t *testing.T) {
	labRedis(t)
	for _, args := range [][]string{
		{"tenant", "remove", "-o", "json", "initech"},
		{"instance", "drain", "-o", "json", "fw-9"},
		{"service", "remove", "-o", "json", "dlp"},
	} {
		r := nfsteer(t, args...)
		var got struct {
			Error string `json:"error"`
			Exit  int    `json:"exit"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.Error == "" || got.Exit != 1 || r.code != 1 {
			t.Errorf("nfsteer %s: exit %d, stdout %q (%v); want a JSON error with exit 1", strings.Join(args, " "), r.code, r.stdout, err)
		}
	}
}

// decode runs a command with -o json and decodes its output.
func decode[T any](t *testing.T, args ...string) T {
	t.Helper()
	r := nfsteer(t, append(args, "-o", "json")...)
	var v T
	if r.code != 0 {
		t.Fatalf("nfsteer %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("nfsteer %s: %v in %q", strings.Join(args, " "), err, r.stdout)
	}
	return v
}

// A day of edits: each is one new version, says what changed, and shows in
// the lists.
func TestCLIEdits(t *testing.T) {
	s := labRedis(t)

	type pub struct {
		Version uint64            `json:"version"`
		Changes []steering.Change `json:"changes"`
	}
	steps := []struct {
		args []string
		want []steering.Change
	}{
		{[]string{"service", "add", "ids", "--instance", "ids-1=10.200.0.31", "--instance", "ids-2=10.200.0.32"},
			[]steering.Change{{Op: "add", Kind: "service", Name: "ids"}, {Op: "add", Kind: "instance", Name: "ids-1", To: "ids 10.200.0.31"}, {Op: "add", Kind: "instance", Name: "ids-2", To: "ids 10.200.0.32"}}},
		{[]string{"tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw,ids", "--allow", `{proto: udp, dst: 10.99.0.0/24}`},
			[]steering.Change{{Op: "add", Kind: "tenant", Name: "initech"}}},
		{[]string{"instance", "add", "--service", "ids", "ids-3", "10.200.0.33"},
			[]steering.Change{{Op: "add", Kind: "instance", Name: "ids-3", To: "ids 10.200.0.33"}}},
		{[]string{"instance", "drain", "ids-1"},
			[]steering.Change{{Op: "change", Kind: "instance", Name: "ids-1", Field: "drained", From: "false", To: "true"}}},
		{[]string{"instance", "remove", "ids-1"},
			[]steering.Change{{Op: "remove", Kind: "instance", Name: "ids-1", From: "ids 10.200.0.31"}, {Op: "change", Kind: "instance", Name: "ids-1", Field: "drained", From: "true", To: "false"}}},
	}
	for i, st := range steps {
		got := decode[pub](t, st.args...)
		if got.Version != uint64(i+2) {
			t.Errorf("nfsteer %s: version %d, want %d", strings.Join(st.args, " "), got.Version, i+2)
		}
		if diff := cmp.Diff(st.want, got.Changes); diff != "" {
			t.Errorf("nfsteer %s: changes (-want +got):\n%s", strings.Join(st.args, " "), diff)
		}
	}

	tenants := decode[[]struct {
		Name  string   `json:"name"`
		Chain []string `json:"chain"`
	}](t, "tenant", "list")
	if len(tenants) != 3 || tenants[2].Name != "initech" || !cmp.Equal(tenants[2].Chain, []string{"fw", "ids"}) {
		t.Errorf("tenant list: %+v", tenants)
	}
	services := decode[[]struct {
		Name      string   `json:"name"`
		Instances []string `json:"instances"`
		Tenants   []string `json:"tenants"`
	}](t, "service", "list")
	if len(services) != 3 || services[2].Name != "ids" || !cmp.Equal(services[2].Instances, []string{"ids-2", "ids-3"}) || !cmp.Equal(services[2].Tenants, []string{"initech"}) {
		t.Errorf("service list: %+v", services)
	}
	insts := decode[[]instanceRow](t, "instance", "list")
	slots := map[string]int{}
	for _, in := range insts {
		slots[in.Service] += in.Slots
		if in.State != "up" || in.HeartbeatAgeS != nil {
			t.Errorf("instance %s: state %s, heartbeat age %v; want up, never (null)", in.Name, in.State, in.HeartbeatAgeS)
		}
	}
	if diff := cmp.Diff(map[string]int{"fw": 256, "dlp": 256, "ids": 256}, slots); diff != "" {
		t.Errorf("every slot of every service has one primary (-want +got):\n%s", diff)
	}

	// The table output is for people, but it must hold the names.
	r := nfsteer(t, "instance", "list")
	for _, want := range []string{"INSTANCE", "ids-3", "10.200.0.33", "never"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("instance list lacks %q:\n%s", want, r.stdout)
		}
	}

	// export | apply is a round trip; diff against the export is empty.
	exported := filepath.Join(t.TempDir(), "map.yaml")
	r = nfsteer(t, "map", "export")
	if r.code != 0 {
		t.Fatalf("map export: %+v", r)
	}
	if err := os.WriteFile(exported, []byte(r.stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := nfsteer(t, "map", "diff", "-f", exported); r.code != 0 || !strings.Contains(r.stdout, "0 changes") {
		t.Errorf("diff against the export: %+v; want exit 0, 0 changes", r)
	}
	if r := nfsteer(t, "map", "diff", "-f", labMapFile(t)); r.code != 3 || !strings.Contains(r.stdout, "- service ids") || !strings.Contains(r.stdout, "- tenant initech") {
		t.Errorf("diff against the first map: %+v; want exit 3 and the removals", r)
	}
	before := liveVersion(t, s)
	if r := nfsteer(t, "apply", "-f", exported); r.code != 0 || !strings.Contains(r.stdout, "unchanged") {
		t.Fatalf("apply of the export: %+v; want unchanged", r)
	}
	if v := liveVersion(t, s); v != before {
		t.Errorf("apply of the export: version %d, want %d (nothing published)", v, before)
	}
}

// TestCLIApplyGuards: apply prints what it changes, publishes nothing when
// nothing changes, removes nothing without --prune, loses no one else's
// edit, and drain of a drained instance publishes nothing.
func TestCLIApplyGuards(t *testing.T) {
	s := labRedis(t)
	export := func() string {
		t.Helper()
		r := nfsteer(t, "map", "export")
		if r.code != 0 {
			t.Fatalf("map export: %+v", r)
		}
		path := filepath.Join(t.TempDir(), "map.yaml")
		if err := os.WriteFile(path, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	mine := export() // version 1
	// A colleague adds wonka: version 2.
	if r := nfsteer(t, "tenant", "add", "wonka", "--prefix", "10.40.0.0/24", "--chain", "fw"); r.code != 0 {
		t.Fatalf("tenant add: %+v", r)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		code    int
		want    string // in stdout+stderr
		publish bool
	}{
		{"an export the map moved on from", []string{"apply", "-f", mine}, 1, "the file was exported from version 1 and the map has changed since (live version 2)", false},
		{"the same, forced to the live version, removing wonka without --prune", []string{"apply", "-f", mine, "--base-version", "2"}, 1, "the file does not have tenant wonka: add them to the file, or give --prune", false},
		{"the same, with a base version that is not live", []string{"apply", "-f", mine, "--base-version", "1", "--prune"}, 1, "the file was made from version 1 and the live map is at version 2", false},
		{"a dry run with --prune", []string{"apply", "-f", mine, "--base-version", "2", "--prune", "--dry-run"}, 0, "dry run: would publish the version after 2 with 1 changes; nothing published\n  - tenant wonka", false},
		{"the same for real", []string{"apply", "-f", mine, "--base-version", "2", "--prune"}, 0, "published map version 3", true},
		{"again: nothing changes", []string{"apply", "-f", mine, "--base-version", "3"}, 0, "unchanged: the live map (version 3) already says this", false},
		{"drain", []string{"instance", "drain", "fw-1"}, 0, "~ instance fw-1 drained: false -> true", true},
		{"drain of a drained instance", []string{"instance", "drain", "fw-1"}, 0, "unchanged", false},
		{"undrain", []string{"instance", "undrain", "fw-1"}, 0, "~ instance fw-1 drained: true -> false", true},
		{"undrain of an undrained instance", []string{"instance", "undrain", "fw-1"}, 0, "unchanged", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := liveVersion(t, s)
			r := nfsteer(t, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
				t.Errorf("nfsteer %s: exit %d, stdout %q, stderr %q; want exit %d and %q", strings.Join(tc.args, " "), r.code, r.stdout, r.stderr, tc.code, tc.want)
			}
			want := before
			if tc.publish {
				want++
			}
			if v := liveVersion(t, s); v != want {
				t.Errorf("live version %d after nfsteer %s, want %d", v, strings.Join(tc.args, " "), want)
			}
		})
	}
	// A version that only marks an instance down does not stale an export.
	fresh := export()
	if r := nfsteer(t, "instance", "drain", "fw-2"); r.code != 0 {
		t.Fatalf("drain: %+v", r)
	}
	if r := nfsteer(t, "apply", "-f", fresh, "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, `"unchanged": true`) {
		t.Errorf("apply of an export after a drain: %+v; want it taken (unchanged)", r)
	}
}

// instance remove refuses while Redis lists sessions the instance is
// primary for, unless --force.
func TestCLIRemoveRefusesBusyInstance(t *testing.T) {
	s := labRedis(t)
	ctx := context.Background()
	tab := liveTable(t, s)
	f := steering.Flow{Src: netip.MustParseAddr("10.20.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 40000, DstPort: 80, Proto: 6}
	code := steering.AffinityCode(&f)
	globex := tab.TenantByName("globex")
	pins := tab.PinsFor(globex, tab.SlotOf(code))
	busy, _ := tab.InstanceByID(pins[0])
	w := s.NewSessions("", "", time.Minute)
	sess := sessions.Session{Key: sessions.KeyOf(&f), Tenant: "globex", Code: code, Pins: pins, Created: time.Now().UnixNano(), Rule: -1}
	if _, err := w.Write(ctx, sessions.Name(tab, []sessions.Op{{Kind: sessions.OpCreate, Session: sess}})); err != nil {
		t.Fatal(err)
	}

	r := nfsteer(t, "instance", "remove", busy.Name)
	if r.code != 1 || !strings.Contains(r.stderr, "still carries 1 sessions") {
		t.Errorf("remove of %s: %+v; want a refusal naming 1 session", busy.Name, r)
	}
	if v := liveVersion(t, s); v != 1 {
		t.Errorf("refused remove published version %d", v)
	}
	listed := decode[[]sessionView](t, "sessions", "list", "--instance", busy.Name)
	if len(listed) != 1 || listed[0].Flow != sess.Key.String() {
		t.Errorf("sessions list --instance %s: %+v", busy.Name, listed)
	}
	shown := decode[sessionView](t, "sessions", "show", sess.Key.String())
	if shown.Tenant != "globex" || shown.Hops[0].Primary != busy.Name || time.Since(shown.Created) > time.Minute || shown.ExpiresInS <= 0 || shown.ExpiresInS > 60 {
		t.Errorf("sessions show: %+v", shown)
	}
	if r := nfsteer(t, "instance", "remove", "--force", busy.Name); r.code != 0 {
		t.Errorf("remove --force: %+v", r)
	}
}

// trace on the live map follows the slot's primaries and says which
// instance it passed over and why.
func TestCLITrace(t *testing.T) {
	labRedis(t)
	args := []string{"trace", "--src", "10.10.1.2", "--sport", "40000", "--dst", "10.99.0.2", "--dport", "5201"}
	tr := decode[steering.Trace](t, args...)
	if tr.Tenant != "acme" || len(tr.Forward) != 3 || len(tr.Reply) != 3 || tr.Verdict != "allow: rule 0" {
		t.Fatalf("trace: %+v", tr)
	}
	fw := tr.Forward[0].Instance
	if tr.Reply[1].Instance != fw {
		t.Errorf("reply crosses %s, forward %s: the path is not symmetric", tr.Reply[1].Instance, fw)
	}
	if r := nfsteer(t, "instance", "drain", fw); r.code != 0 {
		t.Fatal(r)
	}
	after := decode[steering.Trace](t, args...)
	if got := after.Forward[0]; got.Instance != tr.Forward[0].Secondary || !cmp.Equal(got.Skipped, []string{fw + " (drained)"}) {
		t.Errorf("after draining %s: %+v; want its secondary %s and %s passed over", fw, got, tr.Forward[0].Secondary, fw)
	}
	r := nfsteer(t, args...)
	if !strings.Contains(r.stdout, "passed over "+fw+" (drained)") || !strings.Contains(r.stdout, "tenant acme") {
		t.Errorf("trace table:\n%s", r.stdout)
	}
	if r := nfsteer(t, "map", "show", "--format", "dot"); r.code != 0 || !strings.Contains(r.stdout, `"instance:`+fw+`" [shape=component, label="`+fw) {
		t.Errorf("map show --format dot: %+v", r)
	}
}

// The agent's settings come from flags, then NFSTEER_* variables, then the
// --config file.
func TestAgentConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte("node: from-file\nqueues: 2\nheartbeat: 100ms\nouter: [eth1, eth2]\nredis: redis://file:6379\nlog-flows: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NFSTEER_QUEUES", "3")
	t.Setenv("NFSTEER_REDIS", "redis://env:6379")
	r := nfsteer(t, "agent", "--config", file, "--node", "from-flag", "--redis", "redis://flag:6379", "--print-config")
	if r.code != 0 {
		t.Fatalf("agent --print-config: %+v", r)
	}
	var got map[string]any
	if err := yaml.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"node":      "from-flag",         // flag over env and file
		"redis":     "redis://flag:6379", // flag over env and file
		"queues":    3,                   // env over file
		"heartbeat": "100ms",             // file over default
		"outer":     []any{"eth1", "eth2"},
		"log-flows": true,
		"fail":      "closed", // default
	}
	for k, v := range want {
		if diff := cmp.Diff(v, got[k]); diff != "" {
			t.Errorf("%s (-want +got):\n%s", k, diff)
		}
	}
	if r := nfsteer(t, "agent", "--config", filepath.Join(t.TempDir(), "nope.yaml"), "--print-config"); r.code != 2 || !strings.Contains(r.stderr, "nope.yaml") {
		t.Errorf("missing config file: %+v", r)
	}
	if r := nfsteer(t, "agent", "--map", "x.yaml"); r.code != 2 || !strings.Contains(r.stderr, "--node NAME") {
		t.Errorf("agent without a node: %+v", r)
	}
}

// Arguments move behind the flags; a boolean flag, plain or read from the
// config file, takes no value.
func TestInterspersed(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	tests := []struct{ in, want []string }{
		{[]string{"nfsteer", "instance", "drain", "fw-2", "-o", "json"}, []string{"nfsteer", "instance", "drain", "-o", "json", "fw-2"}},
		{[]string{"nfsteer", "agent", "--node", "gw", "--log-flows", "--outer", "ca0", "--outer=cg0", "--spare"},
			[]string{"nfsteer", "agent", "--node", "gw", "--log-flows", "--outer", "ca0", "--outer=cg0", "--spare"}},
		{[]string{"nfsteer", "instance", "add", "fw-3", "10.0.0.3", "--service", "fw", "--", "-x"},
			[]string{"nfsteer", "instance", "add", "--service", "fw", "fw-3", "10.0.0.3", "--", "-x"}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, interspersed(app, tt.in)); diff != "" {
			t.Errorf("interspersed(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

// TestCLIFallbackIsRefusedAndShown: with fw-2 down, draining fw-1 would
// leave the firewall with no instance in service, so its new flows would
// fall back to out-of-service instances. The drain is refused, naming the
// service, unless --force; once forced, trace and instance list say so.
func TestCLIFallbackIsRefusedAndShown(t *testing.T) {
	s := labRedis(t)
	ctx := context.Background()
	if _, err := s.Publish(ctx, func(live *steering.Published) (*steering.Published, error) {
		next := live.Clone()
		next.Down = []string{"fw-2"}
		return next, nil
	}); err != nil {
		t.Fatal(err)
	}
	before := liveVersion(t, s)
	for _, args := range [][]string{
		{"instance", "drain", "fw-1"},
		{"instance", "drain", "--migrate", "fw-1"},
		{"instance", "remove", "fw-1"},
	} {
		r := nfsteer(t, args...)
		want := "service fw (in the chain of acme, globex) would have no instance in service: fw-1 drained, fw-2 down"
		if strings.HasSuffix(strings.Join(args, " "), "remove fw-1") {
			want = "service fw (in the chain of acme, globex) would have no instance in service: fw-2 down"
		}
		if r.code != 1 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "--force") {
			t.Errorf("nfsteer %s: exit %d, stderr %q; want exit 1 and %q", strings.Join(args, " "), r.code, r.stderr, want)
		}
		if v := liveVersion(t, s); v != before {
			t.Fatalf("live version %d after a refused %s, want %d", v, strings.Join(args, " "), before)
		}
	}
	if r := nfsteer(t, "instance", "drain", "--force", "fw-1"); r.code != 0 {
		t.Fatalf("drain --force: %+v", r)
	}
	r := nfsteer(t, "trace", "--src", "10.10.1.2", "--dst", "10.99.0.2", "--dport", "443")
	if r.code != 0 || !strings.Contains(r.stdout, "FALLBACK: no instance of fw is in service") {
		t.Errorf("trace in fallback: %+v", r)
	}
	r = nfsteer(t, "instance", "list")
	for _, want := range []string{"drained (fallback)", "down (fallback)", "fallback: no instance of fw is in service"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("instance list in fallback lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestCLIStatus: status tells on-call what is wrong and says so in its exit
// code: 0 healthy, 4 degraded, with one JSON document either way.
func TestCLIStatus(t *testing.T) {
	s := labRedis(t)
	ctx := context.Background()
	status := func() (result, statusReport) {
		t.Helper()
		r := nfsteer(t, "status", "-o", "json")
		dec := json.NewDecoder(strings.NewReader(r.stdout))
		var st statusReport
		if err := dec.Decode(&st); err != nil {
			t.Fatalf("status -o json: %v\n%s", err, r.stdout)
		}
		if dec.More() || r.stderr != "" {
			t.Errorf("status -o json printed more than one document, or to stderr: %+v", r)
		}
		return r, st
	}
	// No controller and no agent has ever reported.
	r, st := status()
	if r.code != exitDegraded || !slices.Contains(st.Degraded, "no controller holds the lease: nothing marks dead instances down") ||
		!slices.Contains(st.Degraded, "instance fw-1: its agent never reported") {
		t.Errorf("status with nothing running: exit %d, degraded %q", r.code, st.Degraded)
	}
	for _, a := range st.Agents {
		if a.Score != nil || a.HeartbeatAgeS != nil {
			t.Errorf("agent %s never reported but has score %v, heartbeat age %v; want null", a.Node, a.Score, a.HeartbeatAgeS)
		}
	}
	// Every agent beats, a controller holds the lease and a standby waits:
	// healthy.
	for _, ctl := range []string{"ctl-a", "ctl-b"} {
		if _, err := s.Lease(ctx, ctl, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	beat := func() {
		for _, n := range []string{"gw", "fw-1", "fw-2", "dlp-1", "dlp-2"} {
			if err := s.Heartbeat(ctx, n, &store.Report{Node: n, MapVersion: liveVersion(t, s)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	beat()
	r, st = status()
	if r.code != 0 || len(st.Degraded) != 0 {
		t.Errorf("status with everything running: exit %d, degraded %q", r.code, st.Degraded)
	}
	if want := []store.Controller{{ID: "ctl-a", Active: true}, {ID: "ctl-b"}}; !cmp.Equal(want, st.Controllers, cmpopts.IgnoreFields(store.Controller{}, "AgeS")) {
		t.Errorf("controllers %+v; want ctl-a active and ctl-b standing by", st.Controllers)
	}
	// Sealing: healthy while every live agent trusts what every other
	// writes, as at each step of starting to seal or changing keys;
	// degraded, naming who refuses what, when a step is skipped.
	k1, k2 := keytest.SessionKey(t), keytest.SessionKey(t)
	id1, id2 := k1.ID(), k2.ID()
	none, accept1 := signing.SessionKeys{}, signing.SessionKeys{Accept: []*signing.SessionKey{k1}}
	start1, seal1 := signing.SessionKeys{Seal: k1, Unsealed: true}, signing.SessionKeys{Seal: k1}
	seal1next2, seal2prev1 := signing.SessionKeys{Seal: k1, Accept: []*signing.SessionKey{k2}}, signing.SessionKeys{Seal: k2, Accept: []*signing.SessionKey{k1}}
	nodes := []string{"dlp-1", "dlp-2", "fw-1", "fw-2", "gw"}
	for _, tc := range []struct {
		name  string
		keys  func(node string) signing.SessionKeys
		want  []string
		trust string // gw's TRUST column
	}{
		{"every agent seals", func(string) signing.SessionKeys { return seal1 }, nil, "sessions sealed with " + id1 + ", signed maps"},
		{"every agent seals nothing", func(string) signing.SessionKeys { return none }, nil, "signed maps"},
		{"two agents seal", func(n string) signing.SessionKeys {
			return map[bool]signing.SessionKeys{true: seal1, false: none}[n == "gw" || n == "fw-1"]
		},
			[]string{
				`unsealed session records (written by dlp-1, dlp-2, fw-2) are refused by fw-1, gw, so those flows cannot fail over to them (README: "Sealed session records")`,
				`session records sealed with key ` + id1 + ` (written by fw-1, gw) are refused by dlp-1, dlp-2, fw-2, so those flows cannot fail over to them (README: "Sealed session records")`,
			}, "sessions sealed with " + id1 + ", signed maps"},
		{"starting to seal: the key accepted, then sealing", func(n string) signing.SessionKeys {
			return map[bool]signing.SessionKeys{true: start1, false: accept1}[n == "gw"]
		}, nil, "sessions sealed with " + id1 + " (also trusts unsealed), signed maps"},
		{"starting to seal: sealing, then unsealed refused", func(n string) signing.SessionKeys {
			return map[bool]signing.SessionKeys{true: seal1, false: start1}[n == "gw"]
		}, nil, "sessions sealed with " + id1 + ", signed maps"},
		{"a key change half done", func(n string) signing.SessionKeys {
			return map[bool]signing.SessionKeys{true: seal2prev1, false: seal1next2}[n == "gw" || n == "fw-2"]
		}, nil, "sessions sealed with " + id2 + " (also trusts " + id1 + "), signed maps"},
		{"a key change with a step skipped", func(n string) signing.SessionKeys {
			return map[bool]signing.SessionKeys{true: {Seal: k2}, false: seal1}[n == "gw"]
		}, []string{
			`session records sealed with key ` + id1 + ` (written by dlp-1, dlp-2, fw-1, fw-2) are refused by gw, so those flows cannot fail over to them (README: "Sealed session records")`,
			`session records sealed with key ` + id2 + ` (written by gw) are refused by dlp-1, dlp-2, fw-1, fw-2, so those flows cannot fail over to them (README: "Sealed session records")`,
		}, "sessions sealed with " + id2 + ", signed maps"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, n := range nodes {
				rep := &store.Report{Node: n, MapVersion: liveVersion(t, s), ChecksMaps: n == "gw"}
				if n == "gw" {
					rep.Offload, rep.Offloaded = "on", 42
					rep.OffloadLive, rep.OffloadCapacity = 1900, 2048
				}
				rep.SetSessionKeys(tc.keys(n))
				if err := s.Heartbeat(ctx, n, rep); err != nil {
					t.Fatal(err)
				}
			}
			r, st := status()
			if diff := cmp.Diff(tc.want, st.Degraded, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("degraded (-want +got):\n%s", diff)
			}
			if wantCode := map[bool]int{true: 0, false: exitDegraded}[tc.want == nil]; r.code != wantCode {
				t.Errorf("exit %d; want %d", r.code, wantCode)
			}
			for _, a := range st.Agents {
				ks := tc.keys(a.Node)
				if a.Report == nil || a.Report.Sealed != (ks.Seal != nil) || !slices.Equal(a.Report.Trusts, ks.IDs()) || a.Report.ChecksMaps != (a.Node == "gw") {
					t.Errorf("agent %s's report %+v; want sealed %t, trusting %q, checks_maps %t", a.Node, a.Report, ks.Seal != nil, ks.IDs(), a.Node == "gw")
				}
			}
			text := nfsteer(t, "status").stdout
			if !strings.Contains(text, "TRUST") || !strings.Contains(text, tc.trust) {
				t.Errorf("status lacks the TRUST column or gw's %q:\n%s", tc.trust, text)
			}
			// The gateway's offload, in the table and the JSON; the
			// instances have none.
			const offloadCell = "on, 42 packets, 92% of its table live (FULL: raise --offload-flows)"
			if !strings.Contains(text, "OFFLOAD") || !strings.Contains(text, offloadCell) {
				t.Errorf("status lacks the OFFLOAD column or gw's %q:\n%s", offloadCell, text)
			}
			for _, a := range st.Agents {
				if want := map[bool]string{true: "on"}[a.Node == "gw"]; a.Report != nil && a.Report.Offload != want {
					t.Errorf("agent %s's offload %q; want %q", a.Node, a.Report.Offload, want)
				}
				if a.Node == "gw" && a.Report != nil && (a.Report.OffloadLive != 1900 || a.Report.OffloadCapacity != 2048) {
					t.Errorf("gw's offload table in the JSON: %d of %d live; want 1900 of 2048", a.Report.OffloadLive, a.Report.OffloadCapacity)
				}
			}
		})
	}
	// An agent of an earlier version said only that it sealed, with the
	// one fleet key: those agents read each other, and status does not
	// guess about the others.
	t.Run("agents of an earlier version", func(t *testing.T) {
		for _, n := range nodes {
			if err := s.Heartbeat(ctx, n, &store.Report{Node: n, MapVersion: liveVersion(t, s), Sealed: n != "gw"}); err != nil {
				t.Fatal(err)
			}
		}
		_, st := status()
		want := []string{
			`session records sealed by agents of an earlier version (written by dlp-1, dlp-2, fw-1, fw-2) are refused by gw, so those flows cannot fail over to them (README: "Sealed session records")`,
			`unsealed session records (written by gw) are refused by dlp-1, dlp-2, fw-1, fw-2, so those flows cannot fail over to them (README: "Sealed session records")`,
		}
		if diff := cmp.Diff(want, st.Degraded); diff != "" {
			t.Errorf("degraded (-want +got):\n%s", diff)
		}
	})
	// A gateway whose reverse-path filter drops a zoned tenant's flows.
	t.Run("reverse-path drops", func(t *testing.T) {
		beat()
		if err := s.Heartbeat(ctx, "gw", &store.Report{Node: "gw", MapVersion: liveVersion(t, s), ReversePathDrops: []string{"blue 10.50.0.0/24"}}); err != nil {
			t.Fatal(err)
		}
		r, st := status()
		want := []string{"gw: its reverse-path filter drops the chain's hand-back of zoned flows from blue 10.50.0.0/24 (no route to them in its main table; README: gateway sysctls)"}
		if diff := cmp.Diff(want, st.Degraded); diff != "" || r.code != exitDegraded {
			t.Errorf("exit %d; degraded (-want +got):\n%s", r.code, diff)
		}
	})
	// fw-2 down and fw-1 drained (forced): the firewall is in fallback.
	if _, err := s.Publish(ctx, func(live *steering.Published) (*steering.Published, error) {
		next := live.Clone()
		next.Down, next.Drained = []string{"fw-2"}, []string{"fw-1", "fw-2"}
		return next, nil
	}); err != nil {
		t.Fatal(err)
	}
	beat()
	r, st = status()
	want := []string{
		"service fw has no instance in service: its new flows go to instances that are out (fallback)",
		"instance fw-2 is down+drained",
	}
	if r.code != exitDegraded || !cmp.Equal(want, st.Degraded) {
		t.Errorf("status in fallback: exit %d, degraded (-want +got):\n%s", r.code, cmp.Diff(want, st.Degraded))
	}
	fw := st.Services[slices.IndexFunc(st.Services, func(s serviceStatus) bool { return s.Name == "fw" })]
	if diff := cmp.Diff(serviceStatus{Name: "fw", InService: 0, Out: map[string]int{"down": 1, "drained": 2}, Fallback: true}, fw); diff != "" {
		t.Errorf("fw's summary (-want +got):\n%s", diff)
	}
	r = nfsteer(t, "status")
	for _, w := range []string{"ctl-a (active), ctl-b (standby)", "0 (FALLBACK)", "1 down, 2 drained", "DEGRADED:"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("status lacks %q:\n%s", w, r.stdout)
		}
	}
	if r.code != exitDegraded || r.stderr != "" {
		t.Errorf("status: exit %d, stderr %q; want 4 and nothing", r.code, r.stderr)
	}
}

// TestCLIOneDocument: map diff -o json prints one JSON document even when
// it exits 3, and nothing on standard error.
func TestCLIOneDocument(t *testing.T) {
	labRedis(t)
	other := filepath.Join(t.TempDir(), "other.yaml")
	m := strings.Replace(labmap.Firewall, "10.10.1.0/24", "10.10.9.0/24", 1)
	if err := os.WriteFile(other, []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"map", "diff", "-f", other, "-o", "json"}, {"map", "diff", "-f", other}} {
		r := nfsteer(t, args...)
		if r.code != 3 || r.stderr != "" {
			t.Errorf("nfsteer %s: exit %d, stderr %q; want 3 and nothing", strings.Join(args, " "), r.code, r.stderr)
		}
		if args[len(args)-1] != "json" {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(r.stdout))
		var v map[string]any
		if err := dec.Decode(&v); err != nil || dec.More() {
			t.Errorf("map diff -o json: %v, more %v:\n%s", err, dec.More(), r.stdout)
		}
	}
}

// TestSettingsAreStrict: every agent and controller setting is checked
// before anything starts, from a flag or the --config file alike; errors
// name the key and the file; --print-config shows no secret.
func TestSettingsAreStrict(t *testing.T) {
	dir := t.TempDir()
	file := func(body string) string {
		t.Helper()
		f, err := os.CreateTemp(dir, "agent-*.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(body); err != nil {
			t.Fatal(err)
		}
		f.Close()
		return f.Name()
	}
	notAKey := file("not hex\n")
	for _, tc := range []struct {
		name string
		args []string
		want string // in stderr, with {file} for the config file
		body string // of the config file, if any
	}{
		{"a misspelt key", nil, `--config {file}: line 2: unknown key "redsi" (did you mean "redis"?)`, "node: gw\nredsi: redis://10.0.0.5:6379\n"},
		{"a list where one value goes", nil, "--config {file}: line 1: node: want a single value, not a list", "node: [gw]\nredis: redis://r:6379\n"},
		{"a mapping where a list goes", nil, "--config {file}: line 2: outer: want a list such as [eth1, eth2], not a mapping", "node: gw\nouter: {eth1: x}\n"},
		{"a word where a number goes", nil, `--config {file}: line 2: queues: want a whole number, not "two"`, "node: gw\nqueues: two\n"},
		{"a bad duration", nil, `--config {file}: line 2: heartbeat: want a duration such as 25ms or 10s, not "fast"`, "node: gw\nheartbeat: fast\n"},
		{"a key set twice", nil, `--config {file}: line 2: "node" set twice`, "node: gw\nnode: gw2\n"},
		{"a bad value in the file", nil, `fail "sometimes": want open or closed (in {file})`, "node: gw\nredis: redis://r:6379\nfail: sometimes\n"},
		{"a negative heartbeat in the file", nil, "heartbeat -5ms: want at least 1ms (in {file})", "node: gw\nredis: redis://r:6379\nheartbeat: -5ms\n"},
		{"a flag wins, and is named", []string{"--heartbeat", "0s"}, "--heartbeat 0s: want at least 1ms", "node: gw\nredis: redis://r:6379\nheartbeat: 50ms\n"},
		{"a session ttl below the refresh", []string{"--node", "gw", "--redis", "redis://r:6379", "--session-ttl", "5s", "--refresh", "10s"}, "--session-ttl 5s: want more than --refresh (10s)", ""},
		{"a mirror linger past a second", []string{"--node", "fw-1", "--redis", "redis://r:6379", "--mirror-linger", "2s"}, "--mirror-linger 2s: want 0 to 1s", ""},
		{"a negative mirror linger in the file", nil, "mirror-linger -1ms: want 0 to 1s (in {file})", "node: fw-1\nredis: redis://r:6379\nmirror-linger: -1ms\n"},
		{"an index prune with no interval", []string{"--node", "fw-1", "--redis", "redis://r:6379", "--index-prune", "0s"}, "--index-prune 0s: want at least 10ms", ""},
		{"an offload refresh too short", []string{"--node", "gw", "--map", "m.yaml", "--offload-refresh", "1ms"}, "--offload-refresh 1ms: want 10ms to 1m", ""},
		{"an offload refresh too long", []string{"--node", "gw", "--map", "m.yaml", "--offload-refresh", "2m"}, "--offload-refresh 2m0s: want 10ms to 1m", ""},
		{"an offload table too small", []string{"--node", "gw", "--map", "m.yaml", "--offload-flows", "10"}, "--offload-flows 10: want 1024 to 4194304", ""},
		{"an offload table size that is no number", nil, `--config {file}: line 2: offload-flows: want a whole number, not "many"`, "node: gw\noffload-flows: many\n"},
		{"a bad Redis URL", []string{"--node", "gw", "--redis", "http://r:6379"}, "--redis http://r:6379: redis: invalid URL scheme: http", ""},
		{"too many queues", []string{"--node", "gw", "--map", "m.yaml", "--queues", "5000"}, "--queues 5000: want 0 to 1024", ""},
		{"unsealed records accepted by a node that seals nothing", []string{"--node", "gw", "--redis", "redis://r:6379", "--session-accept-unsealed"},
			"--session-accept-unsealed: only with --session-key", ""},
		{"a missing key to accept", []string{"--node", "gw", "--redis", "redis://r:6379", "--session-key-accept", "/nonexistent/next.key"},
			"--session-key-accept: reading session key: open /nonexistent/next.key", ""},
		{"a key to accept that is no key", []string{"--node", "gw", "--redis", "redis://r:6379", "--session-key-accept", notAKey},
			"--session-key-accept: session key " + notAKey + ": ", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"agent", "--print-config"}, tc.args...)
			want := tc.want
			if tc.body != "" {
				f := file(tc.body)
				args = append(args, "--config", f)
				want = strings.ReplaceAll(want, "{file}", f)
			}
			r := nfsteer(t, args...)
			if r.code != 2 || !strings.Contains(r.stderr, want) || r.stdout != "" {
				t.Errorf("nfsteer %s: exit %d, stdout %q, stderr %q; want exit 2, nothing printed, and %q", strings.Join(args, " "), r.code, r.stdout, r.stderr, want)
			}
		})
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--heartbeat", "-5ms"}, "--heartbeat -5ms: want at least 1ms"},
		{[]string{"--misses", "0"}, "--misses 0: want at least 1"},
		{[]string{"--lease", "10ms"}, "--lease 10ms: want at least 200ms"},
		{[]string{"--score-out", "120"}, "--score-out 120: want 0 to 100"},
		{[]string{"--score-in", "20"}, "--score-in 20: want --score-out (50) to 100"},
		{[]string{"--score-hold", "0"}, "--score-hold 0: want at least 1"},
	} {
		args := append([]string{"controller", "--redis", "redis://127.0.0.1:1"}, tc.args...)
		if r := nfsteer(t, args...); r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("nfsteer %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(args, " "), r.code, r.stderr, tc.want)
		}
	}
	// The password stays out of --print-config.
	r := nfsteer(t, "agent", "--node", "gw", "--redis", "redis://:sesame@10.0.0.5:6379", "--print-config")
	if r.code != 0 || strings.Contains(r.stdout, "sesame") || !strings.Contains(r.stdout, "redis: redis://:xxxxx@10.0.0.5:6379") {
		t.Errorf("print-config with a password: %+v", r)
	}
}

// TestCompletion: shell completion offers the live map's names.
func TestCompletion(t *testing.T) {
	labRedis(t)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"tenant", "remove"}, []string{"acme", "globex"}},
		{[]string{"service", "remove"}, []string{"dlp", "fw"}},
		{[]string{"instance", "drain"}, []string{"dlp-1", "dlp-2", "fw-1", "fw-2"}},
		{[]string{"instance", "undrain"}, []string{"dlp-1", "dlp-2", "fw-1", "fw-2"}},
		{[]string{"instance", "remove"}, []string{"dlp-1", "dlp-2", "fw-1", "fw-2"}},
	} {
		r := nfsteer(t, append(tc.args, "--generate-bash-completion")...)
		if got := strings.Fields(r.stdout); r.code != 0 || !cmp.Equal(tc.want, got) {
			t.Errorf("completing nfsteer %s: exit %d, %q; want %q", strings.Join(tc.args, " "), r.code, got, tc.want)
		}
	}
}

// TestCLIOutputFormats: every command that prints takes -o json and -o
// yaml, and the two say the same thing: one document, the same fields.
func TestCLIOutputFormats(t *testing.T) {
	labRedis(t)
	mapFile := labMapFile(t)
	for _, args := range [][]string{
		{"tenant", "list"}, {"service", "list"}, {"instance", "list"}, {"status"},
		{"map", "check", "-f", mapFile}, {"map", "diff", "-f", mapFile}, {"sessions", "list"},
		{"trace", "--src", "fd00:10::5", "--dst", "fd00:99::2", "--dport", "443", "--sport", "5353", "--proto", "udp"},
		{"apply", "-f", mapFile, "--dry-run"},
	} {
		j := nfsteer(t, append(args, "-o", "json")...)
		y := nfsteer(t, append(args, "-o", "yaml")...)
		var fromJSON, fromYAML any
		dec := json.NewDecoder(strings.NewReader(j.stdout))
		if err := dec.Decode(&fromJSON); err != nil || dec.More() {
			t.Errorf("nfsteer %s -o json: %v, or more than one document:\n%s", strings.Join(args, " "), err, j.stdout)
			continue
		}
		if err := yaml.Unmarshal([]byte(y.stdout), &fromYAML); err != nil {
			t.Errorf("nfsteer %s -o yaml: %v:\n%s", strings.Join(args, " "), err, y.stdout)
			continue
		}
		// Through JSON again, so that numbers compare alike.
		b, _ := json.Marshal(fromYAML)
		var again any
		json.Unmarshal(b, &again)
		// What two runs may measure differently.
		measured := cmpopts.IgnoreMapEntries(func(k string, _ any) bool { return k == "rtt_s" || k == "used_memory_bytes" })
		if diff := cmp.Diff(fromJSON, again, measured); diff != "" || j.code != y.code {
			t.Errorf("nfsteer %s: -o json (exit %d) and -o yaml (exit %d) differ (-json +yaml):\n%s", strings.Join(args, " "), j.code, y.code, diff)
		}
	}
	// One flow notation, IPv6 in brackets.
	tr := decode[steering.Trace](t, "trace", "--src", "fd00:10::5", "--dst", "fd00:99::2", "--dport", "443", "--sport", "5353", "--proto", "udp")
	if tr.Flow != "udp/[fd00:10::5]:5353/[fd00:99::2]:443" {
		t.Errorf("trace flow %q; want udp/[fd00:10::5]:5353/[fd00:99::2]:443", tr.Flow)
	}
	// No Go formatting: the map's header and a diff of allow rules.
	r := nfsteer(t, "map", "show")
	if !strings.Contains(r.stdout, "# instance ids: dlp-1=") || strings.Contains(r.stdout, "map[") || !strings.Contains(r.stdout, "# down: none") {
		t.Errorf("map show header:\n%s", r.stdout)
	}
	if r := nfsteer(t, "tenant", "add", "initech", "--prefix", "10.30.0.0/24", "--chain", "fw", "--allow", `{proto: tcp, dst: 10.99.0.0/24, ports: ["443"]}`); !strings.Contains(r.stdout, "+ tenant initech") {
		t.Errorf("tenant add: %+v", r)
	}
	changed := filepath.Join(t.TempDir(), "changed.yaml")
	exp := nfsteer(t, "map", "export")
	if err := os.WriteFile(changed, []byte(strings.Replace(exp.stdout, `- "443"`, `- "8443"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := nfsteer(t, "map", "diff", "-f", changed); !strings.Contains(r.stdout, `~ tenant initech allow: [{proto: tcp, dst: 10.99.0.0/24, ports: [443]}] -> [{proto: tcp, dst: 10.99.0.0/24, ports: [8443]}]`) {
		t.Errorf("diff of an allow rule:\n%s", r.stdout)
	}
}

// TestHelpShowsTheNamedCommand: "help" in any command position shows the
// help of the command it names, subcommands listed.
func TestHelpShowsTheNamedCommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"help"}, "nfsteer - steer tenants' flows"},
		{[]string{"help", "tenant"}, "   list     list the tenants of the live map"},
		{[]string{"help", "tenant", "list"}, "nfsteer tenant list - list the tenants of the live map"},
		{[]string{"tenant", "help", "list"}, "nfsteer tenant list - list the tenants of the live map"},
		{[]string{"help", "instance", "drain"}, "nfsteer instance drain - "},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr strings.Builder
			if code := run(append([]string{"nfsteer"}, tc.args...), &stdout, &stderr); code != 0 {
				t.Fatalf("status %d, stderr:\n%s", code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.want) {
				t.Errorf("help does not contain %q:\n%s", tc.want, stdout.String())
			}
		})
	}
}

// TestCLIRedisACL: the users nfsteer redis acl prints, created on a real
// Redis 7, can do what their role needs from the CLI and nothing more:
// the agent's user reads the map but cannot publish one, and says which
// permission is missing; the operator's user publishes.
func TestCLIRedisACL(t *testing.T) {
	labRedis(t)
	opt, err := redis.ParseURL(os.Getenv("NFSTEER_REDIS"))
	if err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(opt)
	t.Cleanup(func() { admin.Close() })
	r := nfsteer(t, "redis", "acl", "-o", "json")
	var users []struct {
		Role, User string
		Rules      []string
	}
	if err := json.Unmarshal([]byte(r.stdout), &users); err != nil || len(users) != 3 {
		t.Fatalf("redis acl -o json: %+v (%v)", r, err)
	}
	url := map[string]string{}
	for _, u := range users {
		args := []any{"acl", "setuser", u.User, "on", ">pw"}
		for _, rule := range u.Rules {
			args = append(args, rule)
		}
		if err := admin.Do(context.Background(), args...).Err(); err != nil {
			t.Fatalf("ACL SETUSER %s: %v", u.User, err)
		}
		url[u.Role] = "redis://" + u.User + ":pw@" + opt.Addr
	}
	add := []string{"tenant", "add", "initech", "--prefix", "10.30.0.0/16", "--chain", "fw"}
	if r := nfsteer(t, append(add, "--redis", url["agent"])...); r.code != 1 ||
		!strings.Contains(r.stderr, "lacks a permission") || !strings.Contains(r.stderr, "NOPERM") {
		t.Errorf("tenant add as the agent's user: %+v; want exit 1 naming the missing permission", r)
	}
	if r := nfsteer(t, "map", "show", "--redis", url["agent"]); r.code != 0 {
		t.Errorf("map show as the agent's user: %+v", r)
	}
	if r := nfsteer(t, append(add, "--redis", url["operator"])...); r.code != 0 {
		t.Errorf("tenant add as the operator's user: %+v", r)
	}
	if r := nfsteer(t, "redis", "acl", "--role", "admin"); r.code != 2 || !strings.Contains(r.stderr, `"admin"`) {
		t.Errorf("redis acl --role admin: %+v; want a usage error naming it", r)
	}
}

// TestCLISignedMaps: apply signs with --signing-key; status and map show
// given a key that did not sign the live map say so (status lists it as
// degraded, exit 4; map show fails, exit 1), and with the signer's public
// key both are content.
func TestCLISignedMaps(t *testing.T) {
	t.Setenv("NFSTEER_REDIS", redislab.Start(t, redislab.Options{}).URL)
	dir := t.TempDir()
	ops, other := filepath.Join(dir, "ops.key"), filepath.Join(dir, "other.key")
	for _, k := range []string{ops, other} {
		if r := nfsteer(t, "key", "generate", "--out", k); r.code != 0 {
			t.Fatalf("key generate: %+v", r)
		}
	}
	if r := nfsteer(t, "key", "generate", "--out", ops); r.code != 1 || !strings.Contains(r.stderr, "exists") {
		t.Errorf("key generate over an existing key: %+v; want a refusal", r)
	}
	if r := nfsteer(t, "apply", "-f", labMapFile(t), "--signing-key", ops); r.code != 0 {
		t.Fatalf("apply, signed: %+v", r)
	}
	if r := nfsteer(t, "tenant", "add", "initech", "--prefix", "10.30.0.0/16", "--chain", "fw", "--signing-key", ops, "--trust-key", ops+".pub"); r.code != 0 {
		t.Fatalf("tenant add, signed: %+v", r)
	}
	if r := nfsteer(t, "map", "show", "--trust-key", ops+".pub"); r.code != 0 {
		t.Errorf("map show trusting the signer: %+v", r)
	}
	if r := nfsteer(t, "map", "show", "--trust-key", other+".pub"); r.code != 1 || !strings.Contains(r.stderr, "not trusted") {
		t.Errorf("map show trusting another key: %+v; want exit 1 saying the key is not trusted", r)
	}
	r := nfsteer(t, "status", "--trust-key", other+".pub", "-o", "json")
	var st statusReport
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status -o json: %v\n%+v", err, r)
	}
	if r.code != exitDegraded || !slices.ContainsFunc(st.Degraded, func(d string) bool {
		return strings.Contains(d, "live map (version 2) is refused") && strings.Contains(d, "not trusted")
	}) {
		t.Errorf("status trusting another key: exit %d, degraded %q; want the refused map listed", r.code, st.Degraded)
	}
	if r := nfsteer(t, "map", "show", "--trust-key", filepath.Join(dir, "missing.pub")); r.code != 2 || !strings.Contains(r.stderr, "--trust-key") {
		t.Errorf("map show with a missing key file: %+v; want a usage error naming --trust-key", r)
	}
}

// trace --ingress says where a gateway with bound tenants drops a flow as
// spoofed, and traces the rest.
func TestCLITraceIngress(t *testing.T) {
	file := filepath.Join(t.TempDir(), "map.yaml")
	bound := strings.Replace(labmap.Firewall, "globex: {prefixes:", "globex: {ingress: [cg0], prefixes:", 1)
	if err := os.WriteFile(file, []byte(bound), 0o644); err != nil {
		t.Fatal(err)
	}
	args := func(src, iface string) []string {
		return []string{"trace", "--map", file, "--src", src, "--sport", "40000", "--dst", "10.99.0.2", "--dport", "5201", "--ingress", iface}
	}
	for _, tc := range []struct{ src, iface, want string }{
		{"10.20.1.2", "cg0", "tenant globex"},
		{"10.10.1.2", "cg0", "entering by cg0: dropped as spoofed: 10.10.1.2 enters by cg0, tenant globex's interface, from outside its prefixes"},
		{"10.20.1.2", "ca0", "entering by ca0: dropped as spoofed: 10.20.1.2 is tenant globex's, which enters by cg0, not ca0"},
		{"10.10.1.2", "ca0", "tenant acme"},
	} {
		if r := nfsteer(t, args(tc.src, tc.iface)...); r.code != 0 || !strings.Contains(r.stdout, tc.want) {
			t.Errorf("trace from %s on %s: %+v\nwant %q", tc.src, tc.iface, r, tc.want)
		}
	}
}

// TestKeyID: key id names each kind of key file and its ID, the same for
// a signing key's two halves and what key generate printed for a session
// key, and refuses a file that is no key.
func TestKeyID(t *testing.T) {
	dir := t.TempDir()
	ops, sess, bad := filepath.Join(dir, "ops.key"), filepath.Join(dir, "session.key"), filepath.Join(dir, "bad.key")
	if r := nfsteer(t, "key", "generate", "--out", ops); r.code != 0 {
		t.Fatalf("key generate: %+v", r)
	}
	r := nfsteer(t, "key", "generate", "--session", "--out", sess)
	if r.code != 0 {
		t.Fatalf("key generate --session: %+v", r)
	}
	k, err := signing.LoadSessionKey(sess)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.stdout, "session key "+k.ID()+": ") {
		t.Errorf("key generate --session printed %q; want the key's ID %s", r.stdout, k.ID())
	}
	r = nfsteer(t, "key", "id", ops, ops+".pub", sess, "-o", "json")
	var got []struct{ File, Kind, ID string }
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 0 || len(got) != 3 {
		t.Fatalf("key id -o json: %v\n%+v", err, r)
	}
	if got[0].Kind != signing.KindPrivate || got[1].Kind != signing.KindPublic || got[0].ID != got[1].ID || got[2].Kind != signing.KindSession || got[2].ID != k.ID() {
		t.Errorf("key id: %+v; want the private and public halves under one ID, and the session key under %s", got, k.ID())
	}
	if err := os.WriteFile(bad, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := nfsteer(t, "key", "id", bad); r.code != 1 || !strings.Contains(r.stderr, bad) {
		t.Errorf("key id of a file that is no key: %+v; want exit 1 naming it", r)
	}
	if r := nfsteer(t, "key", "id"); r.code != 2 {
		t.Errorf("key id with no file: %+v; want a usage error", r)
	}
}

// TestCLIReseal: after a change of session key, sessions reseal, given
// the new key and the old one accepted, seals anew what the old key
// sealed; sessions list given only the new key then refuses nothing. It
// needs a key to seal with.
func TestCLIReseal(t *testing.T) {
	s := labRedis(t)
	ctx := context.Background()
	dir := t.TempDir()
	oldKey, newKey := filepath.Join(dir, "old.key"), filepath.Join(dir, "new.key")
	for _, k := range []string{oldKey, newKey} {
		if r := nfsteer(t, "key", "generate", "--session", "--out", k); r.code != 0 {
			t.Fatalf("key generate --session: %+v", r)
		}
	}
	k1, err := signing.LoadSessionKey(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	s.SealSessions(signing.SessionKeys{Seal: k1})
	tab := liveTable(t, s)
	f := steering.Flow{Src: netip.MustParseAddr("10.20.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 40001, DstPort: 80, Proto: 6}
	code := steering.AffinityCode(&f)
	sess := sessions.Session{Key: sessions.KeyOf(&f), Tenant: "globex", Code: code, Pins: tab.PinsFor(tab.TenantByName("globex"), tab.SlotOf(code)),
		Created: time.Now().UnixNano(), Rule: -1}
	if _, err := s.NewSessions("", "", time.Minute).Write(ctx, sessions.Name(tab, []sessions.Op{{Kind: sessions.OpCreate, Session: sess}})); err != nil {
		t.Fatal(err)
	}
	if r := nfsteer(t, "sessions", "list", "--session-key", newKey); !strings.Contains(r.stderr, "skipped") {
		t.Fatalf("sessions list with only the new key, before the reseal: %+v; want the old key's record refused", r)
	}
	if r := nfsteer(t, "sessions", "reseal"); r.code != 2 || !strings.Contains(r.stderr, "--session-key") {
		t.Errorf("sessions reseal without a key: %+v; want a usage error naming --session-key", r)
	}
	var got struct{ Resealed, Refused int }
	r := nfsteer(t, "sessions", "reseal", "--session-key", newKey, "--session-key-accept", oldKey, "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 0 || got.Resealed != 1 || got.Refused != 0 {
		t.Errorf("sessions reseal: %+v (%v); want 1 record resealed, none refused", r, err)
	}
	r = nfsteer(t, "sessions", "list", "--session-key", newKey, "-o", "json")
	if r.code != 0 || strings.Contains(r.stderr, "skipped") || !strings.Contains(r.stdout, sess.Key.String()) {
		t.Errorf("sessions list with only the new key, after the reseal: %+v; want the session, and nothing refused", r)
	}
}
