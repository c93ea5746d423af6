package steering

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
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

// version1 returns m as version 1, as a node holds it from Redis.
func version1(t testing.TB, m *Map) *Published {
	t.Helper()
	p, err := Local(m)
	if err != nil {
		t.Fatal(err)
	}
	p.Version = 1
	return fromRedis(t, p)
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
			prev := version1(t, labMap(t))
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
			if diff := tenantDiff(wt, gt, labAddrs); diff != "" {
				t.Errorf("tenants (-document +delta):\n%s", diff)
			}
			if diff := cmp.Diff(wt.Services(), gt.Services(), tableOpts...); diff != "" {
				t.Errorf("services (-document +delta):\n%s", diff)
			}
			if diff := cmp.Diff(wt.Instances(), gt.Instances(), tableOpts...); diff != "" {
				t.Errorf("instances (-document +delta):\n%s", diff)
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

// A change of services, slots, IDs or the overlay, or a jump of versions, has no delta:
// nodes read the whole document.
func TestNoDeltaBeyondTenants(t *testing.T) {
	prev := version1(t, labMap(t))
	added, err := prev.Map.AddInstance("fw", "fw-3", Addresses{"10.200.0.13"})
	if err != nil {
		t.Fatal(err)
	}
	slots := prev.Map.shallow()
	slots.Slots = 512
	overlay := prev.Map.shallow()
	overlay.Overlay = &Overlay{VNI: 42, Gateways: map[string]Addresses{"gw": {"10.200.0.1"}}}
	for name, next := range map[string]*Published{
		"overlay added":  {Version: 2, Map: overlay, IDs: prev.IDs},
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
	prev := version1(t, labMap(t))
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
		{"an ingress of two tenants", `{"tenants":{"x":{"ingress":["c1"],"prefixes":["10.40.0.0/16"],"chain":["fw"]},"y":{"ingress":["c1"],"prefixes":["10.41.0.0/16"],"chain":["fw"]}}}`, ErrInvalidMap,
			`tenants.y.ingress[0]: interface "c1" is tenant x's ingress already`},
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
	prev := version1(f, labMap(f))
	prevTable, err := CompilePublished(prev)
	if err != nil {
		f.Fatal(err)
	}
	before, _ := json.Marshal(prev.Map)
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Delta
		if json.Unmarshal(b, &d) != nil {
			return
		}
		d.Base, d.Version = 1, 2
		if len(b)%2 == 0 {
			// Half the runs change a prepared copy of the tenants.
			prev.Prepare()
		}
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
		want, err := CompileNext(nil, q)
		if err != nil {
			t.Fatalf("compiling an accepted delta: %v", err)
		}
		// Compiled on the base's table, only the changed tenants are
		// touched; it must decide as the whole compile does.
		got, err := CompileNext(prevTable, q)
		if err != nil {
			t.Fatalf("compiling an accepted delta on the base's table: %v", err)
		}
		addrs := slices.Clone(labAddrs)
		for _, tm := range d.Tenants {
			for _, s := range tm.Prefixes {
				addrs = append(addrs, netip.MustParsePrefix(s).Addr())
			}
		}
		if diff := tenantDiff(want, got, addrs); diff != "" {
			t.Fatalf("tenants (-whole +incremental):\n%s", diff)
		}
	})
}

// labAddrs are addresses in and around the lab map's tenants.
var labAddrs = func() []netip.Addr {
	var out []netip.Addr
	for _, a := range []string{"10.10.1.7", "10.10.1.200", "10.20.1.7", "10.30.4.5", "fd00:10::9", "192.0.2.1", "::1"} {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}()

// tenantDiff compares two tables' tenants as the packet path sees them:
// the tenants in the map, each one's lookup by name, and the tenant (by
// name: indexes are each table's own) each of addrs belongs to.
func tenantDiff(want, got *Table, addrs []netip.Addr) string {
	if diff := cmp.Diff(want.LiveTenants(), got.LiveTenants(), tableOpts...); diff != "" {
		return diff
	}
	name := func(t *Table, i int) string {
		if i < 0 {
			return "(none)"
		}
		return t.Tenants()[i].Name
	}
	var out strings.Builder
	if want.TenantCount() != got.TenantCount() {
		fmt.Fprintf(&out, "TenantCount: -%d +%d\n", want.TenantCount(), got.TenantCount())
	}
	for _, ti := range want.LiveTenants() {
		if g := got.TenantByName(ti.Name); g < 0 || got.Tenants()[g].Name != ti.Name {
			fmt.Fprintf(&out, "TenantByName(%s): +%s\n", ti.Name, name(got, g))
		}
	}
	for _, a := range addrs {
		if w, g := name(want, want.TenantOf(a)), name(got, got.TenantOf(a)); w != g {
			fmt.Fprintf(&out, "TenantOf(%s): -%s +%s\n", a, w, g)
		}
	}
	return out.String()
}

// A node applies delta after delta to its table: tenants added, removed,
// changed and prefixes moving between tenants, across the merges of the
// lookups' overlays and the fresh builds that clear removed tenants'
// entries. After each, the table must decide as one compiled from the
// whole map, and removed tenants' entries must stay bounded.
func TestTenantsAfterManyDeltas(t *testing.T) {
	p := version1(t, bigMap(20, 300))
	table, err := CompilePublished(p)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var addrs []netip.Addr
	for i := range 400 {
		addrs = append(addrs, netip.MustParseAddr(fmt.Sprintf("fd10:0:0:%x::1", i)))
	}
	appended, fresh := 0, 0
	for v := uint64(2); v < 400; v++ {
		d := &Delta{Base: v - 1, Version: v, Tenants: map[string]*Tenant{}}
		names := slices.Sorted(maps.Keys(p.Map.Tenants))
		for range 1 + rng.IntN(6) {
			switch name := names[rng.IntN(len(names))]; rng.IntN(4) {
			case 0: // removed
				if _, ok := d.Tenants[name]; !ok && !slices.Contains(d.Removed, name) && len(names) > 50 {
					d.Removed = append(d.Removed, name)
				}
			case 1: // added, on a free /64 of its own
				used := map[string]bool{}
				for _, tm := range p.Map.Tenants {
					used[tm.Prefixes[0]] = true
				}
				for _, tm := range d.Tenants {
					used[tm.Prefixes[0]] = true
				}
				for i := range 400 {
					if pfx := fmt.Sprintf("fd10:0:0:%x::/64", i); !used[pfx] {
						d.Tenants[fmt.Sprintf("n%d-%d", v, i)] = &Tenant{Prefixes: []string{pfx}, Chain: []string{"svc1"}}
						break
					}
				}
			default: // changed: another chain, same prefixes
				if !slices.Contains(d.Removed, name) {
					tm := *p.Map.Tenants[name]
					tm.Chain = []string{fmt.Sprintf("svc%d", rng.IntN(10))}
					d.Tenants[name] = &tm
				}
			}
		}
		q, err := p.Apply(d)
		if err != nil {
			t.Fatalf("version %d: %v", v, err)
		}
		next, err := CompileNext(table, q)
		if err != nil {
			t.Fatal(err)
		}
		want, err := CompileNext(nil, q)
		if err != nil {
			t.Fatal(err)
		}
		if diff := tenantDiff(want, next, addrs); diff != "" {
			t.Fatalf("version %d (-whole +incremental):\n%s", v, diff)
		}
		for _, name := range d.Removed {
			if i := next.TenantByName(name); i >= 0 {
				t.Fatalf("version %d: removed tenant %s found at %d", v, name, i)
			}
		}
		if dead := len(next.Tenants()) - next.TenantCount(); dead > next.TenantCount()/4+64+2*len(d.Tenants) {
			t.Fatalf("version %d: %d entries of removed tenants for %d tenants", v, dead, next.TenantCount())
		}
		if len(next.Tenants()) == next.TenantCount() && len(table.Tenants()) > table.TenantCount() {
			fresh++ // the removed tenants' entries are gone
		} else {
			appended++
		}
		p, table = q, next
	}
	// Both ways of building were taken.
	if appended == 0 || fresh == 0 {
		t.Errorf("%d versions appended, %d built afresh; want both", appended, fresh)
	}
}

// A prepared version applies a delta as one not prepared does, its copy
// serves one Apply only, and a refused delta leaves nothing behind: the
// next Apply starts from the base again.
func TestPrepare(t *testing.T) {
	prev := version1(t, labMap(t))
	before, _ := json.Marshal(prev.Map)
	initech := &Tenant{Prefixes: []string{"10.30.0.0/16"}, Chain: []string{"dlp"}}
	bad := &Delta{Base: 1, Version: 2, Tenants: map[string]*Tenant{"initech": initech, "evil": {Prefixes: []string{"10.10.1.0/24"}, Chain: []string{"fw"}}}}
	good := &Delta{Base: 1, Version: 2, Tenants: map[string]*Tenant{"initech": initech}, Removed: []string{"globex"}}

	want, err := prev.Apply(good) // not prepared
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name    string
		prepare bool
		d       *Delta
	}{
		{"prepared, refused", true, bad},
		{"after a refusal", false, good},
		{"prepared", true, good},
		{"prepared twice, refused", true, bad},
		{"prepared again", true, good},
	} {
		if step.prepare {
			prev.Prepare()
			prev.Prepare() // a second call keeps the first copy
		}
		got, err := prev.Apply(step.d)
		if after, _ := json.Marshal(prev.Map); string(after) != string(before) {
			t.Fatalf("%s: Apply changed the base map:\n%s", step.name, after)
		}
		if step.d == bad {
			if !errors.Is(err, ErrInvalidMap) {
				t.Fatalf("%s: got %v, want an error wrapping ErrInvalidMap", step.name, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if diff := cmp.Diff(want.Map, got.Map); diff != "" {
			t.Errorf("%s: map (-not prepared +prepared):\n%s", step.name, diff)
		}
	}

	// A node prepares while a delta arrives: both may run at once (this
	// is for the race detector).
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				prev.Prepare()
				if _, err := prev.Apply(good); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if after, _ := json.Marshal(prev.Map); string(after) != string(before) {
		t.Fatalf("concurrent Apply changed the base map:\n%s", after)
	}
}

// TestDecodePublishedIsStrict: a document from Redis is read as strictly as
// a map file. An allow rule with a misspelt key would otherwise admit every
// port on every node that reads it.
func TestDecodePublishedIsStrict(t *testing.T) {
	doc, err := version1(t, labMap(t)).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodePublished(doc); err != nil {
		t.Fatalf("the document as encoded: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(doc map[string]any)
		raw  func(doc []byte) []byte
		want string
	}{
		{"unknown field in the document", func(d map[string]any) { d["drained_too"] = []string{"fw-1"} }, nil, `unknown field "drained_too"`},
		{"unknown field in an allow rule", func(d map[string]any) {
			acme := d["map"].(map[string]any)["tenants"].(map[string]any)["acme"].(map[string]any)
			acme["allow"] = []any{map[string]any{"proto": "tcp", "port": 443}}
		}, nil, `unknown field "port"`},
		{"data after the document", nil, func(doc []byte) []byte { return append(doc, []byte(` {"version": 9}`)...) }, "data after the JSON value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := doc
			if tc.edit != nil {
				var d map[string]any
				if err := json.Unmarshal(doc, &d); err != nil {
					t.Fatal(err)
				}
				tc.edit(d)
				b, _ = json.Marshal(d)
			}
			if tc.raw != nil {
				b = tc.raw(b)
			}
			_, err := DecodePublished(b)
			if !errors.Is(err, ErrInvalidMap) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("DecodePublished = %v; want an ErrInvalidMap saying %q", err, tc.want)
			}
		})
	}
}
