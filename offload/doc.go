// Package offload owns nfsteer's flow offload on a gateway: two tc
// programs (bpf/offload.c, attached with tcx to every Ethernet interface
// of the gateway's namespace) that take the established packets of the
// TCP and UDP flows nfsteer decided, over IPv4 and IPv6, off the
// gateway's netfilter and routing path, as an nftables flowtable would
// (this kernel may have none).
//
// A gateway forwards each packet of a steered flow twice, once into the
// chain and once more when the chain hands it back, and each time the
// packet passes conntrack, nfsteer's mark restore and the ip rules. The
// egress program learns, from a packet the kernel has just forwarded,
// where the flow's packets go: the interface, and the Ethernet header the
// kernel built for the next hop. The ingress program then sends the flow's
// later packets there at once, with the TTL and checksum (or the IPv6 hop
// limit) the kernel would have written. It learns only what nfsteer
// decided: a packet that entered by a steered interface with its hop in
// the mark, or one the chain hands back of a flow learned on its way in.
// A UDP flow direction is learned at its eighth packet on the kernel's
// path, so that the many flows of a datagram or two (DNS) never take the
// table's places from those that would use them.
//
// What it leaves to the kernel, always: a connection's opening and ending
// (at a SYN, FIN or RST it forgets the connection, both ways: a new
// connection on an old one's 5-tuple may take another chain), a UDP
// flow's first packets, every other protocol, IPv4 options, IPv6 extension headers or IPv4-mapped
// addresses (which the kernel drops), fragments, a packet larger than the
// out interface's MTU as it is when the packet passes (the kernel
// fragments it, or answers it with ICMP), and one packet of each
// offloaded flow every refresh interval (default 1 s), so that conntrack
// keeps the connection alive and a changed hop (a neighbour's new
// address) is learned again. [Path.Invalidate] sends every
// offloaded flow back to the kernel's path until it is learned again: the
// agent calls it at every map switch, after moving marks off a dead
// instance, so that a flow moved to its secondary never follows a stale
// hop. [Path.Occupancy] counts what the flow table holds, live and
// idle, for a check that it is large enough.
//
// An offloaded packet skips the gateway's netfilter hooks, so conntrack
// does not see it, and neither do the gateway's own rules (a FORWARD
// filter, counters) past a connection's first packets: what a flowtable
// does to them too. Conntrack therefore misses most of a connection's
// sequence numbers, and unless it is liberal about them it takes the
// connection's later packets on the kernel's path (a refresh, the FIN)
// for out of window: they lose their connection, and its mark, and the
// connection never ends in conntrack. As the kernel's flowtable does, the
// offload makes each connection it is about to carry liberal, that
// connection only: before it learns a connection's hop, the egress
// program asks [Path.Run] on a ring buffer, which marks the connection so
// through ctnetlink (rules.Liberal), in batches, and answers in a map; the
// connection's packets take the kernel's path until then (a few
// milliseconds). The namespace's nf_conntrack_tcp_be_liberal is left as it
// is. A connection conntrack does not hold by the addresses on the wire
// (NATed, or in another zone) is never offloaded. No service runs on a
// gateway, so no packet crosses fewer services for the offload; an
// instance host never offloads.
//
// Loading and attaching need CAP_BPF and CAP_NET_ADMIN in the gateway's
// network namespace, and Linux 6.6 or later (tcx links). The programs are
// detached when the [Path] is closed or its process ends: a killed agent
// leaves every flow to the kernel's path, which is the offload's fallback
// at every step.
package offload
