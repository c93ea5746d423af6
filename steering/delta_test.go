package steering

import (
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// fromRedis returns p as a node holds it after reading it from Redis:
// encoded, decoded and validated.
func fromRedis(t testing.TB, p *Published) *Published {
	t.Helper()
	doc, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	q, err := DecodePublished(doc)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

var tableOpts = []cmp.Option{
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmpopts.IgnoreUnexported(ServiceInfo{}, TenantInfo{}),
}

// A node applying a delta to the version it holds must end up with the
// very map the publisher encoded (byte for byte), and a table deciding as
// one compiled from the whole document.
func TestDeltaMatchesDocument(t *testing.T) {
	initech := Tenant{Prefixes: []string{"10.30.0.0/16"}, Chain: []string{"dlp"}}
	tests := []struct {
		name string
		edit func(p *Published) (*Published, error)
	}{
		{"tenant added", func(p *Published) (*Published, error) {
			m, err := p.Map.AddTenant("initech", initech)
			return p.WithMap(m), err
		}},
		{"tenant removed", func(p *Published) (*Published, error) {
			m, err := p.Map.RemoveTenant("globex")
			return p.WithMap(m), err
		}},
		{"chain changed", func(p *Published) (*Published, error) {
			m := p.Map.shallow()
			g := *m.Tenants["globex"]
			g.Chain = []string{"dlp", "fw"}
			m.Tenants["globex"] = &g
			return p.WithMap(m), nil
		}},
		{"instance drained", func(p *Published) (*Published, error) { return p.Drain("fw-1") }},
		{"instance down and tenant added", func(p *Published) (*Published, error) {
			m, err := p.Map.AddTenant("initech", initech)
			q := p.WithMap(m)
			q.Down = []string{"dlp-2"}
			return q, err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, err := Local(labMap(t))
			if err != nil {
				t.Fatal(err)
			}
			base.Version = 1
			prev := fromRedis(t, base)
			prevTable, err := CompilePublished(prev)
			if err != nil {
				t.Fatal(err)
			}
			next, err := tt.edit(prev)
			if err != nil {
				t.Fatal(err)
			}
			next.Version = 2
			doc, err := next.Encode()
			if err != nil {
				t.Fatal(err)
			}
			d, ok := NewDelta(prev, next)
			if !ok {
				t.Fatal("no delta for a change of tenants and lists")
			}
			// The delta travels as JSON in the announcement.
			msg, _ := json.Marshal(d)
			var got Delta
			if err := json.Unmarshal(msg, &got); err != nil {
				t.Fatal(err)
			}
			applied, err := prev.Apply(&got)
			if err != nil {
				t.Fatal(err)
			}
			want, err := DecodePublished(doc)
			if err != nil {
				t.Fatal(err)
			}
			mb, _ := json.Marshal(applied.Map)
			if digest(mb) != want.mapSum || applied.mapSum != want.mapSum {
				t.Errorf("applied map differs from the published one:\n got %s", mb)
			}
			gt, err := CompileNext(prevTable, applied)
			if err != nil {
				t.Fatal(err)
			}
			wt, err := CompilePublished(want)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(wt.Tenants(), gt.Tenants(), tableOpts...); diff != "" {
				t.Errorf("tenants (-document +delta):\n%s", diff)
			}
			if diff := cmp.Diff(wt.Services(), gt.Services(), tableOpts...); diff != "" {
				t.Errorf("services (-document +delta):\n%s", diff)
			}
			if diff := cmp.Diff(wt.Instances(), gt.Instances(), tableOpts...); diff != "" {
				t.Errorf("instances (-document +delta):\n%s", diff)
			}
			for _, a := range []string{"10.10.1.7", "10.20.1.7", "10.30.4.5", "fd00:10::9", "192.0.2.1"} {
				addr := netip.MustParseAddr(a)
				if w, g := wt.TenantOf(addr), gt.TenantOf(addr); w != g {
					t.Errorf("TenantOf(%s): document %d, delta %d", a, w, g)
				}
			}
			// A later read of the whole document recognises the map.
			again, err := DecodePublishedAfter(doc, applied)
			if err != nil {
				t.Fatal(err)
			}
			if again.Map != applied.Map {
				t.Error("the document of the version the delta made was decoded again")
			}
		})
	}
}

// A change of services, slots or IDs, or a jump of versions, has no delta:
// nodes read the whole document.
func TestNoDeltaBeyondTenants(t *testing.T) {
	base, err := Local(labMap(t))
	if err != nil {
		t.Fatal(err)
	}
	base.Version = 1
	prev := fromRedis(t, base)
	added, err := prev.Map.AddInstance("fw", "fw-3", Addresses{"10.200.0.13"})
	if err != nil {
		t.Fatal(err)
	}
	slots := prev.Map.shallow()
	slots.Slots = 512
	for name, next := range map[string]*Published{
		"instance added": {Version: 2, Map: added, IDs: map[string]uint16{"fw-1": 1, "fw-2": 2, "fw-3": 3, "dlp-1": 4, "dlp-2": 5}},
		"slots changed":  {Version: 2, Map: slots, IDs: prev.IDs},
		"version jump":   {Version: 3, Map: prev.Map, IDs: prev.IDs},
	} {
		if _, err := next.Encode(); err != nil {
			t.Fatal(err)
		}
		if _, ok := NewDelta(prev, next); ok {
			t.Errorf("%s: got a delta", name)
		}
	}
}

// A bad delta is refused naming what is wrong, as validating the whole map
// would, and the version it was applied to is left as it was.
func TestDeltaRefused(t *testing.T) {
	base, err := Local(labMap(t))
	if err != nil {
		t.Fatal(err)
	}
	base.Version = 1
	prev := fromRedis(t, base)
	tests := []struct {
		name, delta string
		sentinel    error
		want        string
	}{
		{"overlapping prefix", `{"tenants":{"x":{"prefixes":["10.10.1.128/25"],"chain":["fw"]}}}`, ErrInvalidMap,
			"tenants.x.prefixes[0]: 10.10.1.128/25 overlaps 10.10.1.0/24 (tenants.acme.prefixes[0])"},
		{"covering prefix", `{"tenants":{"x":{"prefixes":["10.0.0.0/8"],"chain":["fw"]}}}`, ErrInvalidMap,
			"tenants.x.prefixes[0]: 10.0.0.0/8 overlaps 10.10.1.0/24 (tenants.acme.prefixes[0])"},
		{"two new tenants overlap", `{"tenants":{"x":{"prefixes":["10.40.0.0/16"],"chain":["fw"]},"y":{"prefixes":["10.40.1.0/24"],"chain":["fw"]}}}`, ErrInvalidMap,
			"tenants.y.prefixes[0]: 10.40.1.0/24 overlaps 10.40.0.0/16 (tenants.x.prefixes[0])"},
		{"unknown service", `{"tenants":{"x":{"prefixes":["10.40.0.0/16"],"chain":["ids"]}}}`, ErrInvalidMap,
			`tenants.x.chain[0]: unknown service "ids"`},
		{"v6 tenant on a v4-only service", `{"tenants":{"x":{"prefixes":["fd40::/64"],"chain":["dlp"]}}}`, ErrInvalidMap,
			`tenants.x.chain[0]: tenant has IPv6 prefixes but instance "dlp-1" of service "dlp" has no IPv6 address`},
		{"remove unknown tenant", `{"removed":["initech"]}`, ErrInvalidMap, `removed[0]: no tenant "initech" to remove`},
		{"unknown instance down", `{"down":["fw-9"]}`, ErrInvalidMap, `down[0]: no instance "fw-9" in the map`},
		{"empty tenant", `{"tenants":{"x":null}}`, ErrInvalidMap, "tenants.x: is empty"},
		{"wrong base", `{"base":7,"version":8}`, ErrNotBase, "node holds 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Delta{Base: 1, Version: 2}
			if err := json.Unmarshal([]byte(tt.delta), &d); err != nil {
				t.Fatal(err)
			}
			_, err := prev.Apply(&d)
			if !errors.Is(err, tt.sentinel) || err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Apply: %v\nwant %v naming %q", err, tt.sentinel, tt.want)
			}
			if len(prev.Map.Tenants) != 2 || prev.Map.Tenants["x"] != nil {
				t.Errorf("the base version changed: tenants %v", prev.Map.Tenants)
			}
		})
	}
}

