package rules

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/nfsteer/nfsteer/nfq"
)

// Defaults for a Spec's numbers. They are what makes nfsteer's state
// recognisable in `ip rule`, `ip route show table all` and
// /proc/net/netfilter/nfnetlink_queue.
const (
	DefaultQueueBase    = 4200
	DefaultTableBase    = 8000
	DefaultRulePriority = 8000
	// RouteProtocol tags nfsteer's ip rules and routes ("proto 110").
	RouteProtocol = 110
	// UnsteeredComment tags the rule whose counters count new flows
	// forwarded without a steering decision (see [Spec.IPTablesRules]).
	UnsteeredComment = "nfsteer-unsteered"
	chainSpoof       = "NFSTEER-SPOOF"
	chainPre         = "NFSTEER-PRE"
	chainPost        = "NFSTEER-POST"
	chainOwner       = "NFSTEER-OWNS-TABLE"
	table            = "mangle"
)

// Spec is what a node wants installed. The zero values of the numbers mean
// their defaults.
type Spec struct {
	// Outer lists the interfaces whose traffic is steered (a gateway's).
	// Empty means every interface (an instance host).
	Outer []string
	// QueueBase is the first queue number. Queues per direction are
	// numbered from QueueBase (original) and QueueBase+Queues (reply);
	// 0 queues means one per CPU (at most 64), each read by its own
	// worker, packets spread by the CPU that handles them.
	QueueBase uint16
	Queues    int
	// FailClosed drops new flows while no agent reads the queues; otherwise
	// they pass unsteered (--queue-bypass).
	FailClosed bool
	// OverloadBypass lets new flows pass unsteered when a queue is full
	// (the queue's fail-open flag): availability over inspection. Without
	// it, the default, they are dropped (TCP retries them). It is the
	// agent's setting, not a rule: the agent sets the flag when it binds
	// the queues.
	OverloadBypass bool
	TableBase      int
	RulePriority   int
	// Hops are the instances this node may send flows to.
	Hops []Hop
	// Ingress binds tenants to the gateway interfaces their traffic
	// enters by (a gateway's). Those interfaces are steered like Outer.
	Ingress []Binding
	// Overlay, if set, carries the routes to the hops over nfsteer's VXLAN
	// device (see [Overlay]).
	Overlay *Overlay
	// Tags are the tenants' tags on the overlay (see [TenantTag]); they
	// apply only with Overlay.
	Tags []TenantTag
}

// Binding says where a tenant's traffic enters: on Ifaces, and only from
// Prefixes. A packet entering on Ifaces from outside Prefixes is dropped,
// and so is one from Prefixes entering on any other steered interface:
// spoofed, it is never classified as the tenant. Both are counted.
type Binding struct {
	Tenant   string
	Ifaces   []string
	Prefixes []netip.Prefix
}

// ownChains are nfsteer's chains, in the order packets meet them.
// NFSTEER-SPOOF held the anti-spoofing rules of earlier versions (now in
// nftables, see [Spec.Steer]): listed, it is removed where found.
var ownChains = []string{chainSpoof, chainPre, chainPost}

// steered returns the interfaces whose traffic is steered: Outer and the
// ingress interfaces, or nil for every interface (an instance host).
func (s Spec) steered() []string {
	if len(s.Outer) == 0 && len(s.Ingress) == 0 {
		return nil
	}
	out := slices.Clone(s.Outer)
	for _, b := range s.Ingress {
		for _, i := range b.Ifaces {
			if !slices.Contains(out, i) {
				out = append(out, i)
			}
		}
	}
	return out
}

// zoned returns the zoned tenants' tags (see [TenantTag]) on a gateway,
// none elsewhere.
func (s Spec) zoned() []TenantTag {
	if s.Overlay == nil || len(s.steered()) == 0 {
		return nil
	}
	var out []TenantTag
	for _, tt := range s.Tags {
		if tt.Zoned() {
			out = append(out, tt)
		}
	}
	return out
}

