package rules

import "github.com/nfsteer/nfsteer/steering"

// Mark layout (see the package documentation).
const (
	OrigMask   uint32 = 0x00000fff
	ReplyMask  uint32 = 0x00fff000
	ReplyShift        = 12
	// HopMask covers both halves: what the connmark holds.
	HopMask = OrigMask | ReplyMask
	// MarkReply is set on packets of the reply direction as they enter
	// (PREROUTING), so that policy routing, which cannot see conntrack,
	// follows the half of the packet's own direction. It is never saved.
	MarkReply uint32 = 1 << 24
	// MarkSave asks the kernel to save the packet's halves into the
	// connmark (POSTROUTING): the agent sets it on the packets it decides.
	// Packets of a flow already decided do not carry it, so the save runs
	// once per decision, not per packet. It is never saved.
	MarkSave uint32 = 1 << 25
	// MarkPass in a half means: decided, route normally.
	MarkPass uint32 = 1
	// MaxID is the highest ID of a hop: the map's highest, an overlay
	// gateway's return hop (steering.ReturnID), which a half must be able
	// to carry.
	MaxID = steering.MaxGatewayID + steering.MaxGateways
)

// A half carries HalfValue(MaxID) = MaxID+1; this fails to compile (a
// negative constant converted to uint) if the map's IDs outgrow it.
const _ = uint(OrigMask - (MaxID + 1))

// The tag as an overlay's VXLAN header carries it into the receiver's
// packet mark (see [TenantTag]): the tenant's tag in the low 12 bits, the
// number of the gateway its flow entered by in the next 4 (a zoned
// tenant's flow's only), and GBP's "policy applied" flag, which nfsteer
// sets on packets that travel towards the tenant.
const (
	TagMask      uint32 = 0x0fff
	GatewayShift        = 12
	GatewayMask  uint32 = 0xf << GatewayShift
	// TagApplied is VXLAN-GBP's A flag as the kernel puts it in the mark.
	TagApplied uint32 = 1 << 19
)

// HalfValue is the value a half carries to send a flow to instance id.
func HalfValue(id uint16) uint32 { return uint32(id) + 1 }

// SetHalf returns mark with the half of one direction set to v, keeping
// every other bit.
func SetHalf(mark uint32, reply bool, v uint32) uint32 {
	if reply {
		return mark&^ReplyMask | v<<ReplyShift&ReplyMask
	}
	return mark&^OrigMask | v&OrigMask
}

// Half returns the value of one direction's half of mark.
func Half(mark uint32, reply bool) uint32 {
	if reply {
		return mark & ReplyMask >> ReplyShift
	}
	return mark & OrigMask
}

// MarkSteered is set by the nftables chain steer (before iptables'
// mangle chains) on the packets it does not restore itself: those of a
// flow undecided in their own direction, and those whose mark carries bits
// outside the halves (see [Steer]). It is cleared by NFSTEER-PRE's
// restore: one iptables rule sends those packets to NFSTEER-PRE. It is
// never saved.
const MarkSteered uint32 = 1 << 27

// MarkTag is set, on an instance host on an overlay, on a packet that
// arrived with its tenant's tag in the original half's bits (see
// [Overlay]): its flow is undecided, so its halves are not restored and
// the agent reads the tag there. It is never saved.
const MarkTag uint32 = 1 << 26