// FuzzApplyDelta feeds announcements' deltas to a node holding the lab
// map: Apply must never panic nor change the base, and must agree with
// validating the whole resulting map, both what it accepts and what it
// refuses.
func FuzzApplyDelta(f *testing.F) {
	for _, s := range []string{
		`{"tenants":{"initech":{"prefixes":["10.30.0.0/16"],"chain":["dlp"]}}}`,
		`{"removed":["globex"],"drained":["fw-1"]}`,
		`{"tenants":{"acme":{"prefixes":["10.10.0.0/16"],"chain":["fw"],"allow":[{"proto":"tcp","ports":["80"]}]}}}`,
		`{"tenants":{"x":{"prefixes":["10.10.1.0/25","fd00:10::/48"],"chain":["fw","fw"]}},"removed":["acme"]}`,
		`{"down":["dlp-1","dlp-2"],"migrating":["fw-2"]}`,
	} {
		f.Add([]byte(s))
	}
	base, err := Local(labMap(f))
	if err != nil {
		f.Fatal(err)
	}
	base.Version = 1
	prev := fromRedis(f, base)
	before, _ := json.Marshal(prev.Map)
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Delta
		if json.Unmarshal(b, &d) != nil {
			return
		}
		d.Base, d.Version = 1, 2
		q, err := prev.Apply(&d)
		if after, _ := json.Marshal(prev.Map); string(after) != string(before) {
			t.Fatalf("Apply changed the base map:\n%s", after)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidMap) {
				t.Fatalf("refusal not wrapping ErrInvalidMap: %v", err)
			}
			// Unless the delta removes a tenant the map does not have,
			// what it makes is refused by validating it whole too.
			m := prev.Map.shallow()
			for _, name := range d.Removed {
				if _, ok := m.Tenants[name]; !ok {
					return
				}
				delete(m.Tenants, name)
			}
			maps.Copy(m.Tenants, d.Tenants)
			whole := &Published{Version: 2, Map: m, IDs: prev.IDs, Down: d.Down, Drained: d.Drained, Unhealthy: d.Unhealthy, Migrating: d.Migrating}
			if whole.Validate() == nil {
				t.Fatalf("Apply refused (%v) a map that full validation accepts", err)
			}
			return
		}
		if err := q.Map.Validate(); err != nil {
			t.Fatalf("Apply accepted a map that full validation refuses: %v", err)
		}
		for _, name := range d.Removed {
			if _, ok := d.Tenants[name]; !ok && q.Map.Tenants[name] != nil {
				t.Fatalf("removed tenant %q still there", name)
			}
		}
		if _, err := CompileNext(nil, q); err != nil {
			t.Fatalf("compiling an accepted delta: %v", err)
		}
	})
}
