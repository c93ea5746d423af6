package rules

import (
	"fmt"
	"net/netip"
	"slices"
)

// Route is one route nfsteer owns: the default route of a hop's table, via
// the hop's address, on the interface the kernel finds for it, or on Dev
// (the overlay device) as an on-link next hop; or, in a zoned tenant's
// table, a route to Dst, one of its prefixes, out of Dev, its ingress
// interface, on the link or via its router there (Via, on-link: the
// tenants' routers may share addresses, each on its own link), or
// Unreachable if the interface is missing (the tenant's replies are
// dropped, never routed by the main table).
type Route struct {
	Table       int
	Dst         netip.Prefix // zero: the default route
	Via         netip.Addr
	Dev         string
	Unreachable bool
}

// RuleAction is what an ip rule does with a packet it matches.
type RuleAction uint8

const (
	// Lookup looks the packet up in the rule's Table.
	Lookup RuleAction = iota
	// Goto jumps to the rule at priority Target and goes on from there.
	Goto
	// Nop does nothing: it is where the jumps out of the tries land.
	Nop
)

// IPRule is one policy routing rule: packets whose mark&Mask == Mark (all
// packets when Mask is 0), and that came in on Iif if it is set ("lo":
// the node's own), or the others when Invert is set, are looked up in
// Table, jump to the rule at priority Target, or pass on, as Action says.
type IPRule struct {
	Family     int // 4 or 6
	Priority   int
	Invert     bool
	Iif        string
	Mark, Mask uint32
	Action     RuleAction
	Table      int // of a Lookup
	Target     int // of a Goto
}

func (r IPRule) String() string {
	s := fmt.Sprintf("pref %d", r.Priority)
	if r.Invert {
		s += " not"
	}
	if r.Iif != "" {
		s += " iif " + r.Iif
	}
	if r.Mask != 0 {
		s += fmt.Sprintf(" fwmark %#x/%#x", r.Mark, r.Mask)
	}
	switch r.Action {
	case Goto:
		return s + fmt.Sprintf(" goto %d", r.Target)
	case Nop:
		return s + " nop"
	}
	return s + fmt.Sprintf(" lookup %d", r.Table)
}

// The ip rules select an instance's table from a packet's mark in a number
// of steps that grows with the logarithm of the number of instances, not
// with the number: the kernel walks ip rules one by one, and with one rule
// per instance a gateway steering to 1,000 instances walked 1,000 rules per
// packet on average (about 8 µs a packet here).
//
// Each direction has a binary trie over the 12 bits of the packet's half,
// laid out in priority order: every node of the complete trie has a fixed
// priority (2^13-1 of them, in preorder), and only nodes on the way to a
// present instance have rules:
//
//   - a node with instances on both sides tests its bit and, when set,
//     jumps to its right child; otherwise the packet falls through into
//     the left child, which follows it in priority order;
//   - a run of nodes with instances on one side only is one rule at its
//     top: a packet whose bits differ there has no instance, and jumps to
//     the end;
//   - a leaf matches the whole half (and the direction bit) and looks the
//     packet up in the instance's table.
//
// A packet meets at most two rules per node with instances on both sides
// on its way, and one leaf. A node's rules depend only on the instances
// below it, so adding or removing an instance changes the rules on its
// own path and no others. Every rule a jump lands on is there, and a leaf
// matches its exact half, so a packet that takes a wrong turn, or meets a
// rule being replaced, finds no leaf or its own, never another instance's.
//
// Around the two tries, per family, from the first priority P:
//
//	P                   MarkTag set: goto the tenant block (a zoned
//	                    tenant's gateway only)
//	P+1                 the node's own packets (iif lo): goto the end
//	P+2                 direction bit set: goto the reply block
//	P+3                 original half 0 or 1 (not steered): goto the end
//	P+4 ...             the original direction's trie
//	P+4+trieSize        goto the end
//	reply block         reply half 0 or 1: goto the end
//	reply block+1 ...   the reply direction's trie
//	reply end           goto the end (with a tenant block)
//	tenant block ...    the zoned tenants' trie, by tag, to their tables
//	tenant block+trieSize  goto the end
//	end                 nop; the main table's rules follow
//
// On a gateway with zoned tenants, a packet that comes back from a chain
// towards a zoned tenant carries the tenant's tag in the original half,
// and MarkTag (see [TenantTag]); the tenant block sends it to its tenant's
// table, which routes the tenant's prefixes out of its ingress interface:
// the main table cannot, since zoned tenants share addresses. The gateway's
// own ICMP errors to a zoned tenant are marked so too (see [TenantTag]),
// which is why that rule comes before the one for the node's own packets.
//
// nfsteer steers forwarded packets only. The node's own packets skip the
// tries whatever their mark: above all the overlay's VXLAN packets, which
// carry the mark of the packet they encapsulate, and which a hop's table
// would route into the overlay device again.
//
// An unsteered packet meets 3 or 4 rules.
const (
	halfBits = 12
	trieSize = 1<<(halfBits+1) - 1 // nodes of the complete trie
	// RulePriorities is how many ip rule priorities from RulePriority
	// nfsteer takes: no other rule may sit among them.
	RulePriorities = 4 + trieSize + 1 + 1 + trieSize + 1 + trieSize + 1 + 1
	// TenantTables is the offset, from TableBase, of the zoned tenants'
	// tables (TableBase+TenantTables+tag), past every hop's; TablesUsed is
	// how many table numbers from TableBase nfsteer may take.
	TenantTables = 4096
	TablesUsed   = TenantTables + 4096
	// maxPriority is the last priority before the main table's rule.
	maxPriority = 32765
	// MaxRulePriority is the highest first priority that leaves room for
	// nfsteer's rules before the main table's.
	MaxRulePriority = maxPriority - RulePriorities + 1
)

