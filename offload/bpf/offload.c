// SPDX-License-Identifier: GPL-2.0
//
// nfsteer's flow offload on a gateway: two tc programs that take the
// established packets of the TCP and UDP flows nfsteer decided, over IPv4
// and IPv6, off the gateway's netfilter and routing path. offload_egress learns,
// from a packet the kernel has just forwarded, where a flow's packets go
// (out interface and the Ethernet header the kernel built);
// offload_ingress sends the flow's later packets there at once. Which flows it may learn, and when what it learned is
// stale, the Go side (offload_linux.go) says through the maps below: it
// is the only writer of ifaces and config, and of the answers in conns.
//
// It offloads only connections that conntrack holds by the addresses and
// ports on the wire (no NAT, zone 0) and is liberal about
// (IP_CT_TCP_FLAG_BE_LIBERAL, both ways): conntrack sees few of an
// offloaded connection's sequence numbers and would otherwise take its
// later packets on the kernel's path for out of window. The egress program
// asks Go for a connection on the ring buffer asks; Go marks it liberal
// through ctnetlink and says so in conns. Its packets take the kernel's
// path until then.
//
// Regenerate offload_bpfel.{go,o} with `go generate ./offload` (clang).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// A flow in one direction, as one of its two passes through the gateway
// sees it: steered 1 when it enters by a steered interface (the gateway
// decides its hop), 0 by any other (the chain hands the flow back, and the
// kernel routes it on by its main table). Addresses are IPv6, an IPv4
// one mapped (::ffff:a.b.c.d), so that one key and one path serve both
// families.
struct flow_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u8 proto; // IPPROTO_TCP or IPPROTO_UDP
	__u8 steered;
	__u16 pad;
};

// Where the kernel sent the flow's packets, the last time it did.
struct flow_hop {
	__u32 in_ifindex;
	__u32 out_ifindex;
	__u8 src[ETH_ALEN];
	__u8 dst[ETH_ALEN];
	__u32 gen;   // settings.gen when learned: an older one is stale
	__u64 slow;  // when a packet last took the kernel's path (ns, monotonic)
};

struct settings {
	__u32 gen;        // bumped by Go on every change of marks, rules or map
	__u32 hop_mask;   // the mark's halves: a forwarded packet with none set was not steered
	__u64 refresh_ns; // an offloaded flow sends one packet the kernel's way this often
	__u32 own_mark;  // a mark bit no packet leaves netfilter with: set on the offload's own
};

// A connection, by the tuple of its direction with the lower address (and
// port): the key of conns.
struct conn_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
};

// What the offload knows of a connection in conntrack.
enum { CONN_ASKED, CONN_LIBERAL, CONN_UNTRACKED };

struct conn_state {
	__u64 asked_ns; // when the egress program asked for it
	__u32 state;    // CONN_*: Go writes the last two, for that ask only
	__u32 pad;
};

// An ask on the ring buffer: make key's connection liberal. asked_ns
// names the ask, so that Go's answer cannot land on a later connection
// of the same tuple.
struct ask {
	struct conn_key key;
	__u32 pad;
	__u64 asked_ns;
};

// Counters, per CPU: what Go's Stats sums.
enum { STAT_OFFLOADED, STAT_LEARNED, STAT_REFRESHED, STAT_ASKED, STAT_MAX };

// How long the offload waits for an answer before it asks again (an ask
// lost to a full ring, or a failed update).
#define ASK_AGAIN_NS 1000000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); // Go sets the size before loading
	__type(key, struct flow_key);
	__type(value, struct flow_hop);
} flows SEC(".maps");

// The interfaces the programs are attached to, by index: 1 for a steered
// one, 0 for the others. The ingress program has a variant for each kind.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} asks SEC(".maps");

// How many packets of each UDP flow direction not learned yet took the
// kernel's path (see seen_enough). Go sizes it before loading, as conns.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, __u32);
} udp_seen SEC(".maps");

// The connections asked for, and Go's answers. Go sizes it before
// loading, to a quarter of flows: a connection has four flow directions.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct conn_key);
	__type(value, struct conn_state);
} conns SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &stat);
	if (n)
		(*n)++;
}