// Hop is one next-hop instance: its ID (the mark value minus one) and its
// addresses on the service network.
type Hop struct {
	ID     uint16
	Name   string
	V4, V6 netip.Addr
	// Return says the hop is a gateway's return hop: the way a zoned
	// tenant's flow goes back to the gateway on its way to the tenant. An
	// instance host tags what it sends there with VXLAN-GBP's A flag
	// ([TagApplied]), by which the gateway tells it from the way out.
	Return bool
}

// WithDefaults returns s with zero numbers replaced by their defaults.
func (s Spec) WithDefaults() Spec {
	if s.QueueBase == 0 {
		s.QueueBase = DefaultQueueBase
	}
	if s.Queues == 0 {
		s.Queues = min(runtime.NumCPU(), 64)
	}
	if s.TableBase == 0 {
		s.TableBase = DefaultTableBase
	}
	if s.RulePriority == 0 {
		s.RulePriority = DefaultRulePriority
	}
	return s
}

// Validate checks the numbers fit.
func (s Spec) Validate() error {
	s = s.WithDefaults()
	if s.Queues < 1 || s.Queues > 64 {
		return fmt.Errorf("queues %d: want 1 to 64 per direction", s.Queues)
	}
	if int(s.QueueBase)+2*s.Queues > 0xffff {
		return fmt.Errorf("queue base %d: queues run past 65535", s.QueueBase)
	}
	if last := s.RulePriority + RulePriorities - 1; s.RulePriority < 1 || last > maxPriority {
		return fmt.Errorf("rule priority %d: nfsteer's ip rules take %d priorities from it, which must end by %d (the main table's rule is at %d)",
			s.RulePriority, RulePriorities, maxPriority, maxPriority+1)
	}
	for _, h := range s.Hops {
		if h.ID == 0 || h.ID > MaxID {
			return fmt.Errorf("hop %s: ID %d out of range 1-%d", h.Name, h.ID, MaxID)
		}
	}
	for _, tt := range s.zoned() {
		if s.Overlay == nil {
			return fmt.Errorf("tag %d: a zoned tenant needs an overlay", tt.Tag)
		}
		if tt.Ingress == "" || len(tt.Ingress) > 15 || strings.ContainsAny(tt.Ingress, " /") {
			return fmt.Errorf("tag %d: ingress %q is not an interface name", tt.Tag, tt.Ingress)
		}
		if tt.Via.IsValid() && slices.ContainsFunc(tt.Prefixes, func(p netip.Prefix) bool { return p.Addr().Is4() != tt.Via.Is4() }) {
			return fmt.Errorf("tag %d: router %s is not of the family of every prefix", tt.Tag, tt.Via)
		}
	}
	for _, o := range s.steered() {
		if o == "" || len(o) > 15 || strings.ContainsAny(o, " /") {
			return fmt.Errorf("interface %q is not an interface name", o)
		}
	}
	if s.Overlay != nil {
		if err := s.Overlay.validate(); err != nil {
			return err
		}
		for _, h := range s.Hops {
			if _, ok := s.Overlay.peer(h.Name); !ok {
				return fmt.Errorf("instance %s: not a peer on the overlay", h.Name)
			}
		}
	}
	return nil
}

// QueueSet returns the queues the agent must read, with their directions.
func (s Spec) QueueSet() []nfq.Queue {
	s = s.WithDefaults()
	var q []nfq.Queue
	for i := 0; i < 2*s.Queues; i++ {
		q = append(q, nfq.Queue{Num: s.QueueBase + uint16(i), Reply: i >= s.Queues})
	}
	return q
}

// Table returns the routing table number of instance id.
func (s Spec) Table(id uint16) int { return s.WithDefaults().TableBase + int(id) }

// Rule is one iptables rule: the chain it goes in and its match and target.
type Rule struct {
	Chain string
	Args  []string
}

func (r Rule) String() string { return "-A " + r.Chain + " " + strings.Join(r.Args, " ") }

