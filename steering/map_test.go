package steering

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"gopkg.in/yaml.v3"
)

func mustLoad(t testing.TB, path string) *Map {
	t.Helper()
	m, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestParseLabMap(t *testing.T) {
	m := mustLoad(t, "testdata/lab.yaml")
	want := &Map{
		Slots: 256,
		Services: map[string]*Service{
			"fw": {Function: "forward", Instances: map[string]Addresses{
				"fw-1": {"10.200.0.11", "fd00:200::11"},
				"fw-2": {"10.200.0.12", "fd00:200::12"},
			}},
			"dlp": {Function: "forward", Instances: map[string]Addresses{
				"dlp-1": {"10.200.0.21"}, "dlp-2": {"10.200.0.22"},
			}},
		},
		Tenants: map[string]*Tenant{
			"acme":   {Prefixes: []string{"10.10.1.0/24", "fd00:10::/64"}, Chain: []string{"fw"}},
			"globex": {Prefixes: []string{"10.20.1.0/24"}, Chain: []string{"fw", "dlp"}},
		},
	}
	if diff := cmp.Diff(want, m); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
}

// TestValidateRefuses checks that each kind of bad map is refused with an
// error naming the field and the reason.
func TestValidateRefuses(t *testing.T) {
	good, err := os.ReadFile("testdata/lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		old, new   string // replace old by new in the lab map
		wantField  string
		wantReason string
	}{
		{"unknown service in chain", "chain: [fw, dlp]", "chain: [fw, ids]", "tenants.globex.chain[1]", `unknown service "ids"`},
		{"service twice in chain", "chain: [fw, dlp]", "chain: [fw, fw]", "tenants.globex.chain[1]", "appears twice"},
		{"empty chain", "chain: [fw, dlp]", "chain: []", "tenants.globex.chain", "chain is empty"},
		{"overlapping tenants", "prefixes: [10.20.1.0/24]", "prefixes: [10.10.0.0/16]", "tenants.acme.prefixes[0]", "overlaps 10.10.0.0/16"},
		{"bad CIDR", "prefixes: [10.20.1.0/24]", "prefixes: [10.20.1.0/33]", "tenants.globex.prefixes[0]", "is not a CIDR prefix"},
		{"host bits", "prefixes: [10.20.1.0/24]", "prefixes: [10.20.1.7/24]", "tenants.globex.prefixes[0]", "host bits set"},
		{"no prefixes", "prefixes: [10.20.1.0/24]", "prefixes: []", "tenants.globex.prefixes", "no prefixes"},
		{"duplicate instance address", "dlp-2: 10.200.0.22", "dlp-2: 10.200.0.21", "services.dlp.instances.dlp-2[0]", "duplicate instance address 10.200.0.21"},
		{"bad address", "dlp-2: 10.200.0.22", "dlp-2: 10.200.0.x", "services.dlp.instances.dlp-2[0]", "not an IP address"},
		{"two addresses of one family", "dlp-2: 10.200.0.22", "dlp-2: [10.200.0.22, 10.200.0.23]", "services.dlp.instances.dlp-2[1]", "second IPv4 address"},
		{"empty service", "instances: {dlp-1: 10.200.0.21, dlp-2: 10.200.0.22}", "instances: {}", "services.dlp.instances", "service has no instances"},
		{"unknown function", "function: forward\n    instances: {dlp", "function: teleport\n    instances: {dlp", "services.dlp.function", `unknown function "teleport"`},
		{"IPv6 tenant without IPv6 instance", "chain: [fw]}", "chain: [fw, dlp]}", "tenants.acme.chain[1]", `instance "dlp-1" of service "dlp" has no IPv6 address`},
		{"slots not a power of two", "slots: 256", "slots: 100", "slots", "not a power of two"},
		{"duplicate instance name", "dlp-2: 10.200.0.22", "fw-1: 10.200.0.22", "services.fw.instances.fw-1", `also used in service "dlp"`},
		{"not an interface name", "globex: {prefixes", "globex: {ingress: [eth1/2], prefixes", "tenants.globex.ingress[0]", "not an interface name"},
		{"an interface name too long", "globex: {prefixes", "globex: {ingress: [abcdefghijklmnop], prefixes", "tenants.globex.ingress[0]", "not an interface name"},
		{"an interface twice", "globex: {prefixes", "globex: {ingress: [cg0, cg0], prefixes", "tenants.globex.ingress[1]", `interface "cg0" appears twice`},
		{"overlay VNI 0", "slots: 256", "slots: 256\noverlay: {vni: 0, gateways: {gw: 10.200.0.1}}", "overlay.vni", "0: want 1 to 16777215"},
		{"overlay gateway named as an instance", "slots: 256", "slots: 256\noverlay: {vni: 7, gateways: {fw-1: 10.200.0.1}}", "overlay.gateways.fw-1", `"fw-1" is an instance's name`},
		{"overlay gateway with an instance's address", "slots: 256", "slots: 256\noverlay: {vni: 7, gateways: {gw: 10.200.0.21}}", "overlay.gateways.gw[0]", "duplicate address 10.200.0.21 (also services.dlp.instances.dlp-1)"},
		{"overlay gateway with a bad address", "slots: 256", "slots: 256\noverlay: {vni: 7, gateways: {gw: 10.200.0}}", "overlay.gateways.gw[0]", "not an IP address"},
		{"overlay with no family common to all nodes", "slots: 256", "slots: 256\noverlay: {vni: 7, gateways: {gw: 'fd00:200::1'}}", "overlay", "overlay.gateways.gw has no IPv4 address and services.dlp.instances.dlp-1 no IPv6 address"},
		{"allow rules and no firewall", "chain: [fw, dlp]", "chain: [fw, dlp], allow: [{proto: tcp, ports: ['443']}]", "tenants.globex.allow", "no service of the chain [fw dlp] is a firewall"},
		{"an interface of two tenants", "acme:   {prefixes", "acme:   {ingress: [cg0], prefixes", "tenants.globex.ingress[0]", `interface "cg0" is tenant acme's ingress already`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(string(good), tt.old, tt.new, 1)
			if tt.name == "an interface of two tenants" {
				doc = strings.Replace(doc, "globex: {prefixes", "globex: {ingress: [cg0], prefixes", 1)
			}
			if doc == string(good) {
				t.Fatalf("test case does not change the map: %q not found", tt.old)
			}
			_, err := Parse([]byte(doc))
			if !errors.Is(err, ErrInvalidMap) {
				t.Fatalf("Parse: got %v, want an error wrapping ErrInvalidMap", err)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Parse: got %T (%v), want *ValidationError", err, err)
			}
			for _, p := range ve.Problems {
				if p.Field == tt.wantField && strings.Contains(p.Reason, tt.wantReason) {
					return
				}
			}
			t.Errorf("Parse: %v\nwant a problem at %s containing %q", err, tt.wantField, tt.wantReason)
		})
	}
}