// v4mapped reports whether a is an IPv4-mapped IPv6 address
// (::ffff:a.b.c.d), the form the keys give IPv4 addresses.
static __always_inline int v4mapped(const struct in6_addr *a)
{
	return a->in6_u.u6_addr32[0] == 0 && a->in6_u.u6_addr32[1] == 0 && a->in6_u.u6_addr32[2] == bpf_htonl(0xffff);
}

// l3 is where parse found a packet's network header. Which kind it is,
// v6 says: a program loaded without CAP_PERFMON may not test a packet
// pointer against null.
struct l3 {
	void *ip;   // struct iphdr, or struct ipv6hdr if v6
	__u32 v6;
	__u32 hdrs; // the IP and TCP (UDP) headers' length
};

// parse fills key from a TCP or UDP packet the offload may carry: IPv4
// without options or fragments, or IPv6 with TCP or UDP right after its
// header (no extension header), with a TTL (hop limit) left to forward
// with. It returns the TCP flags byte (0 for UDP), or -1, and in *seg the
// largest IP packet it is (or, sent as segments, will be).
static __always_inline int parse(struct __sk_buff *skb, struct flow_key *key, struct l3 *l3, struct ethhdr **ethp, __u32 *seg)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return -1;
	void *l4;
	__u32 iplen;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return -1;
		if (ip->ihl != 5 || (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP) ||
		    (ip->frag_off & bpf_htons(0x3fff)) || ip->ttl <= 1)
			return -1;
		key->proto = ip->protocol;
		key->saddr[2] = key->daddr[2] = bpf_htonl(0xffff);
		key->saddr[3] = ip->saddr;
		key->daddr[3] = ip->daddr;
		l3->ip = ip;
		l3->v6 = 0;
		iplen = sizeof(*ip);
		l4 = ip + 1;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return -1;
		if ((ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP) || ip6->hop_limit <= 1)
			return -1;
		key->proto = ip6->nexthdr;
		// An IPv4-mapped address would share an IPv4 flow's key; the
		// kernel drops such packets (ip6_rcv_core), and so must this.
		if (v4mapped(&ip6->saddr) || v4mapped(&ip6->daddr))
			return -1;
		__builtin_memcpy(key->saddr, &ip6->saddr, sizeof(key->saddr));
		__builtin_memcpy(key->daddr, &ip6->daddr, sizeof(key->daddr));
		l3->ip = ip6;
		l3->v6 = 1;
		iplen = sizeof(*ip6);
		l4 = ip6 + 1;
	} else {
		return -1;
	}
	int flags = 0;
	if (key->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return -1;
		key->sport = th->source;
		key->dport = th->dest;
		l3->hdrs = iplen + th->doff * 4;
		flags = ((__u8 *)th)[13];
	} else {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return -1;
		key->sport = uh->source;
		key->dport = uh->dest;
		l3->hdrs = iplen + sizeof(*uh);
	}
	*ethp = eth;
	*seg = skb->len - sizeof(*eth);
	if (skb->gso_size)
		*seg = l3->hdrs + skb->gso_size;
	return flags;
}

// conn_of is the key of the connection of key, either way round.
static __always_inline void conn_of(struct flow_key *key, struct conn_key *c)
{
	// Any order both directions agree on will do: the source first if
	// it is the lower, word by word, then by port.
	int lower = key->sport <= key->dport;
#pragma unroll
	for (int i = 3; i >= 0; i--) {
		if (key->saddr[i] != key->daddr[i])
			lower = key->saddr[i] < key->daddr[i];
	}
	if (lower) {
		__builtin_memcpy(c->saddr, key->saddr, sizeof(c->saddr));
		__builtin_memcpy(c->daddr, key->daddr, sizeof(c->daddr));
		c->sport = key->sport;
		c->dport = key->dport;
	} else {
		__builtin_memcpy(c->saddr, key->daddr, sizeof(c->saddr));
		__builtin_memcpy(c->daddr, key->saddr, sizeof(c->daddr));
		c->sport = key->dport;
		c->dport = key->sport;
	}
}

