// Package rules owns the kernel state that makes nfsteer's fast path: the
// iptables chains that send a flow's first packet per direction to NFQUEUE
// and carry the verdict's mark in conntrack, and the policy routing (ip
// rules and one routing table per next-hop instance) that sends the rest of
// the flow to its instance without leaving the kernel.
//
// Everything nfsteer installs is recognisable and nothing else is touched:
// the chains are called NFSTEER-*, the jumps to them are known by their
// targets, the overlay's VXLAN device is called nfsteer0 (see [Overlay]),
// the steer chain and the tag rules are nftables table inet nfsteer, and
// ip rules and routes carry route protocol 110 ("nfsteer"): the routes in
// tables TableBase+ID, the rules at the RulePriorities
// priorities from RulePriority, where the tries that pick a table from the
// mark lie (see routing.go). [Kernel.Apply] is idempotent; [Kernel.Remove]
// takes away exactly that, leaving iptables-save, ip6tables-save, ip rule,
// ip route, ip link, bridge fdb, ip neigh and nft's ruleset as they were
// before the first Apply.
//
// # Marks
//
// The packet mark carries a hop per conntrack direction: bits 0-11 for the
// original direction, bits 12-23 for the reply direction. In each half, 0
// means undecided (the packet goes to the queue), 1 means decided and
// routed normally, and ID+1 means "send to instance ID". The agent decides
// both halves at a flow's first packet, so the first packet the other way
// stays in the kernel: one crossing per node per flow.
//
// Bit 24 (MarkReply) is set on reply-direction packets as they enter: the
// ip rules match it with their half, so each direction follows its own hop
// although both halves are in every packet. Bit 25 (MarkSave) is set by
// the agent on the packets it decides. Because the kernel here cannot set
// the connmark from a verdict, a POSTROUTING rule saves both halves into
// the connmark from packets with MarkSave, once per decision; PREROUTING
// restores them into every packet (an undecided flow's are zero, so its
// packets go to the queue). Neither bit is saved. Bit 26 (MarkTag) is an
// instance host's on an overlay, and a gateway's with zoned tenants (see
// [TenantTag]). Bit 27 (MarkSteered) is set by the nftables chain steer
// on the packets it does not restore itself: those of a flow undecided in
// their direction, or whose mark carries other bits. It is cleared by
// NFSTEER-PRE's restore, and one iptables rule sends those packets there
// (see [Steer]). Bits 28-31 are left to other software.
//
// # The fast path
//
// A packet of a decided flow meets, in PREROUTING, the steer chain's
// native restore (a gateway's also its interface set, and its spoofing
// checks if it binds tenants) and one failed mark test in iptables'
// mangle PREROUTING; the ip rules' trie picks its table; in POSTROUTING
// it fails the first test of each of the two jumps to NFSTEER-POST (three
// with tags), which take only the packets the agent decided, and new
// connections' packets with no original half or a tag.
//
// A half's values: 0 undecided, 1 pass, ID+1 for an instance (IDs 1 to
// steering.MaxID), and on an instance host on an overlay, ID+1 for a
// gateway (its ID, or its return hop's; see [Hop]).
//
// # The overlay
//
// With an overlay in the map, the routes to the hops go through nfsteer's
// VXLAN device (see [Overlay]), and every packet carries its tenant's tag
// (see [TenantTag]), by rules in nftables table inet nfsteer. Tenants with
// a SNAT address may share addresses: a gateway keeps their flows in
// conntrack zones by where they enter, and routes their replies by their
// tags to tables of their own.
//
// The Linux implementation runs the iptables binaries (through
// github.com/coreos/go-iptables) and speaks rtnetlink (through
// github.com/vishvananda/netlink) and nf_tables (through
// github.com/google/nftables); it needs CAP_NET_ADMIN in the node's
// network namespace.
package rules
