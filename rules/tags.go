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
type TenantTag struct {
	Tag      uint16
	Prefixes []netip.Prefix
}

// TagTable is the nftables table (family inet) that holds the overlay's
// tag rules. nfsteer owns it whole.
const TagTable = "nfsteer"

// UntaggedCounter names the counter of packets an instance host on an
// overlay dropped for arriving with no tag, with one that names no tenant,
// or from outside the overlay.
const UntaggedCounter = "untagged"