func TestParseRefusesUnknownFieldsAndJunk(t *testing.T) {
	for _, doc := range []string{"", "slots: 256\nservics: {}\n", "tenants: [1, 2]", "services: {fw: {instances: {a: {x: 1}}}}"} {
		if _, err := Parse([]byte(doc)); !errors.Is(err, ErrInvalidMap) {
			t.Errorf("Parse(%q) = %v, want ErrInvalidMap", doc, err)
		}
	}
}

func TestParseAllow(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Allow
		err      string // in the error; "" for none
	}{
		{"full rule", `{proto: tcp, dst: 10.99.0.0/24, ports: ["443", "8000-8100"]}`,
			Allow{Proto: "tcp", Dst: "10.99.0.0/24", Ports: []string{"443", "8000-8100"}}, ""},
		{"block form", "proto: udp\ndst: fd00::/64\n", Allow{Proto: "udp", Dst: "fd00::/64"}, ""},
		{"a typo that would open every port", `{proto: tcp, dst: 10.99.0.0/24, port: 443}`, Allow{}, `unknown key "port"`},
		{"a port that is not a list", `{proto: tcp, ports: 443}`, Allow{}, "`443` where a list is wanted"},
		{"a list where a string goes", `{proto: [tcp]}`, Allow{}, "a list where a string is wanted"},
		{"two rules in one", "{proto: tcp}\n---\n{proto: udp}\n", Allow{}, "more than one rule"},
		{"empty", "", Allow{}, "the rule is empty"},
		{"not a mapping", "tcp", Allow{}, "where a mapping is wanted"},
		{"unclosed", "{proto: tcp", Allow{}, "did not find expected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAllow(tc.in)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("ParseAllow(%q): %v", tc.in, err)
				}
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("ParseAllow(%q) (-want +got):\n%s", tc.in, diff)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalidMap) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseAllow(%q) = %+v, %v; want an ErrInvalidMap saying %q", tc.in, got, err, tc.err)
			}
		})
	}
}