// Routing returns the ip rules and routes that send marked packets to their
// instance: one table per instance with its default route, and the tries
// that select the table, for each family an instance has an address in.
func (s Spec) Routing() ([]IPRule, []Route) {
	s = s.WithDefaults()
	var rules []IPRule
	var routes []Route
	for _, fam := range []int{4, 6} {
		var leaves []leaf
		for _, h := range s.Hops {
			a := h.V4
			if fam == 6 {
				a = h.V6
			}
			if !a.IsValid() {
				continue
			}
			r := Route{Table: s.Table(h.ID), Via: a}
			if s.Overlay != nil {
				r.Dev = OverlayDevice
				if p, ok := s.Overlay.peer(h.Name); ok && fam == 6 {
					r.Via = OverlayLinkLocal(p.Underlay)
				}
			}
			routes = append(routes, r)
			leaves = append(leaves, leaf{HalfValue(h.ID), s.Table(h.ID)})
		}
		var tenants []leaf
		for _, tt := range s.zoned() {
			t := s.WithDefaults().TableBase + TenantTables + int(tt.Tag)
			for _, p := range tt.Prefixes {
				if p.Addr().Is4() == (fam == 4) {
					routes = append(routes, Route{Table: t, Dst: p, Via: tt.Via, Dev: tt.Ingress})
				}
			}
			if slices.ContainsFunc(tt.Prefixes, func(p netip.Prefix) bool { return p.Addr().Is4() == (fam == 4) }) {
				tenants = append(tenants, leaf{uint32(tt.Tag), t})
			}
		}
		if len(leaves) == 0 && len(tenants) == 0 {
			continue
		}
		slices.SortFunc(leaves, func(a, b leaf) int { return int(a.value) - int(b.value) })
		slices.SortFunc(tenants, func(a, b leaf) int { return int(a.value) - int(b.value) })
		rules = append(rules, s.tries(fam, leaves, tenants)...)
	}
	return rules, routes
}

type leaf struct {
	value uint32 // the half's value
	table int
}

