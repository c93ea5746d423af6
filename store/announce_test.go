package store

import (
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
		b, logged, err := announce(live, next)
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
