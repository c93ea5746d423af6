package store

import (
	"encoding/json"
	"testing"

	"github.com/nfsteer/nfsteer/sessions"
)

// TestMetaJSON: a record is encoded byte for byte as encoding/json
// encodes it (readers decode it with encoding/json, and a create that
// lost compares the first writer's record with its own by their hops'
// bytes), escapes included; FuzzDecodeRecord checks the same on what it
// generates.
func TestMetaJSON(t *testing.T) {
	hops := []sessions.Hop{{Service: "fw", Primary: "fw-1", Secondary: "fw-2"}, {Service: "dlp", Primary: "dlp-1"}}
	for _, tc := range []struct {
		name string
		m    meta
		// as, if set, is the meta encoding/json sees as m: m's creator
		// as its State.
		as *meta
	}{
		{"a create", meta{Flow: "6:10.10.1.2:40000-10.99.0.2:5201", Tenant: "acme", Code: 7, Slot: 7, Version: 3, Created: 1700000000000, Hops: hops}, nil},
		{"a firewall's create, with its verdict", meta{Flow: "6:10.10.1.2:40000-10.99.0.2:5201", Tenant: "acme", Code: 1 << 31, Slot: 4095, Version: 1<<64 - 1, Created: -1,
			State: map[string]string{"fw": (&sessions.Session{Rule: 3}).FirewallState()}, Hops: hops}, nil},
		{"a firewall's create, its verdict its creator's", meta{Flow: "6:10.10.1.2:40000-10.99.0.2:5201", Tenant: "acme", Created: 1,
			creator: ownState{"fw", (&sessions.Session{Rule: 3}).FirewallState()}, Hops: hops},
			&meta{Flow: "6:10.10.1.2:40000-10.99.0.2:5201", Tenant: "acme", Created: 1,
				State: map[string]string{"fw": (&sessions.Session{Rule: 3}).FirewallState()}, Hops: hops}},
		{"a creator's empty state, escaped", meta{Flow: "f", creator: ownState{`"fw"`, ""}, Hops: hops},
			&meta{Flow: "f", State: map[string]string{`"fw"`: ""}, Hops: hops}},
		{"states in key order", meta{Flow: "f", State: map[string]string{"ips": "{}", "fw": `{"verdict":"none"}`, "dlp": ""}, Hops: hops}, nil},
		{"an empty state is none", meta{Flow: "f", State: map[string]string{}, Hops: hops}, nil},
		{"no hops", meta{Flow: "f"}, nil},
		{"no hop", meta{Flow: "f", Hops: []sessions.Hop{}}, nil},
		{"quotes and backslashes", meta{Flow: `a"b\c`, Tenant: `\"`, Hops: []sessions.Hop{{Service: `"`, Primary: `\`}}}, nil},
		{"what encoding/json escapes its own way", meta{Flow: "<a&b>", Tenant: "\x00\n\t\u2028é\xff", Hops: []sessions.Hop{{Service: "\x7f", Primary: "ü"}}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			as := &tc.m
			if tc.as != nil {
				as = tc.as
			}
			want, err := json.Marshal(as)
			if err != nil {
				t.Fatal(err)
			}
			got, hopsLen := tc.m.appendJSON([]byte("prefix"))
			if string(got[len("prefix"):]) != string(want) {
				t.Errorf("appendJSON:\n got %s\nwant %s", got[len("prefix"):], want)
			}
			if tail, want := string(got[len(got)-hopsLen:]), string(want[len(want)-hopsLen:]); tail[:8] != `,"hops":` || tail != want {
				t.Errorf("hops tail %q, want it to start at ,\"hops\":", tail)
			}
		})
	}
}

func BenchmarkMetaJSON(b *testing.B) {
	m := meta{Flow: "6:10.10.1.2:40000-10.99.0.2:5201", Tenant: "acme", Code: 7, Slot: 7, Version: 3, Created: 1700000000000,
		State: map[string]string{"fw": (&sessions.Session{Rule: 3}).FirewallState()},
		Hops:  []sessions.Hop{{Service: "fw", Primary: "fw-1", Secondary: "fw-2"}, {Service: "dlp", Primary: "dlp-1", Secondary: "dlp-2"}}}
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			json.Marshal(m)
		}
	})
	b.Run("appendJSON", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 512)
		for b.Loop() {
			buf, _ = m.appendJSON(buf[:0])
		}
	})
}
