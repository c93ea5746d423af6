package steering

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDrainUndrain(t *testing.T) {
	p, err := Local(labMap(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Version = 7
	d, err := p.Drain("fw-2")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.Drained, []string{"fw-2"}) || d.Version != 0 || len(p.Drained) != 0 {
		t.Fatalf("Drain: drained %v version %d (original drained %v); want [fw-2], 0, []", d.Drained, d.Version, p.Drained)
	}
	if d2, _ := d.Drain("fw-2"); !slices.Equal(d2.Drained, []string{"fw-2"}) {
		t.Errorf("draining twice: %v", d2.Drained)
	}
	if err := d.Validate(); err != nil {
		t.Errorf("drained map does not validate: %v", err)
	}
	u, err := d.Undrain("fw-2")
	if err != nil || len(u.Drained) != 0 {
		t.Errorf("Undrain: %v %v", u.Drained, err)
	}
	if _, err := p.Drain("fw-9"); !errors.Is(err, ErrUnknownName) {
		t.Errorf("Drain(fw-9) = %v, want ErrUnknownName", err)
	}
}

// A version that only drains an instance reuses the previous version's
// decoded map and every service's roles but that instance's, and decides
// exactly as a table compiled from scratch.
func TestCompileNextReuses(t *testing.T) {
	p, err := Local(labMap(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Version = 1
	doc1, _ := json.Marshal(p)
	p1, err := DecodePublishedAfter(doc1, nil)
	if err != nil {
		t.Fatal(err)
	}
	t1, err := CompilePublished(p1)
	if err != nil {
		t.Fatal(err)
	}
	d, err := p1.Drain("fw-1")
	if err != nil {
		t.Fatal(err)
	}
	d.Version = 2
	doc2, _ := json.Marshal(d)
	p2, err := DecodePublishedAfter(doc2, p1)
	if err != nil {
		t.Fatal(err)
	}
	if p2.Map != p1.Map {
		t.Error("the unchanged map was decoded again")
	}
	t2, err := CompileNext(t1, p2)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := CompilePublished(&Published{Version: 2, Map: labMap(t), IDs: p2.IDs, Drained: p2.Drained})
	if err != nil {
		t.Fatal(err)
	}
	for i, svc := range t2.Services() {
		if diff := cmp.Diff(fresh.Services()[i].Roles, svc.Roles); diff != "" {
			t.Errorf("service %s roles (-fresh +incremental):\n%s", svc.Name, diff)
		}
		reused := &svc.Roles[0] == &t1.Services()[i].Roles[0]
		if want := svc.Name != "fw"; reused != want {
			t.Errorf("service %s: roles reused %t, want %t", svc.Name, reused, want)
		}
	}
	if diff := tenantDiff(fresh, t2, labAddrs); diff != "" {
		t.Errorf("tenants (-fresh +incremental):\n%s", diff)
	}
	// A changed map is decoded and validated afresh.
	bad := bytes.Replace(doc2, []byte(`"fw-1"`), []byte(`"fw 1"`), 1)
	if _, err := DecodePublishedAfter(bad, p1); !errors.Is(err, ErrInvalidMap) {
		t.Errorf("changed, invalid map after a valid one: %v, want ErrInvalidMap", err)
	}
}

// Every edit leaves the map it started from unchanged, and a refused edit
// says why with the sentinel a caller can branch on.
func TestMapEdits(t *testing.T) {
	type edit func(*Map) (*Map, error)
	tests := []struct {
		name string
		edit edit
		want []Change // Diff(before, after)
		err  error
	}{
		{"add tenant", func(m *Map) (*Map, error) {
			return m.AddTenant("initech", Tenant{Prefixes: []string{"10.30.0.0/24"}, Chain: []string{"dlp"}})
		}, []Change{{Op: "add", Kind: "tenant", Name: "initech"}}, nil},
		{"add tenant twice", func(m *Map) (*Map, error) { return m.AddTenant("acme", Tenant{}) }, nil, ErrExists},
		{"remove tenant", func(m *Map) (*Map, error) { return m.RemoveTenant("globex") },
			[]Change{{Op: "remove", Kind: "tenant", Name: "globex"}}, nil},
		{"remove unknown tenant", func(m *Map) (*Map, error) { return m.RemoveTenant("nope") }, nil, ErrUnknownName},
		{"add service", func(m *Map) (*Map, error) {
			return m.AddService("ids", Service{Instances: map[string]Addresses{"ids-1": {"10.200.0.31"}}})
		}, []Change{{Op: "add", Kind: "service", Name: "ids"}, {Op: "add", Kind: "instance", Name: "ids-1", To: "ids 10.200.0.31"}}, nil},
		{"add service twice", func(m *Map) (*Map, error) { return m.AddService("fw", Service{}) }, nil, ErrExists},
		{"add service reusing an instance name", func(m *Map) (*Map, error) {
			return m.AddService("ids", Service{Instances: map[string]Addresses{"fw-1": {"10.200.0.31"}}})
		}, nil, ErrExists},
		{"remove service in a chain", func(m *Map) (*Map, error) { return m.RemoveService("dlp") }, nil, ErrInUse},
		{"remove unknown service", func(m *Map) (*Map, error) { return m.RemoveService("ids") }, nil, ErrUnknownName},
		{"add instance", func(m *Map) (*Map, error) {
			return m.AddInstance("fw", "fw-3", Addresses{"10.200.0.13", "fd00:200::13"})
		},
			[]Change{{Op: "add", Kind: "instance", Name: "fw-3", To: "fw 10.200.0.13,fd00:200::13"}}, nil},
		{"add instance to unknown service", func(m *Map) (*Map, error) { return m.AddInstance("ids", "ids-1", nil) }, nil, ErrUnknownName},
		{"add existing instance", func(m *Map) (*Map, error) { return m.AddInstance("dlp", "fw-1", nil) }, nil, ErrExists},
		{"remove instance", func(m *Map) (*Map, error) { return m.RemoveInstance("dlp-2") },
			[]Change{{Op: "remove", Kind: "instance", Name: "dlp-2", From: "dlp 10.200.0.22"}}, nil},
		{"remove unknown instance", func(m *Map) (*Map, error) { return m.RemoveInstance("dlp-9") }, nil, ErrUnknownName},
		{"remove the last instance of a used service", func(m *Map) (*Map, error) {
			m, err := m.RemoveInstance("dlp-2")
			if err != nil {
				return nil, err
			}
			return m.RemoveInstance("dlp-1")
		}, nil, ErrInUse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := labMap(t)
			before := Diff(nil, m)
			got, err := tt.edit(m)
			if diff := cmp.Diff(before, Diff(nil, m)); diff != "" {
				t.Fatalf("the edit changed its receiver (-before +after):\n%s", diff)
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("edited map does not validate: %v", err)
			}
			if diff := cmp.Diff(tt.want, Diff(m, got)); diff != "" {
				t.Errorf("Diff (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDiffFields(t *testing.T) {
	a := labMap(t)
	b := labMap(t)
	b.Slots = 512
	b.Tenants["globex"].Chain = []string{"fw"}
	b.Services["fw"].Function = FunctionFirewall
	b.Services["dlp"].Instances["dlp-1"] = Addresses{"10.200.0.99"}
	acme := *b.Tenants["acme"]
	acme.Tag, acme.SNAT, acme.Via = 7, "10.61.0.101", "192.168.255.2"
	b.Tenants["acme"] = &acme
	want := []string{
		"~ slots: 256 -> 512",
		"~ service fw function: forward -> firewall",
		"~ instance dlp-1 service/addresses: dlp 10.200.0.21 -> dlp 10.200.0.99",
		"~ tenant acme tag: none -> 7",
		"~ tenant acme snat: none -> 10.61.0.101",
		"~ tenant acme via: none -> 192.168.255.2",
		"~ tenant globex chain: [fw dlp] -> [fw]",
	}
	var got []string
	for _, c := range Diff(a, b) {
		got = append(got, c.String())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Diff (-want +got):\n%s", diff)
	}
	if d := Diff(a, labMap(t)); len(d) != 0 {
		t.Errorf("Diff of equal maps: %v", d)
	}
}

func TestWithMapKeepsOnlyExistingLists(t *testing.T) {
	p, err := Local(labMap(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Down, p.Drained = []string{"fw-1"}, []string{"dlp-2"}
	m, err := p.Map.RemoveInstance("dlp-2")
	if err != nil {
		t.Fatal(err)
	}
	q := p.WithMap(m)
	if !slices.Equal(q.Down, []string{"fw-1"}) || len(q.Drained) != 0 || q.Version != 0 {
		t.Errorf("WithMap: down %v drained %v version %d; want [fw-1] [] 0", q.Down, q.Drained, q.Version)
	}
	if err := q.Validate(); err == nil {
		t.Errorf("IDs still name dlp-2, Validate should refuse until the publisher reassigns them")
	}
}

// TestSameTenants: a version that only takes instances out or puts them
// back (a drain, a failover) shares its tenants whole with the one before;
// a version with another map never claims to, even if its tenants read the
// same.
func TestSameTenants(t *testing.T) {
	p1 := &Published{Version: 1, Map: labMap(t)}
	var err error
	if p1.IDs, err = AssignIDs(p1.Map, nil); err != nil {
		t.Fatal(err)
	}
	t1, err := CompilePublished(p1)
	if err != nil {
		t.Fatal(err)
	}
	drained, err := p1.Drain("fw-1")
	if err != nil {
		t.Fatal(err)
	}
	down := p1.Clone()
	down.Down = []string{"dlp-2"}
	other := p1.WithMap(labMap(t))
	for _, tc := range []struct {
		name string
		next *Published
		want bool
	}{
		{"a drain", drained, true},
		{"a failover", down, true},
		{"another map with the same tenants", other, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.next.Version = 2
			t2, err := CompileNext(t1, tc.next)
			if err != nil {
				t.Fatal(err)
			}
			if got := t2.SameTenants(t1); got != tc.want {
				t.Errorf("SameTenants = %t, want %t", got, tc.want)
			}
			if tc.want && &t2.Tenants()[0] != &t1.Tenants()[0] {
				t.Error("SameTenants, but the tenants were compiled again")
			}
		})
	}
	if t1.SameTenants(nil) {
		t.Error("SameTenants(nil) = true")
	}
}

// CheckTenant and CheckService report what Validate would of the tenant or
// service in any map, and nothing that depends on the rest of it: each
// problem they report, Validate reports too of a map holding the edit.
func TestCheckAlone(t *testing.T) {
	tests := []struct {
		name  string
		check func() error
		edit  func(*Map) (*Map, error)
		want  []FieldError
	}{
		{
			name: "a well-formed tenant on a chain this map lacks",
			check: func() error {
				return CheckTenant("initech", Tenant{Prefixes: []string{"10.30.0.0/24"}, Chain: []string{"ids"}})
			},
		},
		{
			name: "a tenant's own mistakes",
			check: func() error {
				return CheckTenant("initech", Tenant{Prefixes: []string{"10.30.0.1/24", "fd00::/129"}, Chain: []string{"fw", "fw"}, Tag: 5000, Ingress: []string{"eth1/2"}, Via: "10.30.0.1"})
			},
			edit: func(m *Map) (*Map, error) {
				return m.AddTenant("initech", Tenant{Prefixes: []string{"10.30.0.1/24", "fd00::/129"}, Chain: []string{"fw", "fw"}, Tag: 5000, Ingress: []string{"eth1/2"}, Via: "10.30.0.1"})
			},
			want: []FieldError{
				{"tenants.initech.tag", "5000: want 1 to 4095"},
				{"tenants.initech.prefixes[0]", "10.30.0.1/24 has host bits set (did you mean 10.30.0.0/24?)"},
				{"tenants.initech.prefixes[1]", `"fd00::/129" is not a CIDR prefix`},
				{"tenants.initech.via", "only a tenant with a snat address has a router of its own: the others' replies follow the gateway's main routing table"},
				{"tenants.initech.ingress[0]", `"eth1/2" is not an interface name (1 to 15 characters, no spaces, '/' or ':')`},
				{"tenants.initech.chain[1]", `service "fw" appears twice in the chain`},
			},
		},
		{
			name: "a well-formed service",
			check: func() error {
				return CheckService("ids", Service{Instances: map[string]Addresses{"ids-1": {"10.200.0.31"}}})
			},
		},
		{
			name: "a service's own mistakes",
			check: func() error {
				return CheckService("ids", Service{Function: "inspect", Instances: map[string]Addresses{"ids-1": {"10.200.0.300"}, "ids-2": {"10.200.0.32", "10.200.0.33"}}})
			},
			edit: func(m *Map) (*Map, error) {
				return m.AddService("ids", Service{Function: "inspect", Instances: map[string]Addresses{"ids-1": {"10.200.0.300"}, "ids-2": {"10.200.0.32", "10.200.0.33"}}})
			},
			want: []FieldError{
				{"services.ids.function", `unknown function "inspect" (known: forward, firewall)`},
				{"services.ids.instances.ids-1[0]", `"10.200.0.300" is not an IP address`},
				{"services.ids.instances.ids-2[1]", "second IPv4 address; each instance has at most one per family"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []FieldError
			if err := tt.check(); err != nil {
				var ve *ValidationError
				if !errors.As(err, &ve) {
					t.Fatalf("check: %v; want a *ValidationError", err)
				}
				got = ve.Problems
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if tt.edit == nil {
				return
			}
			m, err := tt.edit(labMap(t))
			if err != nil {
				t.Fatal(err)
			}
			var ve *ValidationError
			if !errors.As(m.Validate(), &ve) {
				t.Fatalf("Validate of the map with the edit: want a *ValidationError")
			}
			for _, p := range got {
				if !slices.Contains(ve.Problems, p) {
					t.Errorf("Validate does not report %v", p)
				}
			}
		})
	}
}
