package rules

import "net/netip"

// TenantTag is a tenant's number on the overlay and the prefixes its
// flows come from. On an overlay every packet a node sends to another
// carries its flow's tag in the VXLAN header (GBP's group policy ID):
//
//   - a gateway tags what it sends into a chain by the flow's client
//     address (its source one way, its destination the other);
//   - an instance host takes the tag of what it receives as the flow's
//     conntrack zone, drops and counts whatever arrives with no tag or one
//     that names no tenant, and whatever would be forwarded without having
//     come through the overlay, and tags what it sends on with the zone;
//   - the first packet of a flow an instance host has not decided reaches
//     its agent with the tag in the mark's original half and [MarkTag]
//     set: the agent takes the tenant from there, never from the
//     addresses.
//
// The rules live in nftables table inet nfsteer (see [TagTable]).
//
// A zoned tenant (one with SNAT) may share its addresses with other zoned
// tenants, so nothing may tell it apart by them. On its gateways:
//
//   - what enters by its one Ingress interface is its own conntrack zone,
//     the tag, and reaches the agent with the tag and MarkTag, as on an
//     instance host;
//   - the gateway tags it with its own number too (see [Overlay.Gateway]):
//     the last instance of the chain hands the flow back to that gateway
//     through the overlay, tagged, instead of routing it on;
//   - what comes back from the chain towards the server is a second
//     conntrack entry, zone 0x8000|tag in the original direction only (the
//     server's reply, after SNAT, is in zone 0), which leaves with the
//     tenant's SNAT address, and whose reply half is the hop that sent it,
//     read from the inner Ethernet source: no second crossing;
//   - what comes back towards the tenant (instances set the tag's A flag,
//     [TagApplied], on it) is found in the tenant's zone and routed by its
//     tag to its table, out of its ingress (see routing.go);
//   - whatever would be forwarded to its addresses from anywhere else is
//     dropped and counted with the untagged packets;
//   - the gateway's own ICMP errors about its packets (they carry the
//     packet's connection, so its zone) are routed by its tag too.
type TenantTag struct {
	Tag      uint16
	Prefixes []netip.Prefix
	// Ingress and SNAT are a zoned tenant's: its ingress interface and
	// the address its flows leave with; Via, the router on the ingress
	// link its prefixes sit behind (none: they are on the link).
	Ingress string
	SNAT    netip.Addr
	Via     netip.Addr
}

// Zoned reports whether the tenant is zoned (see [TenantTag]).
func (tt TenantTag) Zoned() bool { return tt.SNAT.IsValid() }

// ZoneOut is the bit that makes a zoned flow's second conntrack entry on a
// gateway (its way out of the chain) a zone apart from its first.
const ZoneOut = 0x8000

// TagTable is the nftables table (family inet) that holds the steer
// chain (see [Steer]) and the overlay's tag rules. Every node has it, and
// nfsteer owns it whole.
const TagTable = "nfsteer"

// SpoofedCounter names the counter of packets a gateway dropped for
// entering where their source may not (see [Binding]).
const SpoofedCounter = "spoofed"

// UntaggedCounter names the counter of packets an instance host on an
// overlay dropped for arriving with no tag, with one that names no tenant,
// or from outside the overlay.
const UntaggedCounter = "untagged"
