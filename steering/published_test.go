package steering

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func labMap(t testing.TB) *Map {
	t.Helper()
	b, err := os.ReadFile("testdata/lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAssignIDsKeepsNumbers(t *testing.T) {
	m := labMap(t)
	first, err := AssignIDs(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint16{"dlp-1": 1, "dlp-2": 2, "fw-1": 3, "fw-2": 4}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Fatalf("first IDs (-want +got):\n%s", diff)
	}
	// Remove dlp-1, add aaa-1 (sorts first) and fw-3: survivors keep their
	// numbers, newcomers take the lowest free ones.
	delete(m.Services["dlp"].Instances, "dlp-1")
	m.Services["dlp"].Instances["aaa-1"] = Addresses{"10.200.0.23"}
	m.Services["fw"].Instances["fw-3"] = Addresses{"10.200.0.13", "fd00:200::13"}
	second, err := AssignIDs(m, first)
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]uint16{"aaa-1": 1, "dlp-2": 2, "fw-1": 3, "fw-2": 4, "fw-3": 5}
	if diff := cmp.Diff(want, second); diff != "" {
		t.Fatalf("second IDs (-want +got):\n%s", diff)
	}
}

// A dead primary's slots go to their secondary, which is the instance that
// holds the mirrored sessions; nothing else moves.
func TestDownHandsSlotsToSecondary(t *testing.T) {
	m := labMap(t)
	m.Services["fw"].Instances["fw-3"] = Addresses{"10.200.0.13", "fd00:200::13"}
	p, err := Local(m)
	if err != nil {
		t.Fatal(err)
	}
	before, err := CompilePublished(p)
	if err != nil {
		t.Fatal(err)
	}
	p.Down = []string{"fw-1"}
	after, err := CompilePublished(p)
	if err != nil {
		t.Fatal(err)
	}
	fw := 1 // services sort: dlp, fw
	moved := 0
	for slot := uint32(0); slot < before.Slots(); slot++ {
		p1, s1 := before.RolesFor(fw, slot)
		p2, _ := after.RolesFor(fw, slot)
		switch {
		case p1.Name == "fw-1":
			moved++
			if p2.Name != s1.Name {
				t.Errorf("slot %d: primary fw-1 went down, new primary %s, want its secondary %s", slot, p2.Name, s1.Name)
			}
		case p2.Name != p1.Name:
			t.Errorf("slot %d: primary moved from %s to %s though fw-1 did not hold it", slot, p1.Name, p2.Name)
		}
	}
	if moved == 0 {
		t.Fatal("fw-1 held no slot")
	}
	// Every instance down: roles stay rather than vanish.
	p.Down = []string{"fw-1", "fw-2", "fw-3"}
	all, err := CompilePublished(p)
	if err != nil {
		t.Fatal(err)
	}
	if pr, _ := all.RolesFor(fw, 0); pr == nil {
		t.Fatal("service with every instance down has no primary")
	}
}

func TestPublishedValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(p *Published)
		field string
	}{
		{"missing ID", func(p *Published) { delete(p.IDs, "fw-1") }, "ids.fw-1"},
		{"ID twice", func(p *Published) { p.IDs["fw-1"] = p.IDs["fw-2"] }, "ids."},
		{"ID range", func(p *Published) { p.IDs["fw-1"] = MaxID + 1 }, "ids.fw-1"},
		{"stray ID", func(p *Published) { p.IDs["ghost"] = 99 }, "ids.ghost"},
		{"down unknown", func(p *Published) { p.Down = []string{"ghost"} }, "down[0]"},
		{"drained unknown", func(p *Published) { p.Drained = []string{"ghost"} }, "drained[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Local(labMap(t))
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(p)
			err = p.Validate()
			if !errors.Is(err, ErrInvalidMap) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate() = %v, want ErrInvalidMap naming %s", err, tc.field)
			}
		})
	}
}

func TestAllow(t *testing.T) {
	m := labMap(t)
	m.Services["fw"].Function = FunctionFirewall
	m.Tenants["acme"].Allow = []Allow{
		{Proto: "tcp", Dst: "10.99.0.0/24", Ports: []string{"5201", "8000-8100"}},
		{Proto: "udp", Dst: "10.99.0.0/24"},
	}
	tab, err := Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	acme := tab.TenantOf(flow("10.10.1.2", 1, "10.99.0.2", 1, 6).Src)
	for _, tc := range []struct {
		f    Flow
		want int
	}{
		{flow("10.10.1.2", 40000, "10.99.0.2", 5201, 6), 0},
		{flow("10.10.1.2", 40000, "10.99.0.2", 8050, 6), 0},
		{flow("10.10.1.2", 40000, "10.99.0.2", 8101, 6), -1},
		{flow("10.10.1.2", 40000, "10.99.1.2", 5201, 6), -1},
		{flow("10.10.1.2", 40000, "10.99.0.2", 53, 17), 1},
		{flow("10.10.1.2", 0, "10.99.0.2", 0, 1), -1},
	} {
		if got := tab.Permit(acme, &tc.f); got != tc.want {
			t.Errorf("Permit(%v) = %d, want %d", tc.f, got, tc.want)
		}
	}
	for _, tc := range []struct {
		allow Allow
		field string
	}{
		{Allow{Proto: "tcpp"}, "allow[0].proto"},
		{Allow{Dst: "10.99.0.1/24"}, "allow[0].dst"},
		{Allow{Dst: "nope"}, "allow[0].dst"},
		{Allow{Proto: "tcp", Ports: []string{"0"}}, "allow[0].ports[0]"},
		{Allow{Proto: "tcp", Ports: []string{"90-80"}}, "allow[0].ports[0]"},
		{Allow{Proto: "icmp", Ports: []string{"80"}}, "allow[0].ports"},
	} {
		t.Run(fmt.Sprint(tc.allow), func(t *testing.T) {
			m.Tenants["acme"].Allow = []Allow{tc.allow}
			err := m.Validate()
			if err == nil || !strings.Contains(err.Error(), "tenants.acme."+tc.field) {
				t.Fatalf("Validate() = %v, want an error naming tenants.acme.%s", err, tc.field)
			}
		})
	}
}
