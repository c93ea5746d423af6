package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/nfsteer/nfsteer/steering"
)

// A delta too big for an announcement is left out: nodes read the
// document. A small one travels whole.
func TestAnnounceBoundsTheDelta(t *testing.T) {
	base := &steering.Map{Services: map[string]*steering.Service{
		"fw": {Instances: map[string]steering.Addresses{"fw-1": {"10.200.0.11"}}},
	}, Tenants: map[string]*steering.Tenant{}}
	live, err := steering.Local(base)
	if err != nil {
		t.Fatal(err)
	}
	live.Version = 1
	for _, tt := range []struct {
		tenants int
		delta   bool
	}{{1, true}, {2000, false}} {
		m := &steering.Map{Services: base.Services, Tenants: map[string]*steering.Tenant{}}
		for i := range tt.tenants {
			m.Tenants[fmt.Sprintf("t%04d", i)] = &steering.Tenant{Prefixes: []string{fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)}, Chain: []string{"fw"}}
		}
		next := live.WithMap(m)
		next.Version = 2
		if _, err := next.Encode(); err != nil {
			t.Fatal(err)
		}
		b, logged, err := (&Store{}).announce(live, next)
		if err != nil {
			t.Fatal(err)
		}
		if logged != tt.delta {
			t.Errorf("%d tenants added: logged %t, want %t", tt.tenants, logged, tt.delta)
		}
		var a Announcement
		if err := json.Unmarshal(b, &a); err != nil {
			t.Fatal(err)
		}
		if a.Version != 2 || (a.Delta != nil) != tt.delta || len(b) > maxDelta {
			t.Errorf("%d tenants added: announcement of %d bytes, version %d, delta %t; want version 2, delta %t, at most %d bytes",
				tt.tenants, len(b), a.Version, a.Delta != nil, tt.delta, maxDelta)
		}
	}
}

// FuzzDecodeAnnouncement: any bytes on the channel or in the log decode
// to an announcement or an error, never a panic, and a decoded delta
// encodes back to the bytes its signature covers, in encoding/json's form:
// compact, with <, > and & escaped, as nfsteer's publisher writes and
// signs them (announce). Only that publisher encodes announcements.
func FuzzDecodeAnnouncement(f *testing.F) {
	f.Add([]byte(`{"version":3,"delta":{"version":3,"base":2,"map_sum":"x","drained":["fw-2"]},"sig":{"key":"00","sig":"AAAA"}}`))
	f.Add([]byte(`{"version":3}`))
	f.Add([]byte(`{"version":3,"delta":null}`))
	f.Add([]byte(`{"version":3,"delta":{"version":3, "base":2}}`))
	f.Add([]byte(`{"version":3,"delta":{"version":3,"base":2,"map_sum":"","drained":["&"]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var a Announcement
		if err := steering.DecodeJSON(b, &a); err != nil || a.Delta == nil {
			return
		}
		out, err := json.Marshal(a)
		if err != nil {
			t.Fatalf("re-encoding a decoded announcement: %v", err)
		}
		var back Announcement
		if err := steering.DecodeJSON(out, &back); err != nil {
			t.Fatalf("decoding a re-encoded announcement %s: %v", out, err)
		}
		// The encoder compacts and escapes (a publisher's deltas are
		// both already).
		var compact, canonical bytes.Buffer
		if err := json.Compact(&compact, a.delta); err != nil {
			t.Fatal(err)
		}
		json.HTMLEscape(&canonical, compact.Bytes())
		if string(back.delta) != canonical.String() {
			t.Fatalf("the delta's bytes changed: %s, then %s", a.delta, back.delta)
		}
	})
}