// forget drops what the offload learned of the connection of key, both
// ways and both passes: it is opening (a new connection on the 5-tuple of
// an old one may take another chain) or ending (conntrack must see the
// rest). Opening, it also drops what it knew of the connection in
// conntrack: a new connection is a new entry there, not yet liberal.
static __always_inline void forget(struct flow_key *key, int opening)
{
	if (opening) {
		struct conn_key c;
		__builtin_memset(&c, 0, sizeof(c));
		conn_of(key, &c);
		bpf_map_delete_elem(&conns, &c);
	}
	struct flow_key k = *key;
#pragma unroll
	for (int rev = 0; rev < 2; rev++) {
#pragma unroll
		for (int steered = 0; steered < 2; steered++) {
			k.steered = steered;
			bpf_map_delete_elem(&flows, &k);
		}
		__builtin_memcpy(k.saddr, key->daddr, sizeof(k.saddr));
		__builtin_memcpy(k.daddr, key->saddr, sizeof(k.daddr));
		k.sport = key->dport;
		k.dport = key->sport;
	}
}

// liberal reports whether Go has made key's connection liberal in
// conntrack; if it has not been asked (or not for a second), it asks, from
// a packet that carries data only: a connection that opens and closes
// with nothing but its handshake is not worth a conntrack update.
static __always_inline int liberal(struct flow_key *key, int data)
{
	struct ask a;
	__builtin_memset(&a, 0, sizeof(a)); // padding included, as in learning
	conn_of(key, &a.key);
	struct conn_state *st = bpf_map_lookup_elem(&conns, &a.key);
	if (st && st->state == CONN_LIBERAL)
		return 1;
	if (!data)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (st && (st->state == CONN_UNTRACKED || now - st->asked_ns < ASK_AGAIN_NS))
		return 0; // the kernel's until it ends; or waiting for Go
	struct conn_state asked = {.asked_ns = now, .state = CONN_ASKED};
	a.asked_ns = now;
	if (bpf_map_update_elem(&conns, &a.key, &asked, BPF_ANY) == 0 &&
	    bpf_ringbuf_output(&asks, &a, sizeof(a), 0) == 0)
		count(STAT_ASKED);
	return 0;
}

// UDP_LEARN_AFTER is how many packets of a UDP flow direction take the
// kernel's path before the offload learns it: a flow of a datagram or
// two (a DNS query) would take a place in flows that it never uses, and
// push out one that does.
#define UDP_LEARN_AFTER 8

// seen_enough counts a packet of key's UDP flow direction on the kernel's
// path, and reports whether it was the UDP_LEARN_AFTER-th.
static __always_inline int seen_enough(struct flow_key *key)
{
	__u32 *n = bpf_map_lookup_elem(&udp_seen, key);
	if (!n) {
		__u32 one = 1;
		bpf_map_update_elem(&udp_seen, key, &one, BPF_ANY);
		return 0;
	}
	if (++*n < UDP_LEARN_AFTER)
		return 0;
	bpf_map_delete_elem(&udp_seen, key);
	return 1;
}

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	__u8 diff = 0;
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04

static __always_inline int ingress(struct __sk_buff *skb, __u32 steered)
{
	struct flow_key key;
	__builtin_memset(&key, 0, sizeof(key));
	key.steered = steered;
	struct l3 l3;
	struct ethhdr *eth;
	__u32 seg;
	int flags = parse(skb, &key, &l3, &eth, &seg);
	if (flags < 0)
		return TC_ACT_OK;
	if (flags & (TCP_SYN | TCP_FIN | TCP_RST)) {
		forget(&key, flags & TCP_SYN);
		return TC_ACT_OK;
	}
	__u32 zero = 0;
	struct settings *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return TC_ACT_OK;
	struct flow_hop *hop = bpf_map_lookup_elem(&flows, &key);
	if (!hop || hop->gen != cfg->gen || hop->in_ifindex != skb->ingress_ifindex)
		return TC_ACT_OK;
	// Checked against the out interface's MTU as it is now, not as it
	// was when learned: a packet too large for it takes the kernel's
	// path, which fragments it or says so (ICMP).
	// (The helper's verdict passes a GSO packet whatever its segments:
	// it is compared here by seg, the size of each.)
	__u32 mtu = 0;
	if (bpf_check_mtu(skb, hop->out_ifindex, &mtu, 0, 0) < 0 || seg > mtu)
		return TC_ACT_OK;
	__u64 now = bpf_ktime_get_ns();
	if (now - hop->slow > cfg->refresh_ns) {
		// One packet the kernel's way: conntrack keeps the connection
		// alive, and the egress program relearns a changed hop.
		hop->slow = now;
		count(STAT_REFRESHED);
		return TC_ACT_OK;
	}
	// What ip_forward does to the header: the TTL, and its checksum
	// incrementally (RFC 1624); what ip6_forward does, the hop limit.
	if (l3.v6) {
		struct ipv6hdr *ip6 = l3.ip;
		ip6->hop_limit--;
	} else {
		struct iphdr *ip = l3.ip;
		__u32 check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xffff));
		ip->ttl--;
	}
	__builtin_memcpy(eth->h_dest, hop->dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, hop->src, ETH_ALEN);
	// The egress program passes it by this at once; it clears it.
	skb->mark |= cfg->own_mark;
	count(STAT_OFFLOADED);
	return bpf_redirect(hop->out_ifindex, 0);
}