// IPTablesRules returns, in order, the rules of nfsteer's own chains and
// the jumps from the built-in chains, in table mangle, for family 4 or 6.
// Only the anti-spoofing rules differ between the families.
func (s Spec) IPTablesRules(family int) (jumps, own []Rule) {
	s = s.WithDefaults()
	hex := func(v uint32) string { return "0x" + strconv.FormatUint(uint64(v), 16) }
	// The jumps carry no comment: they are nfsteer's by their targets
	// (NFSTEER-*), and a comment is one more match on every packet.
	// One rule, however many interfaces are steered: the steer chain
	// (see Spec.Steer) restores a decided flow's halves itself and flags
	// (MarkSteered) only the packets that need NFSTEER-PRE. A decided
	// packet meets one native mark test here.
	jumps = append(jumps, Rule{"PREROUTING", []string{"-m", "mark", "--mark", hex(MarkSteered) + "/" + hex(MarkSteered), "-j", chainPre}})

	queue := func(first uint16) []string {
		a := []string{"-j", "NFQUEUE"}
		if s.Queues == 1 {
			a = append(a, "--queue-num", strconv.Itoa(int(first)))
		} else {
			// By the CPU that handles the packet: each queue, and its
			// reader, keeps to one CPU's packets.
			a = append(a, "--queue-balance", fmt.Sprintf("%d:%d", first, int(first)+s.Queues-1), "--queue-cpu-fanout")
		}
		if !s.FailClosed {
			a = append(a, "--queue-bypass")
		}
		return a
	}
	ct := func(dir string) []string { return []string{"-m", "conntrack", "--ctdir", dir} }
	cat := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	m, om := hex(HopMask), hex(OrigMask)
	d, save := hex(MarkReply), hex(MarkSave)
	unicast := []string{"-m", "addrtype", "--dst-type", "UNICAST"}
	// The restore also clears MarkSteered, which has served.
	restore := []string{"-j", "CONNMARK", "--restore-mark", "--nfmask", hex(HopMask | MarkSteered), "--ctmask", m}
	tagged := s.Overlay != nil && (len(s.steered()) == 0 || len(s.zoned()) > 0)
	// POSTROUTING jumps to NFSTEER-POST only with what its rules act on:
	// a packet the agent decided (MarkSave), and a new connection's packet
	// with no original half, or with tags a tagged one (the unsteered
	// counts'). A packet of a decided flow fails each jump's first mark
	// test, and one a gateway forwards a second time (handed back by the
	// chain, on an interface it does not steer, so with no halves) its
	// conntrack state test: no jump, no counter, no return on the path
	// of every packet. The jumps are disjoint (by MarkSave, and a tag is
	// never 0), so no packet takes the chain twice. iptables-nft compiles
	// mark and conntrack state matches to native expressions.
	mark := func(v, mask uint32) []string { return []string{"-m", "mark", "--mark", hex(v) + "/" + hex(mask)} }
	isNew := []string{"-m", "conntrack", "--ctstate", "NEW"}
	toPost := []string{"-j", chainPost}
	jumps = append(jumps,
		Rule{"POSTROUTING", slices.Concat(mark(MarkSave, MarkSave), toPost)},
		Rule{"POSTROUTING", slices.Concat(mark(0, OrigMask|MarkSave), isNew, toPost)})
	if tagged {
		jumps = append(jumps, Rule{"POSTROUTING", slices.Concat(mark(MarkTag, MarkTag|MarkSave), isNew, toPost)})
		// An instance host on an overlay, or a gateway with zoned
		// tenants: a packet of an undecided flow may carry its tenant's
		// tag where the halves go (see TenantTag), which the restore
		// would clear.
		restore = append([]string{"-m", "mark", "!", "--mark", hex(MarkTag) + "/" + hex(MarkTag)}, restore...)
	}
	own = append(own, []Rule{
		// Both halves back from conntrack, with no test first: for an
		// undecided flow this clears the halves, which are nfsteer's and
		// zero already. Most packets of decided flows never get here:
		// the steer chain restored theirs.
		{chainPre, restore},
		// Reply-direction packets carry the direction bit for the ip
		// rules, which see only the mark.
		{chainPre, cat(ct("REPLY"), []string{"-j", "MARK", "--or-mark", d})},
		// Undecided in the packet's own direction: to the agent. Only
		// forwarded unicast is steered: traffic to the node itself
		// (management, Redis) and broadcast never wait for the agent.
		// The mark test comes first: a decided flow's packets fail it
		// and skip the rest.
		{chainPre, cat([]string{"-m", "mark", "--mark", "0x0/" + hex(OrigMask|MarkReply)}, unicast, queue(s.QueueBase))},
		{chainPre, cat([]string{"-m", "mark", "--mark", d + "/" + hex(ReplyMask|MarkReply)}, unicast, queue(s.QueueBase+uint16(s.Queues)))},
	}...)
	if tagged {
		// A tagged packet, by its direction: the tag's gateway number
		// sits in the reply half.
		own = append(own,
			Rule{chainPre, cat([]string{"-m", "mark", "--mark", hex(MarkTag) + "/" + hex(MarkTag|MarkReply)}, unicast, queue(s.QueueBase))},
			Rule{chainPre, cat([]string{"-m", "mark", "--mark", hex(MarkTag|MarkReply) + "/" + hex(MarkTag|MarkReply)}, unicast, queue(s.QueueBase+uint16(s.Queues)))})
	}
	own = append(own, []Rule{
		// The agent decided this packet (both directions, usually):
		// save its halves.
		{chainPost, []string{"-m", "mark", "--mark", save + "/" + save, "-j", "CONNMARK", "--save-mark", "--nfmask", m, "--ctmask", m}},
		// Counts, and does nothing else: a forwarded new flow whose
		// connection leaves with no decision saved went around the chain
		// (the queue's fail-open or bypass, or a first packet the agent
		// could not parse). The connmark, not the packet's mark: a
		// gateway forwards a steered flow a second time when the chain
		// hands it back, on an interface it does not steer, where nothing
		// restores the packet's mark. The packet's mark is tested first,
		// natively (iptables-nft compiles a mark match to nft
		// expressions, not to an xt call): a restored packet of a
		// steered flow fails it at once, and the connmark is asked only
		// of the rest.
		{chainPost, []string{"-m", "mark", "--mark", "0x0/" + om, "-m", "connmark", "--mark", "0x0/" + om, "-m", "conntrack", "--ctstate", "NEW",
			"-m", "addrtype", "!", "--src-type", "LOCAL", "-m", "comment", "--comment", UnsteeredComment}},
	}...)
	if tagged {
		// A tagged packet that no agent decided still carries its tag
		// where the original half goes.
		own = append(own, Rule{chainPost, []string{"-m", "mark", "--mark", hex(MarkTag) + "/" + hex(MarkTag), "-m", "connmark", "--mark", "0x0/" + om, "-m", "conntrack", "--ctstate", "NEW",
			"-m", "addrtype", "!", "--src-type", "LOCAL", "-m", "comment", "--comment", UnsteeredComment}})
	}
	return jumps, own
}

