package steering

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func flow(src string, sport uint16, dst string, dport uint16, proto uint8) Flow {
	return Flow{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SrcPort: sport, DstPort: dport, Proto: proto}
}

func reverse(f Flow) Flow {
	return Flow{Src: f.Dst, Dst: f.Src, SrcPort: f.DstPort, DstPort: f.SrcPort, Proto: f.Proto}
}

func TestAffinityCodeSymmetric(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 10000; i++ {
		var a, b [16]byte
		for j := range a {
			a[j], b[j] = byte(r.Uint32()), byte(r.Uint32())
		}
		f := Flow{Src: netip.AddrFrom16(a), Dst: netip.AddrFrom16(b), SrcPort: uint16(r.Uint32()), DstPort: uint16(r.Uint32()), Proto: uint8(r.Uint32())}
		if i%2 == 0 {
			f.Src, f.Dst = netip.AddrFrom4([4]byte(a[:4])), netip.AddrFrom4([4]byte(b[:4]))
		}
		rf := reverse(f)
		if got, want := AffinityCode(&rf), AffinityCode(&f); got != want {
			t.Fatalf("AffinityCode(%v) = %#x, reverse gives %#x", f, want, got)
		}
	}
}

// TestAffinityCodeStable pins the definition (the values were computed by an
// independent implementation of the documented algorithm): a node built from another
// version of this code must compute the same codes, or two nodes of one
// deployment would steer a flow differently.
func TestAffinityCodeStable(t *testing.T) {
	tests := []struct {
		f    Flow
		want uint32
	}{
		{flow("10.10.1.2", 40000, "10.99.0.2", 5201, 6), 0x59e47368},
		{flow("fd00:10::2", 40000, "fd00:99::2", 5201, 17), 0xacca323d},
		{flow("10.10.1.2", 7, "10.99.0.2", 7, 1), 0xd0513f24},
	}
	for _, tt := range tests {
		if got := AffinityCode(&tt.f); got != tt.want {
			t.Errorf("AffinityCode(%v) = %#x, want %#x", tt.f, got, tt.want)
		}
	}
}

func TestAffinityCodeSpreads(t *testing.T) {
	const slots, flows = 256, 256 * 400
	var counts [slots]int
	for i := 0; i < flows; i++ {
		f := flow("10.10.1.2", uint16(1024+i%60000), "10.99.0.2", uint16(80+i/60000), 6)
		counts[AffinityCode(&f)%slots]++
	}
	for s, c := range counts {
		if c < 300 || c > 500 {
			t.Errorf("slot %d got %d of %d flows, want about %d", s, c, flows, flows/slots)
		}
	}
}

func names(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("inst-%02d", i)
	}
	return s
}

func TestRolesDistinctAndDeterministic(t *testing.T) {
	a := assignRoles("fw", names(5), nil, 1024)
	b := assignRoles("fw", names(5), nil, 1024)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Fatalf("two computations differ (-first +second):\n%s", diff)
	}
	per := make([]int, 5)
	for s, r := range a {
		if r.Primary == r.Secondary || r.Primary == NoInstance || r.Secondary == NoInstance {
			t.Fatalf("slot %d: roles %+v", s, r)
		}
		per[r.Primary]++
	}
	for i, n := range per {
		if n < 1024/5*7/10 || n > 1024/5*13/10 {
			t.Errorf("instance %d is primary for %d of 1024 slots, want about %d", i, n, 1024/5)
		}
	}
	if got := assignRoles("fw", names(1), nil, 4); got[0] != (Roles{0, NoInstance}) {
		t.Errorf("single instance roles = %+v, want primary 0 and no secondary", got[0])
	}
}

// TestRolesMinimalDisruption shows rendezvous hashing's two properties:
// adding an instance moves only the slots the new instance takes, and
// removing one moves only the slots it held, each to its former secondary.
func TestRolesMinimalDisruption(t *testing.T) {
	const slots = 4096
	before := names(6)
	old := assignRoles("dlp", before, nil, slots)

	t.Run("add", func(t *testing.T) {
		after := append(append([]string{}, before...), "inst-99")
		now := assignRoles("dlp", after, nil, slots)
		moved := 0
		for s := range old {
			oldName, newName := before[old[s].Primary], after[now[s].Primary]
			if oldName != newName {
				moved++
				if newName != "inst-99" {
					t.Fatalf("slot %d moved from %s to %s, not to the new instance", s, oldName, newName)
				}
			}
		}
		t.Logf("adding a 7th instance moved %d of %d slots (fair share %d)", moved, slots, slots/7)
		if moved < slots/7*7/10 || moved > slots/7*13/10 {
			t.Errorf("moved %d slots, want about %d", moved, slots/7)
		}
	})
	t.Run("remove", func(t *testing.T) {
		gone := 2
		after := append(append([]string{}, before[:gone]...), before[gone+1:]...)
		now := assignRoles("dlp", after, nil, slots)
		for s := range old {
			oldName, newName := before[old[s].Primary], after[now[s].Primary]
			switch {
			case old[s].Primary == uint16(gone):
				if want := before[old[s].Secondary]; newName != want {
					t.Fatalf("slot %d of removed %s went to %s, want its secondary %s", s, oldName, newName, want)
				}
			case oldName != newName:
				t.Fatalf("slot %d moved from %s to %s though %s stayed", s, oldName, newName, oldName)
			}
		}
	})
}

