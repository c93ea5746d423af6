package agent

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/nfq"
	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/steering"
)

// newTestAgent is an agent for node on labmap.Firewall, without Redis, kernel or
// conntrack: enough for the packet path, which touches none of them.
func newTestAgent(t *testing.T, node string) *Agent {
	t.Helper()
	path := filepath.Join(t.TempDir(), "map.yaml")
	if err := os.WriteFile(path, []byte(labmap.Firewall), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Node: node, MapFile: path, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if node == "gw" {
		cfg.Rules.Outer = []string{"outer0"} // a gateway's steered interface
	}
	a, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func tcp(src, dst string, flags uint8) *nfq.Packet {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	return &nfq.Packet{Flow: steering.Flow{Src: s.Addr(), Dst: d.Addr(), SrcPort: s.Port(), DstPort: d.Port(), Proto: nfq.ProtoTCP}, TCPFlags: flags}
}

const (
	syn    = 0x02
	synAck = 0x12
	ack    = 0x10
)

// firewallTable compiles labmap.Firewall, to predict the agents' choices.
func firewallTable(t testing.TB) *steering.Table {
	t.Helper()
	m, err := steering.Parse([]byte(labmap.Firewall))
	if err != nil {
		t.Fatal(err)
	}
	tab, err := steering.Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// TestHandle drives the packet path of a gateway and of a firewall
// instance with packets, and checks each verdict and mark against what the
// compiled map decides for the flow, and the counters.
func TestHandle(t *testing.T) {
	tab := firewallTable(t)
	flow := tcp("10.10.1.2:40000", "10.99.0.2:5201", syn)
	code := steering.AffinityCode(&flow.Flow)
	slot := tab.SlotOf(code)
	fw, _ := tab.RolesFor(tab.ServiceByName("fw"), slot)
	dlp, _ := tab.RolesFor(tab.ServiceByName("dlp"), slot)
	otherFW := "fw-1"
	if fw.Name == otherFW {
		otherFW = "fw-2"
	}
	// both is the verdict that steers a flow both ways from a node: to
	// fwd in the original direction, back the other way.
	both := func(fwd, back uint32) nfq.Result {
		return nfq.Result{Verdict: nfq.Accept, Mark: rules.SetHalf(rules.SetHalf(0, false, fwd), true, back) | rules.MarkSave}
	}
	id := func(in *steering.Instance) uint32 { return rules.HalfValue(in.ID) }
	type step struct {
		p     *nfq.Packet
		perr  error
		reply bool
		want  nfq.Result
	}
	for _, tc := range []struct {
		name  string
		node  string
		steps []step
		// counters after the steps
		admitted, denied, unknown, parseErrors, fragments, reopened, undecidable uint64
	}{
		{
			// and the reply, when it comes, to the slot's primary dlp.
			name:  "gateway steers to the slot's primary firewall",
			node:  "gw",
			steps: []step{{p: flow, want: both(id(fw), id(dlp))}},
		},
		{
			name:  "gateway steers a mid-stream packet by the map too (no Redis to ask)",
			node:  "gw",
			steps: []step{{p: tcp("10.10.1.2:40000", "10.99.0.2:5201", ack), want: both(id(fw), id(dlp))}},
		},
		{
			name: "firewall admits an allowed opening and steers it on to dlp, and its reply back",
			node: fw.Name,
			// The reply leaves the chain at the firewall, its first
			// service: routed normally. The kernel does not ask about it
			// again; if it did, the answer would be the same.
			steps: []step{
				{p: flow, want: both(id(dlp), rules.MarkPass)},
				{p: tcp("10.99.0.2:5201", "10.10.1.2:40000", synAck), reply: true, want: both(id(dlp), rules.MarkPass)},
			},
			admitted: 1,
		},
		{
			// A new connection on the 5-tuple of a closed one reaches the
			// queue with a SYN (conntrack gave it a new entry, without the
			// closed one's mark): the firewall checks its rules again
			// rather than riding the closed connection's verdict.
			name: "firewall decides a reopened connection afresh",
			node: fw.Name,
			steps: []step{
				{p: flow, want: both(id(dlp), rules.MarkPass)},
				{p: flow, want: both(id(dlp), rules.MarkPass)},
				{p: tcp("10.10.1.2:40000", "10.99.0.2:5201", ack), want: both(id(dlp), rules.MarkPass)},
			},
			admitted: 2, reopened: 1,
		},
		{
			name:   "firewall drops an opening no rule allows",
			node:   fw.Name,
			steps:  []step{{p: tcp("10.10.1.2:40000", "10.99.0.2:22", syn), want: nfq.Result{Verdict: nfq.Drop}}},
			denied: 1,
		},
		{
			name:    "firewall drops a mid-stream packet of a flow it does not know (no mirror to ask)",
			node:    fw.Name,
			steps:   []step{{p: tcp("10.10.1.2:40000", "10.99.0.2:5201", ack), want: nfq.Result{Verdict: nfq.Drop}}},
			unknown: 1,
		},
		{
			name:        "an unparseable packet passes undecided, mark untouched",
			node:        otherFW,
			steps:       []step{{p: &nfq.Packet{}, perr: nfq.ErrTruncated, want: nfq.Result{Verdict: nfq.Accept, Mark: 0x5}}},
			parseErrors: 1,
		},
		{
			// Its headers end past the copy range: letting it through
			// would send it around acme's chain.
			name:        "a tenant's unparseable packet is dropped",
			node:        "gw",
			steps:       []step{{p: &nfq.Packet{Flow: steering.Flow{Src: netip.MustParseAddr("fd00:10::2"), Dst: netip.MustParseAddr("fd00:99::2")}}, perr: nfq.ErrExtHeaders, want: nfq.Result{Verdict: nfq.Drop}}},
			parseErrors: 1, undecidable: 1,
		},
		{
			name:      "a fragment to a tenant is dropped",
			node:      otherFW,
			steps:     []step{{p: &nfq.Packet{Flow: steering.Flow{Src: netip.MustParseAddr("10.99.0.2"), Dst: netip.MustParseAddr("10.10.1.2")}}, perr: nfq.ErrFragment, reply: true, want: nfq.Result{Verdict: nfq.Drop}}},
			fragments: 1, undecidable: 1,
		},
		{
			name:      "a fragment passes undecided",
			node:      "gw",
			steps:     []step{{p: &nfq.Packet{}, perr: nfq.ErrFragment, want: nfq.Result{Verdict: nfq.Accept, Mark: 0x5}}},
			fragments: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newTestAgent(t, tc.node)
			for i, s := range tc.steps {
				mark := uint32(0)
				if s.perr != nil {
					mark = 0x5
				}
				if diff := cmp.Diff(s.want, a.Handle(s.p, s.perr, mark, s.reply)); diff != "" {
					t.Errorf("step %d: Handle (-want +got):\n%s", i, diff)
				}
			}
			c := &a.Counters
			got := [7]uint64{c.Admitted.Load(), c.Denied.Load(), c.Unknown.Load(), c.ParseError.Load(), c.Fragments.Load(), c.Reopened.Load(), c.Undecidable.Load()}
			want := [7]uint64{tc.admitted, tc.denied, tc.unknown, tc.parseErrors, tc.fragments, tc.reopened, tc.undecidable}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("counters admitted, denied, unknown, parse errors, fragments, reopened, undecidable (-want +got):\n%s", diff)
			}
		})
	}
}

// The packet path allocates nothing for a flow it knows, nor for a new
// connection on a known flow's 5-tuple.
func TestHandleAllocatesNothing(t *testing.T) {
	a := newTestAgent(t, "gw")
	open := tcp("10.10.1.2:40000", "10.99.0.2:5201", syn)
	a.Handle(open, nil, 0, false)
	for _, p := range []*nfq.Packet{tcp("10.10.1.2:40000", "10.99.0.2:5201", ack), open} {
		if n := testing.AllocsPerRun(1000, func() { a.Handle(p, nil, 0, false) }); n != 0 {
			t.Errorf("Handle allocates %v times per packet (TCP flags %#x)", n, p.TCPFlags)
		}
	}
}

// TestReopenedConnectionMeetsNewRules: after the firewall's rules change
// to refuse a port, a new connection on the 5-tuple of one admitted before
// is refused, and the closed connection's session no longer admits a
// mid-stream packet on that tuple.
func TestReopenedConnectionMeetsNewRules(t *testing.T) {
	open := tcp("10.10.1.2:40000", "10.99.0.2:5201", syn)
	tab := firewallTable(t)
	fw, _ := tab.RolesFor(tab.ServiceByName("fw"), tab.SlotOf(steering.AffinityCode(&open.Flow)))
	path := writeMap(t, labmap.Firewall)
	a, err := New(Config{Node: fw.Name, MapFile: path, Logger: discardLogger()}, &fakeKernel{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Handle(open, nil, 0, false); got.Verdict != nfq.Accept {
		t.Fatalf("opening while allowed: %+v", got)
	}
	refusing := strings.Replace(labmap.Firewall, `ports: ["5201", "8000-8100"]`, `ports: ["8000-8100"]`, 1)
	if err := os.WriteFile(path, []byte(refusing), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(false); err != nil {
		t.Fatal(err)
	}
	drop := nfq.Result{Verdict: nfq.Drop}
	if diff := cmp.Diff(drop, a.Handle(open, nil, 0, false)); diff != "" {
		t.Errorf("reopening after the rules refused the port (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(drop, a.Handle(tcp("10.10.1.2:40000", "10.99.0.2:5201", ack), nil, 0, false)); diff != "" {
		t.Errorf("mid-stream packet on the refused tuple (-want +got):\n%s", diff)
	}
	c := &a.Counters
	if got, want := [4]uint64{c.Admitted.Load(), c.Denied.Load(), c.Reopened.Load(), c.Unknown.Load()}, [4]uint64{1, 1, 1, 1}; got != want {
		t.Errorf("admitted, denied, reopened, unknown = %v, want %v", got, want)
	}
}
