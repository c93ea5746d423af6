package store

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/sessions"
)

func TestRoles(t *testing.T) {
	type held struct {
		instance string
		primary  bool
	}
	for _, tc := range []struct {
		name  string
		hops  []sessions.Hop
		roles roles
		held  []held
	}{
		{"two hops with secondaries", []sessions.Hop{{Service: "fw", Primary: "fw-1", Secondary: "fw-2"}, {Service: "dlp", Primary: "dlp-2", Secondary: "dlp-1"}},
			"fw-1/fw-2,dlp-2/dlp-1", []held{{"fw-1", true}, {"fw-2", false}, {"dlp-2", true}, {"dlp-1", false}}},
		{"a hop with no secondary", []sessions.Hop{{Service: "fw", Primary: "fw-1"}, {Service: "dlp", Primary: "dlp-1", Secondary: "dlp-2"}},
			"fw-1/,dlp-1/dlp-2", []held{{"fw-1", true}, {"dlp-1", true}, {"dlp-2", false}}},
		{"one hop", []sessions.Hop{{Service: "fw", Primary: "fw.a_1", Secondary: "fw.b_2"}},
			"fw.a_1/fw.b_2", []held{{"fw.a_1", true}, {"fw.b_2", false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rolesOf(tc.hops)
			if r != tc.roles {
				t.Fatalf("rolesOf = %q; want %q", r, tc.roles)
			}
			if want := "nfsteer:i:r:{" + string(tc.roles) + "}"; r.key() != want {
				t.Errorf("key = %q; want %q", r.key(), want)
			}
			var got []held
			r.instances(func(in string, primary bool) { got = append(got, held{in, primary}) })
			if diff := cmp.Diff(tc.held, got, cmp.AllowUnexported(held{})); diff != "" {
				t.Errorf("instances (-want +got):\n%s", diff)
			}
			for _, h := range tc.held {
				reg, ok := registeredAs(h.instance, r.member())
				if !ok || reg.key != r.key() || reg.primary != h.primary || len(reg.peers) != len(tc.held)-1 {
					t.Errorf("registeredAs(%s, %s) = %+v, %v; want its key, primary %v and the %d others",
						h.instance, r.member(), reg, ok, h.primary, len(tc.held)-1)
				}
			}
			if _, ok := r.holds("fw-9"); ok {
				t.Errorf("holds(fw-9) = true for roles that do not name it")
			}
		})
	}
}

// FuzzRegisteredAs: a name in an instance's set of index names (written by
// any version, or by hand) never panics the reader; one it accepts names
// an index of that instance, with the other instances it names; and the
// roles of any hops read back as written.
func FuzzRegisteredAs(f *testing.F) {
	f.Add("fw-1", "r:fw-1/fw-2,dlp-1/dlp-2", "fw-1", "fw-2", "dlp-1")
	f.Add("dlp-2", "r:fw-1/,dlp-1/dlp-2", "fw-1", "", "dlp-1")
	f.Add("fw-1", "p:fw-2", "a", "b", "c")
	f.Add("fw-2", "s:fw-1", "a", "", "c")
	f.Add("fw-1", "p:", "a", "b", "")
	f.Add("fw-9", "r:fw-1/fw-2", "a", "b", "c")
	f.Add("x", "r:", "", "", "")
	f.Add("x", "q:x", "a", "b", "c")
	f.Fuzz(func(t *testing.T, instance, member, p1, s1, p2 string) {
		if reg, ok := registeredAs(instance, member); ok {
			if !strings.HasPrefix(reg.key, "nfsteer:i:") {
				t.Fatalf("registeredAs(%q, %q) names key %q", instance, member, reg.key)
			}
			if slices.ContainsFunc(reg.peers, func(p peerName) bool { return p.instance == instance || p.instance == "" }) {
				t.Fatalf("registeredAs(%q, %q) names the instance, or none, among its peers: %+v", instance, member, reg.peers)
			}
		}
		// Names as steering allows them: no '/' or ','.
		valid := func(s string) bool { return !strings.ContainsAny(s, "/,") }
		if p1 == "" || p2 == "" || !valid(p1) || !valid(s1) || !valid(p2) {
			return
		}
		hops := []sessions.Hop{{Primary: p1, Secondary: s1}, {Primary: p2}}
		r := rolesOf(hops)
		var got []sessions.Hop
		r.pairs(func(p pair) { got = append(got, sessions.Hop{Primary: p.primary, Secondary: p.secondary}) })
		if !sameRoles(hops, got) {
			t.Fatalf("roles %q read back as %+v; want %+v", r, got, hops)
		}
		if reg, ok := registeredAs(p1, r.member()); !ok || reg.key != r.key() {
			t.Fatalf("registeredAs(%q, %q) = %+v, %v; want key %q", p1, r.member(), reg, ok, r.key())
		}
	})
}

// TestUpkeepDue: a writer trims an index it adds to at its first add and
// then once per trimEvery, registers it at its first add and then once
// per registerEvery, and forgets the indexes it no longer adds to.
func TestUpkeepDue(t *testing.T) {
	w := &Sessions{trimEvery: 10 * time.Second, registerEvery: time.Minute, upkeep: map[roles]indexUpkeep{}}
	type due struct{ Trim, Register bool }
	for _, tc := range []struct {
		at   int64 // ms
		r    roles
		want due
	}{
		{1_000, "fw-1/fw-2", due{true, true}},
		{1_000, "fw-2/fw-1", due{true, true}},
		{5_000, "fw-1/fw-2", due{false, false}},
		{11_000, "fw-1/fw-2", due{true, false}},
		{20_000, "fw-1/fw-2", due{false, false}},
		{21_000, "fw-1/fw-2", due{true, false}},
		{61_000, "fw-1/fw-2", due{true, true}},
		// fw-2/fw-1, not added to since 1 s, was forgotten at 61 s:
		// its next add trims and registers it as a first one.
		{62_000, "fw-2/fw-1", due{true, true}},
	} {
		trim, register := w.upkeepDue(tc.r, tc.at)
		if diff := cmp.Diff(tc.want, due{trim, register}); diff != "" {
			t.Errorf("at %d ms, %s (-want +got):\n%s", tc.at, tc.r, diff)
		}
	}
	if len(w.upkeep) != 2 {
		t.Errorf("the writer keeps the upkeep of %d indexes; want 2", len(w.upkeep))
	}
	// A minute later, neither added to since: both are forgotten at the
	// next add (of a third).
	w.upkeepDue("fw-3/", 130_000)
	if _, ok := w.upkeep["fw-1/fw-2"]; ok || len(w.upkeep) != 1 {
		t.Errorf("after a minute without adds, the writer keeps %d indexes' upkeep; want the third's only", len(w.upkeep))
	}
}