func labTable(t testing.TB) *Table {
	t.Helper()
	tab, err := Compile(mustLoad(t, "testdata/lab.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func TestDecide(t *testing.T) {
	tab := labTable(t)
	gw := tab.NodeFor("gw-1")
	fw1 := tab.NodeFor("fw-1")
	dlp1 := tab.NodeFor("dlp-1")
	tcp := flow("10.20.1.2", 40000, "10.99.0.2", 5201, 6)
	slot := AffinityCode(&tcp) % 256
	fwP, _ := tab.RolesFor(tab.instances[fw1.Instance].Service, slot)
	dlpP, _ := tab.RolesFor(tab.instances[dlp1.Instance].Service, slot)
	fwNode, dlpNode := tab.NodeFor(fwP.Name), tab.NodeFor(dlpP.Name)

	type result struct {
		Kind     Kind
		Tenant   string
		Reverse  bool
		Instance string
	}
	tests := []struct {
		name  string
		node  Node
		f     Flow
		reply bool
		want  result
	}{
		{"gateway sends globex to its fw primary", gw, tcp, false, result{Steer, "globex", false, fwP.Name}},
		{"fw sends globex on to dlp", fwNode, tcp, false, result{Steer, "globex", false, dlpP.Name}},
		{"dlp is the end of the chain", dlpNode, tcp, false, result{EndOfChain, "globex", false, ""}},
		{"gateway sends the reply to dlp first", gw, reverse(tcp), true, result{Steer, "globex", true, dlpP.Name}},
		{"dlp sends the reply back to fw", dlpNode, reverse(tcp), true, result{Steer, "globex", true, fwP.Name}},
		{"fw ends the reply's chain", fwNode, reverse(tcp), true, result{EndOfChain, "globex", true, ""}},
		{"reply first seen as original still goes backwards", gw, reverse(tcp), false, result{Steer, "globex", true, dlpP.Name}},
		{"untenanted traffic is not steered", gw, flow("10.30.1.2", 1, "10.99.0.2", 2, 6), false, result{NoTenant, "", false, ""}},
		{"dlp not in acme's chain", dlpNode, flow("10.10.1.2", 1, "10.99.0.2", 2, 17), false, result{NotInChain, "acme", false, ""}},
		{"IPv6 acme flow", gw, flow("fd00:10::2", 1, "fd00:99::2", 2, 6), false, result{Steer, "acme", false, "?"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tab.Decide(tt.node, &tt.f, tt.reply, nil)
			got := result{Kind: d.Kind, Reverse: d.Reverse}
			if d.Tenant >= 0 {
				got.Tenant = tab.tenants[d.Tenant].Name
			}
			if d.Instance != nil && d.Kind == Steer {
				got.Instance = d.Instance.Name
				if tt.want.Instance == "?" {
					tt.want.Instance = got.Instance
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Decide (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecideHonoursPins(t *testing.T) {
	tab := labTable(t)
	f := flow("10.20.1.2", 40000, "10.99.0.2", 5201, 6)
	d := tab.Decide(tab.NodeFor("gw"), &f, false, nil)
	pins := tab.PinsFor(d.Tenant, d.Slot)
	if pins[0] != d.Instance.ID {
		t.Fatalf("PinsFor[0] = %d, Decide chose %d", pins[0], d.Instance.ID)
	}
	_, other := tab.RolesFor(tab.instances[d.Instance.ID-1].Service, d.Slot)
	pins[0] = other.ID
	if d := tab.Decide(tab.NodeFor("gw"), &f, false, &pins); d.Instance != other {
		t.Errorf("with pin %s, Decide chose %s", other.Name, d.Instance.Name)
	}
}

func TestDecideAllocatesNothing(t *testing.T) {
	tab := labTable(t)
	f := flow("fd00:10::2", 40000, "fd00:99::2", 5201, 6)
	n := tab.NodeFor("gw")
	if a := testing.AllocsPerRun(1000, func() { tab.Decide(n, &f, false, nil) }); a != 0 {
		t.Errorf("Decide allocates %v times per call", a)
	}
}

func BenchmarkDecide(b *testing.B) {
	tab := labTable(b)
	f := flow("10.20.1.2", 40000, "10.99.0.2", 5201, 6)
	n := tab.NodeFor("gw")
	b.ReportAllocs()
	for b.Loop() {
		f.SrcPort++
		tab.Decide(n, &f, false, nil)
	}
}
