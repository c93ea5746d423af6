// Package rules owns the kernel state that makes nfsteer's fast path: the
// iptables chains that send a flow's first packet per direction to NFQUEUE
// and carry the verdict's mark in conntrack, and the policy routing (ip
// rules and one routing table per next-hop instance) that sends the rest of
// the flow to its instance without leaving the kernel.
//
// Everything nfsteer installs is recognisable and nothing else is touched:
// the chains are called NFSTEER-*, the jumps to them carry the comment
// "nfsteer", and ip rules and routes carry route protocol 110 ("nfsteer")
// in tables TableBase+ID. [Kernel.Apply] is idempotent; [Kernel.Remove]
// takes away exactly that, leaving iptables-save, ip6tables-save, ip rule
// and ip route as they were before the first Apply.
//
// # Marks
//
// The packet mark carries a hop per conntrack direction: bits 0-11 for the
// original direction, bits 12-23 for the reply direction. In each half, 0
// means undecided (the packet goes to the queue), 1 means decided and
// routed normally, and ID+1 means "send to instance ID". Bits 24-31 are left
// to other software. Because the kernel here cannot set the connmark from a
// verdict, the verdict sets the packet mark and a POSTROUTING rule saves the
// packet's half into the connmark; PREROUTING restores only the half of the
// packet's own direction, so each direction follows its own hop.
//
// The Linux implementation runs the iptables binaries (through
// github.com/coreos/go-iptables) and speaks rtnetlink (through
// github.com/vishvananda/netlink); it needs CAP_NET_ADMIN in the node's
// network namespace.
package rules