// FuzzParseAllow checks that no input panics the rule parser, and that a
// rule it accepts, and the map would take, fits in a map the way the map
// file would write it. A rule the map refuses (a protocol "\n0", say,
// which YAML writes back as "0") need not survive the trip: the map
// names what is wrong with it.
func FuzzParseAllow(f *testing.F) {
	f.Add(`{proto: tcp, dst: 10.99.0.0/24, ports: ["443"]}`)
	f.Add(`{proto: tcp, port: 443}`)
	f.Add("proto: udp\n---\nproto: tcp\n")
	f.Fuzz(func(t *testing.T, in string) {
		a, err := ParseAllow(in)
		if err != nil {
			if !errors.Is(err, ErrInvalidMap) {
				t.Fatalf("error does not wrap ErrInvalidMap: %v", err)
			}
			return
		}
		var v validator
		if compileAllow(&v, "allow", a); v.err() != nil {
			return
		}
		b, err := yaml.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseAllow(string(b))
		if err != nil {
			t.Fatalf("ParseAllow(%q) accepted %+v, whose YAML %q it refuses: %v", in, a, b, err)
		}
		if diff := cmp.Diff(a, back, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip of %q (-first +second):\n%s", in, diff)
		}
	})
}

// FuzzParse checks that no document panics the parser, and that a document
// it accepts always compiles and decides.
func FuzzParse(f *testing.F) {
	good, _ := os.ReadFile("testdata/lab.yaml")
	f.Add(good)
	f.Add([]byte("slots: 2\nservices: {s: {instances: {i: 10.0.0.1}}}\ntenants: {t: {prefixes: [10.1.0.0/16], chain: [s]}}"))
	f.Add([]byte("tenants: {t: {prefixes: ['::/0'], chain: []}}"))
	f.Add([]byte(zonedMap)) // with snat and via
	f.Fuzz(func(t *testing.T, doc []byte) {
		m, err := Parse(doc)
		if err != nil {
			if !errors.Is(err, ErrInvalidMap) {
				t.Fatalf("error does not wrap ErrInvalidMap: %v", err)
			}
			return
		}
		tab, err := Compile(m)
		if err != nil {
			t.Fatalf("valid map does not compile: %v", err)
		}
		for i := range tab.Tenants() {
			want := i
			if tab.Tenants()[i].Zoned() {
				want = -1 // told apart by where it enters, never by its addresses
			}
			for _, p := range tab.Tenants()[i].Prefixes {
				if got := tab.TenantOf(p.Addr()); got != want {
					t.Fatalf("TenantOf(%s) = %d, want %d", p.Addr(), got, want)
				}
				f := Flow{Src: p.Addr(), Dst: p.Addr(), Proto: 6}
				_ = tab.Decide(Node{Instance: -1}, &f, false, nil)
			}
		}
	})
}
