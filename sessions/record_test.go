package sessions_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
)

// acme is acme's flow from source port sport on tab, pinned as the map
// decides.
func acme(tab *steering.Table, sport uint16) sessions.Session {
	f := steering.Flow{Src: netip.MustParseAddr("10.10.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: sport, DstPort: 5201, Proto: 6}
	code := steering.AffinityCode(&f)
	return sessions.Session{Key: sessions.KeyOf(&f), Tenant: "acme", Code: code,
		Pins: tab.PinsFor(tab.TenantByName("acme"), tab.SlotOf(code)), Created: 1_700_000_000_123_456_789, Rule: -1}
}

// TestRecordRoundTrip: a session named as a record and read back gives
// the same pins, pinned instances are named primary, and the one that
// would take over from each is named secondary.
func TestRecordRoundTrip(t *testing.T) {
	tab := labmap.Table(t)
	s := acme(tab, 40000)
	fwP, fwS := tab.RolesFor(tab.ServiceByName("fw"), tab.SlotOf(s.Code))
	dlpP, dlpS := tab.RolesFor(tab.ServiceByName("dlp"), tab.SlotOf(s.Code))
	for _, tc := range []struct {
		name string
		pin  *steering.Instance // pinned at the firewall
		want []sessions.Hop
	}{
		{"pinned as the map decides", fwP, []sessions.Hop{{"fw", fwP.Name, fwS.Name}, {"dlp", dlpP.Name, dlpS.Name}}},
		// Pinned to the secondary (an older map): the slot's primary is
		// the one that takes over.
		{"pinned off the slot's primary", fwS, []sessions.Hop{{"fw", fwS.Name, fwP.Name}, {"dlp", dlpP.Name, dlpS.Name}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := s
			s.Pins[0] = tc.pin.ID
			rec, ok := sessions.NewRecord(tab, &s)
			if !ok {
				t.Fatal("NewRecord refused a session of a tenant in the map")
			}
			want := sessions.Record{Flow: s.Key.String(), Tenant: "acme", Code: s.Code, Slot: tab.SlotOf(s.Code), Created: 1_700_000_000_123, Hops: tc.want}
			if diff := cmp.Diff(want, rec); diff != "" {
				t.Errorf("record (-want +got):\n%s", diff)
			}
			pins, matches := rec.Pins(tab)
			if pins != s.Pins || !matches {
				t.Errorf("Pins = %v, %v; want %v, true", pins, matches, s.Pins)
			}
			if err := rec.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

// TestRecordOnAnotherMap: what a record means on a map that no longer
// matches it.
func TestRecordOnAnotherMap(t *testing.T) {
	tab := labmap.Table(t)
	s := acme(tab, 40000)
	if _, ok := sessions.NewRecord(tab, &sessions.Session{Tenant: "initech"}); ok {
		t.Error("NewRecord named a session of a tenant the map does not have")
	}
	rec, _ := sessions.NewRecord(tab, &s)
	for _, tc := range []struct {
		name        string
		edit        func(*sessions.Record)
		wantMatches bool
		wantPins    func(p steering.Pins) steering.Pins
	}{
		{"an unknown tenant", func(r *sessions.Record) { r.Tenant = "initech" }, false, func(steering.Pins) steering.Pins { return steering.Pins{} }},
		{"a chain of another length", func(r *sessions.Record) { r.Hops = r.Hops[:1] }, false, func(p steering.Pins) steering.Pins { p[1] = 0; return p }},
		{"an instance the map lost", func(r *sessions.Record) { r.Hops[1].Primary = "dlp-9" }, true, func(p steering.Pins) steering.Pins { p[1] = 0; return p }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rec
			r.Hops = append([]sessions.Hop(nil), rec.Hops...)
			tc.edit(&r)
			pins, matches := r.Pins(tab)
			if matches != tc.wantMatches || pins != tc.wantPins(s.Pins) {
				t.Errorf("Pins = %v, %v; want %v, %v", pins, matches, tc.wantPins(s.Pins), tc.wantMatches)
			}
		})
	}
}

func TestRecordValidate(t *testing.T) {
	good := sessions.Record{Flow: "tcp/10.10.1.2:40000/10.99.0.2:5201", Hops: []sessions.Hop{{Service: "fw", Primary: "fw-1"}}}
	for _, tc := range []struct {
		name string
		edit func(*sessions.Record)
		want string
	}{
		{"no flow", func(r *sessions.Record) { r.Flow = "" }, "flow"},
		{"no hops", func(r *sessions.Record) { r.Hops = nil }, "0 hops"},
		{"too many hops", func(r *sessions.Record) { r.Hops = make([]sessions.Hop, steering.MaxChain+1) }, "hops"},
		{"a hop without a primary", func(r *sessions.Record) { r.Hops = []sessions.Hop{{Service: "fw"}} }, "hop 0 has no primary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			tc.edit(&r)
			if err := r.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if err := good.Validate(); err != nil {
		t.Errorf("Validate(good) = %v", err)
	}
}

// TestFirewallState pins the encoding records carry (nodes of other
// versions read it) and decodes it back.
func TestFirewallState(t *testing.T) {
	for _, tc := range []struct {
		s    sessions.Session
		want string
		ok   bool
	}{
		{sessions.Session{Rule: -1}, `{"verdict":"none"}`, false},
		{sessions.Session{Rule: 0}, `{"verdict":"allow","rule":0,"takeover":false}`, true},
		{sessions.Session{Rule: 12, TakenOver: true}, `{"verdict":"allow","rule":12,"takeover":true}`, true},
	} {
		got := tc.s.FirewallState()
		if got != tc.want {
			t.Errorf("FirewallState(rule %d) = %s, want %s", tc.s.Rule, got, tc.want)
		}
		f, err := sessions.ParseFirewallState(got)
		if err != nil || f.Admitted() != tc.ok || tc.ok && (f.Rule != tc.s.Rule || f.Takeover != tc.s.TakenOver) {
			t.Errorf("ParseFirewallState(%s) = %+v, %v", got, f, err)
		}
	}
	if _, err := sessions.ParseFirewallState("{"); err == nil {
		t.Error("ParseFirewallState accepted a truncated state")
	}
}

// FuzzParseFirewallState: never panics, and what it accepts encodes back
// to a state it reads the same.
func FuzzParseFirewallState(f *testing.F) {
	for _, s := range []string{`{"verdict":"none"}`, `{"verdict":"allow","rule":3,"takeover":true}`, `{}`, `[`, `{"rule":70000}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		st, err := sessions.ParseFirewallState(in)
		if err != nil {
			return
		}
		s := sessions.Session{Rule: -1}
		if st.Admitted() {
			s.Rule, s.TakenOver = max(st.Rule, 0), st.Takeover
		}
		back, err := sessions.ParseFirewallState(s.FirewallState())
		if err != nil || back.Admitted() != st.Admitted() || st.Admitted() && back.Rule != s.Rule {
			t.Errorf("%q -> %+v -> %s -> %+v, %v", in, st, s.FirewallState(), back, err)
		}
	})
}