// tries returns one family's rules: both directions' tries, the zoned
// tenants' (tenants, by tag; none off a gateway), and the rules around
// them, as the comment above lays them out.
func (s Spec) tries(fam int, leaves, tenants []leaf) []IPRule {
	p := s.RulePriority + 2
	origTrie := p + 2
	origEnd := origTrie + trieSize
	reply := origEnd + 1
	replyEnd := reply + 1 + trieSize
	tenantBlock := replyEnd + 1
	end := tenantBlock + trieSize + 1
	notSteered := func(shift int) uint32 { return (OrigMask &^ MarkPass) << shift }
	var rules []IPRule
	if len(tenants) > 0 {
		rules = append(rules, IPRule{Family: fam, Priority: s.RulePriority, Mark: MarkTag, Mask: MarkTag, Action: Goto, Target: tenantBlock})
	}
	rules = append(rules, IPRule{Family: fam, Priority: s.RulePriority + 1, Iif: "lo", Action: Goto, Target: end})
	rules = append(rules,
		IPRule{Family: fam, Priority: p, Mark: MarkReply, Mask: MarkReply, Action: Goto, Target: reply},
		IPRule{Family: fam, Priority: p + 1, Mark: 0, Mask: notSteered(0), Action: Goto, Target: end})
	t := trie{fam: fam, base: origTrie, end: end, dirMark: 0, dirMask: OrigMask | MarkReply}
	rules = t.node(rules, 0, 0, leaves)
	rules = append(rules,
		IPRule{Family: fam, Priority: origEnd, Action: Goto, Target: end},
		IPRule{Family: fam, Priority: reply, Mark: 0, Mask: notSteered(ReplyShift), Action: Goto, Target: end})
	t = trie{fam: fam, base: reply + 1, end: end, shift: ReplyShift, dirMark: MarkReply, dirMask: ReplyMask | MarkReply}
	rules = t.node(rules, 0, 0, leaves)
	if len(tenants) > 0 {
		rules = append(rules, IPRule{Family: fam, Priority: replyEnd, Action: Goto, Target: end})
		t = trie{fam: fam, base: tenantBlock, end: end, dirMark: MarkTag, dirMask: OrigMask | MarkTag}
		rules = t.node(rules, 0, 0, tenants)
		rules = append(rules, IPRule{Family: fam, Priority: tenantBlock + trieSize, Action: Goto, Target: end})
	}
	return append(rules, IPRule{Family: fam, Priority: end, Action: Nop})
}

// trie lays out one direction's trie from priority base.
type trie struct {
	fam              int
	base             int
	end              int    // the priority a packet with no instance jumps to
	shift            int    // of the direction's half in the mark
	dirMark, dirMask uint32 // what a leaf matches besides the half
}

// node appends the rules of the subtree at depth d and preorder index idx,
// which holds leaves (all of them, sorted, none if it is empty).
func (t trie) node(rules []IPRule, d, idx int, leaves []leaf) []IPRule {
	if len(leaves) == 0 {
		return rules
	}
	// The run of nodes with leaves on one side only: one rule at its top
	// checks the bits it decides.
	var want, mask uint32
	top := idx
	for ; d < halfBits; d++ {
		bit := t.bit(d)
		first, last := leaves[0].value<<t.shift&bit, leaves[len(leaves)-1].value<<t.shift&bit
		if first != last {
			break
		}
		mask |= bit
		want |= first
		if first == 0 {
			idx++
		} else {
			idx = right(d, idx)
		}
	}
	if mask != 0 {
		rules = append(rules, IPRule{Family: t.fam, Priority: t.base + top, Mark: want, Mask: mask, Invert: true, Action: Goto, Target: t.end})
	}
	if d == halfBits {
		l := leaves[0]
		return append(rules, IPRule{Family: t.fam, Priority: t.base + idx, Mark: l.value<<t.shift | t.dirMark, Mask: t.dirMask, Action: Lookup, Table: l.table})
	}
	bit := t.bit(d)
	split, _ := slices.BinarySearchFunc(leaves, true, func(l leaf, _ bool) int {
		if l.value<<t.shift&bit != 0 {
			return 0
		}
		return -1
	})
	rules = append(rules, IPRule{Family: t.fam, Priority: t.base + idx, Mark: bit, Mask: bit, Action: Goto, Target: t.base + right(d, idx)})
	rules = t.node(rules, d+1, idx+1, leaves[:split])
	return t.node(rules, d+1, right(d, idx), leaves[split:])
}

// bit is the mark bit the nodes at depth d test.
func (t trie) bit(d int) uint32 { return 1 << (halfBits - 1 - d) << t.shift }

// right is the preorder index of the right child of the node at depth d
// and index idx: past the node and its left subtree.
func right(d, idx int) int { return idx + 1<<(halfBits-d) }