// Steer is what the nftables chain steer does, before iptables' mangle
// chains, on every node. A packet of a flow decided in its own direction
// gets its halves from the connmark there and goes no further in
// nfsteer's rules: the fast path, native expressions only. The rest it
// flags (MarkSteered), so that one iptables rule sends them on to
// NFSTEER-PRE and its queues. On a gateway the chain takes only what
// enters by its steered interfaces, and first drops what enters where its
// source may not. Interfaces and sources are looked up in sets: the cost
// per packet does not grow with the interfaces, the tenants or their
// prefixes.
type Steer struct {
	// Outer are the steered interfaces bound to no tenant; a packet
	// entering one from a bound tenant's prefix (Bound) is dropped.
	Outer []string
	// Bound are the tenants bound to their ingress interfaces; a packet
	// entering one from outside the tenant's prefixes is dropped.
	Bound []Binding
}

// Steer returns what a gateway's steer chain does, or false on an
// instance host, which steers every interface and binds no tenant.
func (s Spec) Steer() (Steer, bool) {
	steered := s.steered()
	if len(steered) == 0 {
		return Steer{}, false
	}
	bound := map[string]bool{}
	for _, b := range s.Ingress {
		for _, i := range b.Ifaces {
			bound[i] = true
		}
	}
	st := Steer{Bound: s.Ingress}
	for _, o := range steered {
		if !bound[o] {
			st.Outer = append(st.Outer, o)
		}
	}
	return st, true
}