// On a steered interface.
SEC("tc")
int offload_ingress_steered(struct __sk_buff *skb)
{
	return ingress(skb, 1);
}

// On the gateway's other interfaces.
SEC("tc")
int offload_ingress(struct __sk_buff *skb)
{
	return ingress(skb, 0);
}

SEC("tc")
int offload_egress(struct __sk_buff *skb)
{
	__u32 in = skb->ingress_ifindex, zero = 0;
	struct settings *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || in == 0)
		return TC_ACT_OK; // the node's own
	if (skb->mark & cfg->own_mark) {
		skb->mark &= ~cfg->own_mark; // the offload's own
		return TC_ACT_OK;
	}
	struct flow_key key;
	__builtin_memset(&key, 0, sizeof(key));
	struct l3 l3;
	struct ethhdr *eth;
	__u32 seg;
	int flags = parse(skb, &key, &l3, &eth, &seg);
	if (flags < 0 || (flags & (TCP_SYN | TCP_FIN | TCP_RST)))
		return TC_ACT_OK;
	__u32 *steered = bpf_map_lookup_elem(&ifaces, &in);
	if (!steered)
		return TC_ACT_OK;
	key.steered = *steered;
	struct flow_hop *hop = bpf_map_lookup_elem(&flows, &key);
	if (hop && hop->gen == cfg->gen && hop->in_ifindex == in && hop->out_ifindex == skb->ifindex &&
	    same_mac(hop->dst, eth->h_dest) && same_mac(hop->src, eth->h_source))
		return TC_ACT_OK; // learned already: a refresh that found the same hop
	if (key.steered) {
		// Steered in: only a flow the agent decided, whose restored
		// mark names its hop.
		if (!(skb->mark & cfg->hop_mask))
			return TC_ACT_OK;
	} else {
		// Handed back by the chain: only a flow learned on its way in.
		struct flow_key first = key;
		first.steered = 1;
		struct flow_hop *in_hop = bpf_map_lookup_elem(&flows, &first);
		if (!in_hop || in_hop->gen != cfg->gen)
			return TC_ACT_OK;
	}
	if (key.proto == IPPROTO_TCP) {
		if (!liberal(&key, skb->len > sizeof(*eth) + l3.hdrs))
			return TC_ACT_OK;
	} else if (!hop && !seen_enough(&key)) {
		// A flow learned before (a changed hop, an invalidation) is
		// learned again at once.
		return TC_ACT_OK;
	}
	// Zeroed whole, padding included: a program loaded without
	// CAP_PERFMON may not pass uninitialized stack bytes to a helper.
	struct flow_hop learned;
	__builtin_memset(&learned, 0, sizeof(learned));
	learned.in_ifindex = in;
	learned.out_ifindex = skb->ifindex;
	learned.gen = cfg->gen;
	learned.slow = bpf_ktime_get_ns();
	__builtin_memcpy(learned.dst, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(learned.src, eth->h_source, ETH_ALEN);
	bpf_map_update_elem(&flows, &key, &learned, BPF_ANY);
	count(STAT_LEARNED);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
