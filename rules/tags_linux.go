//go:build linux

package rules

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Hook priorities of the chains, around iptables' mangle chains (-150):
// an instance host's zone goes on before conntrack looks the packet up
// (raw), MarkTag before NFSTEER-PRE restores the halves, and the tag on
// the way out after NFSTEER-POST has saved them. The steer chain comes
// after MarkTag, which sets the whole mark, and before NFSTEER-PRE,
// which wants MarkSteered.
const (
	prioTagRaw  = -300
	prioTagPre  = -152
	prioSteer   = -151
	prioTagPost = -140
)

// batchBuffer is the socket buffer of the connection that installs table
// inet nfsteer.
const batchBuffer = 8 << 20

// applyTags makes table inet nfsteer hold exactly the rules of s: the
// steer chain (see [Steer]) and the overlay's tag rules (see
// [TenantTag]), in one transaction: no packet meets half of them. It is
// replaced whole, keeping the counts of its counters.
func applyTags(s Spec) error {
	// A gateway with thousands of bound tenants sends more than the
	// default socket buffer holds in its one batch.
	c, err := nftables.New(nftables.WithSockOptions(func(c *netlink.Conn) error {
		if err := c.SetWriteBuffer(batchBuffer); err != nil {
			return err
		}
		return c.SetReadBuffer(batchBuffer)
	}))
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	t := &nftables.Table{Name: TagTable, Family: nftables.TableFamilyINet}
	var untagged, spoofed uint64
	if old, err := c.ListTableOfFamily(TagTable, nftables.TableFamilyINet); err == nil && old != nil {
		untagged, _ = counted(c, t, UntaggedCounter)
		spoofed, _ = counted(c, t, SpoofedCounter)
		c.DelTable(t)
	}
	c.AddTable(t)
	st, gateway := s.Steer()
	if err := steerChain(c, t, st, gateway, spoofed); err != nil {
		return err
	}
	switch {
	case s.Overlay == nil:
	case gateway:
		err = gatewayTags(c, t, s, untagged)
	default:
		err = instanceTags(c, t, s, untagged)
	}
	if err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("installing table inet %s: %w", TagTable, err)
	}
	return nil
}

// ipFamily is an IP family as the rules of table inet nfsteer read it.
type ipFamily struct {
	proto byte                 // NFPROTO_IPV4 or NFPROTO_IPV6
	key   nftables.SetDatatype // of a set of its addresses
	// saddr is the source address's offset in the network header; the
	// destination address follows it.
	saddr, len uint32
	is4        bool
	suffix     string // of the names of its sets
}

var ipFamilies = [2]ipFamily{
	{unix.NFPROTO_IPV4, nftables.TypeIPAddr, 12, 4, true, "4"},
	{unix.NFPROTO_IPV6, nftables.TypeIP6Addr, 8, 16, false, "6"},
}

// daddr is the destination address's offset in the network header.
func (f ipFamily) daddr() uint32 { return f.saddr + f.len }

// only matches the family's packets.
func (f ipFamily) only() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.proto}},
	}
}

// address loads the address at off (saddr or daddr) into register reg.
func (f ipFamily) address(off, reg uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.len}
}

// steerChain adds the steer chain (see [Steer]), on every node. It
// restores a decided flow's halves from its connmark itself, natively,
// and hands iptables (MarkSteered) only what the agent may have to see:
// a packet whose flow is undecided in its own direction, or whose mark
// carries bits the native restore would clear. On a gateway it first
// leaves alone what does not enter by a steered interface (a set), and
// with tenants bound to their ingress it drops what enters where its
// source may not (chain spoof). Its rules and sets are the same few
// however many interfaces, tenants and prefixes there are: only the
// sets' elements grow.
func steerChain(c *nftables.Conn, t *nftables.Table, st Steer, gateway bool, kept uint64) error {
	steer := c.AddChain(&nftables.Chain{Name: "steer", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(prioSteer)})
	add := func(e ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: steer, Exprs: slices.Concat(e...)})
	}
	if gateway {
		steered := &nftables.Set{Table: t, Name: "steered", KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
		var elems []nftables.SetElement
		for _, o := range st.Outer {
			elems = append(elems, nftables.SetElement{Key: ifname(o)})
		}
		for _, b := range st.Bound {
			for _, i := range b.Ifaces {
				elems = append(elems, nftables.SetElement{Key: ifname(i)})
			}
		}
		if err := addSet(c, steered, elems); err != nil {
			return err
		}
		add([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: steered.Name, SetID: steered.ID, Invert: true},
			&expr.Verdict{Kind: expr.VerdictReturn},
		})
		if len(st.Bound) > 0 {
			spoof := c.AddChain(&nftables.Chain{Name: "spoof", Table: t})
			if err := spoofChain(c, t, spoof, st, kept); err != nil {
				return err
			}
			add([]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: spoof.Name}})
		}
	}
	add(restoreDecided(false))
	add(restoreDecided(true))
	add([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(^MarkSteered), Xor: native(MarkSteered)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	})
	return nil
}

// restoreDecided is the fast path of a decided flow's packet, in one
// direction: when its connmark holds the half of the packet's own
// direction, and its mark no bit outside the halves, the mark becomes the
// connmark's halves (with MarkReply the reply way) and the chain accepts.
// That is what NFSTEER-PRE's restore, reply flag and queue tests come to
// for such a packet, with a dozen native expressions instead of an
// iptables jump, an xt CONNMARK call, an xt conntrack match and four
// rules; iptables' mangle chains then see a mark without MarkSteered and
// jump nowhere. A mark with other bits set (MarkTag, other software's)
// goes the iptables way, whose restore keeps them. A packet without a
// connection fails the rule at its first expression.
func restoreDecided(reply bool) []expr.Any {
	// The direction as ct direction loads it: IP_CT_DIR_ORIGINAL 0,
	// IP_CT_DIR_REPLY 1.
	dir, half, flag := byte(0), OrigMask, uint32(0)
	if reply {
		dir, half, flag = 1, ReplyMask, MarkReply
	}
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{dir}},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(^HopMask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 2, Len: 4, Mask: native(half), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 2, Data: make([]byte, 4)},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(HopMask), Xor: native(flag)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// spoofChain fills chain spoof of a gateway with tenants bound to their
// ingress (see [Binding]): it returns what may enter where it does and
// drops, counted, the rest. Only what the gateway would forward is
// checked: traffic to the gateway itself (neighbour discovery from
// link-local sources, its management) and multicast are not a tenant's.
func spoofChain(c *nftables.Conn, t *nftables.Table, spoof *nftables.Chain, st Steer, kept uint64) error {
	add := func(e ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: spoof, Exprs: slices.Concat(e...)})
	}
	iif := []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}}
	bound := &nftables.Set{Table: t, Name: "bound", KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
	var boundE []nftables.SetElement
	for _, b := range st.Bound {
		for _, i := range b.Ifaces {
			boundE = append(boundE, nftables.SetElement{Key: ifname(i)})
		}
	}
	c.AddObj(&nftables.CounterObj{Table: t, Name: SpoofedCounter, Packets: kept})
	drop := []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: SpoofedCounter}, &expr.Verdict{Kind: expr.VerdictDrop}}
	if err := addSet(c, bound, boundE); err != nil {
		return err
	}
	// Not forwarded unicast (to one of the gateway's own addresses, on
	// any interface, or multicast): not checked.
	add([]expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native(unix.RTN_UNICAST)},
		&expr.Verdict{Kind: expr.VerdictReturn},
	})
	var prefixes []*nftables.Set
	for _, f := range ipFamilies {
		// A bound interface's own tenant's sources pass. The interface
		// and the source are looked up together, in 32-bit registers
		// (the name takes four, from NFT_REG32_00).
		allowed := &nftables.Set{Table: t, Name: "allowed" + f.suffix, KeyType: nftables.MustConcatSetType(nftables.TypeIFName, f.key),
			Concatenation: true, Interval: true}
		var allowedE []nftables.SetElement
		var all []netip.Prefix
		for _, b := range st.Bound {
			all = append(all, b.Prefixes...)
			for _, p := range disjoint(b.Prefixes, f.is4) {
				first, last := p.Addr().AsSlice(), lastAddr(p).AsSlice()
				for _, i := range b.Ifaces {
					allowedE = append(allowedE, nftables.SetElement{Key: append(ifname(i), first...), KeyEnd: append(ifname(i), last...)})
				}
			}
		}
		if err := addSet(c, allowed, allowedE); err != nil {
			return err
		}
		const reg32 = 8 // NFT_REG32_00
		add(f.only(), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg32},
			f.address(f.saddr, reg32+unix.IFNAMSIZ/4),
			&expr.Lookup{SourceRegister: reg32, SetName: allowed.Name, SetID: allowed.ID},
			&expr.Verdict{Kind: expr.VerdictReturn},
		})
		set := &nftables.Set{Table: t, Name: "bound" + f.suffix, KeyType: f.key, Interval: true}
		elems, err := unionElements([]TenantTag{{Prefixes: all}}, f.is4)
		if err != nil {
			return err
		}
		if err := addSet(c, set, elems); err != nil {
			return err
		}
		prefixes = append(prefixes, set)
	}
	// Any other source on a bound interface.
	add(iif, []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: bound.Name, SetID: bound.ID}}, drop)
	// A bound tenant's source on any other steered interface.
	for i, f := range ipFamilies {
		add(f.only(), []expr.Any{
			f.address(f.saddr, 1),
			&expr.Lookup{SourceRegister: 1, SetName: prefixes[i].Name, SetID: prefixes[i].ID},
		}, drop)
	}
	return nil
}

// setChunk bounds the elements sent in one message: their list is one
// netlink attribute, whose length has 16 bits.
const setChunk = 256

// addSet adds set with elems, the elements in chunks of setChunk. Every
// set and map of table inet nfsteer is added through it: a map of
// thousands of tenants' prefixes needs the chunks as much as the steer
// chain's sets.
func addSet(c *nftables.Conn, set *nftables.Set, elems []nftables.SetElement) error {
	first := elems[:min(len(elems), setChunk)]
	if err := c.AddSet(set, first); err != nil {
		return fmt.Errorf("adding set %s: %w", set.Name, err)
	}
	for rest := elems[len(first):]; len(rest) > 0; rest = rest[min(len(rest), setChunk):] {
		if err := c.SetAddElements(set, rest[:min(len(rest), setChunk)]); err != nil {
			return fmt.Errorf("adding to set %s: %w", set.Name, err)
		}
	}
	return nil
}

// disjoint returns the prefixes of ps of one family with those another
// covers left out, sorted: what is left does not overlap.
func disjoint(ps []netip.Prefix, is4 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() == is4 {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var kept []netip.Prefix
	for _, p := range out {
		if n := len(kept); n > 0 && kept[n-1].Overlaps(p) {
			continue
		}
		kept = append(kept, p)
	}
	return kept
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// gatewayTags tags what the gateway sends into the overlay by the flow's
// tenant address, as the agent decides it: in conntrack's original
// direction the source's tenant, else the destination's; in the reply
// direction the destination's (the flow's first source), else the
// source's. A packet of no tenant leaves with tag 0, which instance hosts
// drop. A zoned tenant's flows are tagged by their zone instead, and
// everything else a zoned tenant needs is here too (see [TenantTag]).
func gatewayTags(c *nftables.Conn, t *nftables.Table, s Spec, kept uint64) error {
	tags := slices.DeleteFunc(slices.Clone(s.Tags), TenantTag.Zoned)
	zoned := s.zoned()
	post := c.AddChain(&nftables.Chain{Name: "tag", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(prioTagPost)})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: slices.Concat(oifOverlay(), setMark(0))})
	// The overlay's MTU is the service network's less the tunnel's
	// headers, likely below the tenants' links': TCP learns it from the
	// SYNs the gateway sends into the overlay, whichever way they go,
	// without a round of path MTU discovery.
	fwd := c.AddChain(&nftables.Chain{Name: "mss", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: slices.Concat(oifOverlay(), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x06}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}}, // SYN without RST
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		// The kernel only ever lowers it.
		&expr.Exthdr{SourceRegister: 1, Op: expr.ExthdrOpTcpopt, Type: 2, Offset: 2, Len: 2},
	})})
	if len(zoned) > 0 {
		if err := zonedGateway(c, t, s, zoned, kept); err != nil {
			return err
		}
	}
	for _, fam := range ipFamilies {
		set := &nftables.Set{Table: t, Name: "tags" + fam.suffix, KeyType: fam.key, DataType: nftables.TypeMark, IsMap: true, Interval: true}
		elems, err := intervalElements(tags, fam.is4)
		if err != nil {
			return err
		}
		if err := addSet(c, set, elems); err != nil {
			return err
		}
		// Per direction, the fallback first: the later rule wins where
		// both addresses are tenants'.
		src, dst := fam.saddr, fam.daddr()
		for _, r := range []struct {
			dir byte
			off uint32
		}{{0, dst}, {0, src}, {1, src}, {1, dst}} {
			dir, off := r.dir, r.off
			c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: slices.Concat(oifOverlay(), fam.only(),
				[]expr.Any{
					&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{dir}},
					fam.address(off, 1),
					&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
					&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
				})})
		}
	}
	if len(zoned) > 0 {
		// Last, so that it wins: a zoned flow by its zone (either
		// entry's), with the gateway's number.
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: slices.Concat(oifOverlay(), loadZone(), []expr.Any{
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(TagMask), Xor: native(uint32(s.Overlay.Gateway) << GatewayShift)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		})})
	}
	return nil
}

// zonedGateway adds what a gateway needs for its zoned tenants (see
// [TenantTag]) besides the tag: their zones, the tenant's tag for the
// agent, the second conntrack entry and its reverse hop, SNAT, and the
// drops.
func zonedGateway(c *nftables.Conn, t *nftables.Table, s Spec, zoned []TenantTag, kept uint64) error {
	mark := func(v uint32) []byte { return native(v) }
	ingress := &nftables.Set{Table: t, Name: "ingress", KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeMark, IsMap: true}
	allTags := &nftables.Set{Table: t, Name: "tags", KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian}
	zonedTags := &nftables.Set{Table: t, Name: "zoned", KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian}
	hops := &nftables.Set{Table: t, Name: "hops", KeyType: nftables.TypeEtherAddr, DataType: nftables.TypeMark, IsMap: true}
	snat4 := &nftables.Set{Table: t, Name: "snat4", KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeIPAddr, IsMap: true}
	snat6 := &nftables.Set{Table: t, Name: "snat6", KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeIP6Addr, IsMap: true}
	// The server's replies find their entry's zone by the address they
	// go to.
	out4 := &nftables.Set{Table: t, Name: "out4", KeyType: nftables.TypeIPAddr, DataType: nftables.TypeMark, IsMap: true}
	out6 := &nftables.Set{Table: t, Name: "out6", KeyType: nftables.TypeIP6Addr, DataType: nftables.TypeMark, IsMap: true}
	var ingressE, zonedE, snat4E, snat6E, out4E, out6E, allE, hopsE []nftables.SetElement
	var dests []TenantTag
	for _, tt := range s.Tags {
		allE = append(allE, nftables.SetElement{Key: mark(uint32(tt.Tag))})
	}
	for _, tt := range zoned {
		ingressE = append(ingressE, nftables.SetElement{Key: ifname(tt.Ingress), Val: mark(uint32(tt.Tag))})
		zonedE = append(zonedE, nftables.SetElement{Key: mark(uint32(tt.Tag))})
		out := uint32(tt.Tag) | ZoneOut
		if tt.SNAT.Is4() {
			snat4E = append(snat4E, nftables.SetElement{Key: mark(out), Val: tt.SNAT.AsSlice()})
			out4E = append(out4E, nftables.SetElement{Key: tt.SNAT.AsSlice(), Val: mark(out)})
		} else {
			snat6E = append(snat6E, nftables.SetElement{Key: mark(out), Val: tt.SNAT.AsSlice()})
			out6E = append(out6E, nftables.SetElement{Key: tt.SNAT.AsSlice(), Val: mark(out)})
		}
		dests = append(dests, TenantTag{Tag: tt.Tag, Prefixes: tt.Prefixes})
	}
	ids := map[string]uint16{}
	for _, h := range s.Hops {
		ids[h.Name] = h.ID
	}
	for _, p := range s.Overlay.Peers {
		if id, ok := ids[p.Name]; ok {
			hopsE = append(hopsE, nftables.SetElement{Key: OverlayMAC(p.Underlay), Val: mark(HalfValue(id)<<ReplyShift | MarkPass)})
		}
	}
	dst4 := &nftables.Set{Table: t, Name: "zoned4", KeyType: nftables.TypeIPAddr, Interval: true}
	dst6 := &nftables.Set{Table: t, Name: "zoned6", KeyType: nftables.TypeIP6Addr, Interval: true}
	for _, set := range []struct {
		s *nftables.Set
		e []nftables.SetElement
	}{{ingress, ingressE}, {allTags, allE}, {zonedTags, zonedE}, {hops, hopsE}, {snat4, snat4E}, {snat6, snat6E}, {out4, out4E}, {out6, out6E}} {
		if err := addSet(c, set.s, set.e); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		s   *nftables.Set
		is4 bool
	}{{dst4, true}, {dst6, false}} {
		elems, err := unionElements(dests, d.is4)
		if err != nil {
			return err
		}
		if err := addSet(c, d.s, elems); err != nil {
			return err
		}
	}
	c.AddObj(&nftables.CounterObj{Table: t, Name: UntaggedCounter, Packets: kept})
	drop := []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: UntaggedCounter}, &expr.Verdict{Kind: expr.VerdictDrop}}
	setZone := []expr.Any{&expr.Ct{Key: expr.CtKeyZONE, SourceRegister: true, Register: 1}}
	tagIn := func(set *nftables.Set, invert bool) []expr.Any {
		return slices.Concat(loadMark(TagMask), []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: invert}})
	}
	markBits := func(mask, want uint32) []expr.Any {
		return slices.Concat(loadMark(mask), []expr.Any{&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark(want)}})
	}

	raw := c.AddChain(&nftables.Chain{Name: "zone", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(prioTagRaw)})
	add := func(ch *nftables.Chain, e ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat(e...)})
	}
	// What enters by a zoned tenant's ingress is in its zone.
	add(raw, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: ingress.Name, SetID: ingress.ID},
	}, setZone)
	// From the overlay: a tag of no tenant is dropped.
	add(raw, iifOverlay(true), tagIn(allTags, true), drop)
	// A zoned tenant's flow on its way back to the tenant: in its zone,
	// and routed by its tag (MarkTag; see routing.go).
	add(raw, iifOverlay(true), tagIn(zonedTags, false), markBits(TagApplied, TagApplied), loadMark(TagMask), setZone, []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark(TagMask), Xor: mark(MarkTag)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	})
	// A zoned tenant's flow on its way out of the chain: its second
	// entry, a zone of its own.
	add(raw, iifOverlay(true), tagIn(zonedTags, false), markBits(TagApplied|MarkTag, 0), loadMark(TagMask), []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark(TagMask), Xor: mark(ZoneOut)},
	}, setZone, setMark(0))
	// Any other tag is routed on as if untagged: the mark must not pass
	// for a hop.
	add(raw, iifOverlay(true), markBits(MarkTag, 0), setMark(0))
	for i, fam := range ipFamilies {
		out, dst := [2]*nftables.Set{out4, out6}[i], [2]*nftables.Set{dst4, dst6}[i]
		daddr := append(fam.only(), fam.address(fam.daddr(), 1))
		// The server's reply to a snat address: the second entry's zone.
		add(raw, iifOverlay(false), daddr, []expr.Any{&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: out.Name, SetID: out.ID}}, setZone)
		// Anything else forwarded to a zoned tenant's addresses did not
		// come back through its chain.
		add(raw, iifOverlay(false), daddr, []expr.Any{
			&expr.Lookup{SourceRegister: 1, SetName: dst.Name, SetID: dst.ID},
			&expr.Fib{Register: 1, FlagDADDR: true, FlagIIF: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_UNICAST)},
		}, drop)
	}

	pre := c.AddChain(&nftables.Chain{Name: "tagged", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(prioTagPre)})
	// An undecided flow of a zoned tenant: to the agent with its tag.
	add(pre, iifOverlay(false), loadZone(), []expr.Any{
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		// (A mask, not an order: the zone is in host byte order.)
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark(ZoneOut), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
	}, undecided(), loadZone(), []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark(TagMask), Xor: mark(MarkTag)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	})
	// A second entry's reverse hop: the instance that handed it back.
	add(pre, iifOverlay(true), []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(expr.CtStateBitNEW), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}, loadZone(), []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark(ZoneOut), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: hops.Name, SetID: hops.ID},
		&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: 1},
	})

	// The gateway's own ICMP errors about a zoned tenant's packets (path
	// MTU, TTL) carry the offending packet's connection, so its zone:
	// routed by the tag, they reach the tenant's link, where the main
	// table would pick any link the shared addresses are on.
	icmp := c.AddChain(&nftables.Chain{Name: "icmp", Table: t, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle})
	for _, proto := range []byte{unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6} {
		add(icmp, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		}, loadZone(), []expr.Any{
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark(ZoneOut), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
		}, loadZone(), []expr.Any{
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark(TagMask), Xor: mark(MarkTag)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		})
	}

	nat := c.AddChain(&nftables.Chain{Name: "snat", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	for i, fam := range ipFamilies {
		set := [2]*nftables.Set{snat4, snat6}[i]
		add(nat, fam.only(), loadZone(), []expr.Any{
			&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(fam.proto), RegAddrMin: 1},
		})
	}
	return nil
}

// loadZone puts the packet's conntrack zone in register 1.
func loadZone() []expr.Any { return []expr.Any{&expr.Ct{Key: expr.CtKeyZONE, Register: 1}} }

// undecided matches a packet whose flow has no halves in its connmark.
func undecided() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(HopMask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
	}
}

func native(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// unionElements are the elements of an interval set of the prefixes of
// tags of one family, merged where they overlap (zoned tenants share
// addresses).
func unionElements(tags []TenantTag, is4 bool) ([]nftables.SetElement, error) {
	var ps []netip.Prefix
	for _, tt := range tags {
		ps = append(ps, tt.Prefixes...)
	}
	var merged []TenantTag
	for _, p := range disjoint(ps, is4) {
		merged = append(merged, TenantTag{Prefixes: []netip.Prefix{p}})
	}
	elems, err := intervalElements(merged, is4)
	for i := range elems {
		elems[i].Val = nil
	}
	return elems, err
}

// instanceTags: an instance host takes its flows' zones from the tags
// they arrive with, drops what it may not steer, marks what reaches its
// agent with a tag (MarkTag), and tags what it sends on.
func instanceTags(c *nftables.Conn, t *nftables.Table, s Spec, kept uint64) error {
	tags := s.Tags
	set := &nftables.Set{Table: t, Name: "tags", KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian}
	var elems []nftables.SetElement
	for _, tt := range tags {
		elems = append(elems, nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(tt.Tag))})
	}
	if err := addSet(c, set, elems); err != nil {
		return err
	}
	c.AddObj(&nftables.CounterObj{Table: t, Name: UntaggedCounter, Packets: kept})
	drop := []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: UntaggedCounter}, &expr.Verdict{Kind: expr.VerdictDrop}}

	raw := c.AddChain(&nftables.Chain{Name: "zone", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(prioTagRaw)})
	// A tag that names no tenant (0: none).
	c.AddRule(&nftables.Rule{Table: t, Chain: raw, Exprs: slices.Concat(iifOverlay(true), loadMark(TagMask),
		[]expr.Any{&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: true}}, drop)})
	// The tag and its gateway's number alone in the mark, with the GBP
	// flags cut off, and as the flow's zone.
	c.AddRule(&nftables.Rule{Table: t, Chain: raw, Exprs: slices.Concat(iifOverlay(true), loadMark(TagMask|GatewayMask),
		[]expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			&expr.Ct{Key: expr.CtKeyZONE, SourceRegister: true, Register: 1},
		})})
	// Forwarded unicast that did not come through the overlay. The
	// lookup is by the incoming interface too: a link-local address is
	// local only on its own interface.
	c.AddRule(&nftables.Rule{Table: t, Chain: raw, Exprs: slices.Concat(iifOverlay(false),
		[]expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, FlagIIF: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_UNICAST)},
		}, drop)})

	pre := c.AddChain(&nftables.Chain{Name: "tagged", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(prioTagPre)})
	// An undecided flow: its packet keeps its tag for the agent.
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: slices.Concat(iifOverlay(true),
		[]expr.Any{
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(HopMask), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
		},
		loadMark(^uint32(0)),
		[]expr.Any{
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^MarkTag), Xor: binaryutil.NativeEndian.PutUint32(MarkTag)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		})})

	post := c.AddChain(&nftables.Chain{Name: "tag", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(prioTagPost)})
	// To a gateway's return hop, in either direction (see Hop.Return):
	// the tag with the A flag, and nothing else.
	ret := &nftables.Set{Table: t, Name: "return", KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian}
	var retE []nftables.SetElement
	for _, h := range s.Hops {
		if h.Return {
			retE = append(retE,
				nftables.SetElement{Key: native(HalfValue(h.ID))},
				nftables.SetElement{Key: native(HalfValue(h.ID)<<ReplyShift | MarkReply)})
		}
	}
	if err := addSet(c, ret, retE); err != nil {
		return err
	}
	tagApplied := []expr.Any{
		&expr.Ct{Key: expr.CtKeyZONE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(^uint32(0)), Xor: native(TagApplied)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
	for _, half := range []uint32{OrigMask | MarkReply, ReplyMask | MarkReply} {
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: slices.Concat(oifOverlay(), loadMark(half),
			[]expr.Any{&expr.Lookup{SourceRegister: 1, SetName: ret.Name, SetID: ret.ID}}, tagApplied)})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: slices.Concat(oifOverlay(),
		[]expr.Any{
			&expr.Ct{Key: expr.CtKeyZONE, Register: 1},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		})})
	return nil
}

// intervalElements are the elements of an interval map from the tenants'
// prefixes of one family to their tags: each prefix's first address
// carries the tag, and the address after its last ends it (unless it is
// the end of the space), also where the next prefix starts: the kernel
// refuses a start that follows a start with no end between them (as nft
// writes them, an end and a start may share an address).
func intervalElements(tags []TenantTag, is4 bool) ([]nftables.SetElement, error) {
	type span struct {
		p   netip.Prefix
		tag uint16
	}
	var spans []span
	for _, tt := range tags {
		for _, p := range tt.Prefixes {
			if p.Addr().Is4() == is4 {
				spans = append(spans, span{p.Masked(), tt.Tag})
			}
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return a.p.Addr().Compare(b.p.Addr()) })
	var out []nftables.SetElement
	for i, sp := range spans {
		out = append(out, nftables.SetElement{Key: sp.p.Addr().AsSlice(), Val: binaryutil.NativeEndian.PutUint32(uint32(sp.tag))})
		end, ok := afterPrefix(sp.p)
		if !ok {
			continue
		}
		if i+1 < len(spans) && spans[i+1].p.Addr().Less(end) {
			return nil, fmt.Errorf("tenant prefixes %s and %s overlap", sp.p, spans[i+1].p)
		}
		out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
	}
	return out, nil
}

// afterPrefix returns the address after p's last, or false if p reaches the
// end of its family's space.
func afterPrefix(p netip.Prefix) (netip.Addr, bool) {
	b := p.Addr().AsSlice()
	n := new(big.Int).SetBytes(b)
	host := uint(len(b)*8 - p.Bits())
	n.Add(n, new(big.Int).Lsh(big.NewInt(1), host))
	if n.BitLen() > len(b)*8 {
		return netip.Addr{}, false
	}
	out := make([]byte, len(b))
	n.FillBytes(out)
	a, _ := netip.AddrFromSlice(out)
	return a, true
}

// iifOverlay matches packets that came in on the overlay device (or, with
// on false, on any other).
func iifOverlay(on bool) []expr.Any {
	op := expr.CmpOpEq
	if !on {
		op = expr.CmpOpNeq
	}
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: ifname(OverlayDevice)}}
}

// oifOverlay matches packets that leave on the overlay device.
func oifOverlay() []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(OverlayDevice)}}
}

func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// loadMark puts the packet's mark, masked, in register 1.
func loadMark(mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: make([]byte, 4)},
	}
}

// setMark sets the packet's mark to v.
func setMark(v uint32) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(v)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

// removeTags deletes table inet nfsteer, if it is there.
func removeTags() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	if t, err := c.ListTableOfFamily(TagTable, nftables.TableFamilyINet); err != nil || t == nil {
		return nil // not there
	}
	c.DelTable(&nftables.Table{Name: TagTable, Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("deleting table inet %s: %w", TagTable, err)
	}
	return nil
}

// countUntagged reads the untagged counter of table t.
// counted returns the packets of counter name in table t.
func counted(c *nftables.Conn, t *nftables.Table, name string) (uint64, error) {
	o, err := c.GetObject(&nftables.CounterObj{Table: t, Name: name})
	if err != nil {
		return 0, err
	}
	if co, ok := o.(*nftables.CounterObj); ok {
		return co.Packets, nil
	}
	return 0, fmt.Errorf("%s is not a counter", name)
}

// tableCounter returns the packets of counter name in table inet
// nfsteer: 0 where the table or the counter is not there.
func tableCounter(name string) (uint64, error) {
	c, err := nftables.New()
	if err != nil {
		return 0, fmt.Errorf("opening nftables: %w", err)
	}
	if have, err := c.ListTableOfFamily(TagTable, nftables.TableFamilyINet); err != nil || have == nil {
		return 0, nil
	}
	objs, err := c.GetObjects(&nftables.Table{Name: TagTable, Family: nftables.TableFamilyINet})
	if err != nil {
		return 0, fmt.Errorf("listing the objects of table inet %s: %w", TagTable, err)
	}
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok && co.Name == name {
			return co.Packets, nil
		}
	}
	return 0, nil
}

// showTags describes table inet nfsteer, one line per tag and one for its
// counter.
func showTags() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	t, err := c.ListTableOfFamily(TagTable, nftables.TableFamilyINet)
	if err != nil || t == nil {
		return nil, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	var out []string
	for _, ch := range chains {
		if ch.Table.Name == TagTable {
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return nil, fmt.Errorf("listing chain %s: %w", ch.Name, err)
			}
			if ch.Hooknum == nil || ch.Priority == nil {
				out = append(out, fmt.Sprintf("tags inet %s chain %s: %d rules", TagTable, ch.Name, len(rules)))
				continue
			}
			out = append(out, fmt.Sprintf("tags inet %s chain %s hook %d priority %d: %d rules", TagTable, ch.Name, *ch.Hooknum, *ch.Priority, len(rules)))
		}
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("listing sets: %w", err)
	}
	for _, set := range sets {
		elems, err := c.GetSetElements(set)
		if err != nil {
			return nil, fmt.Errorf("listing set %s: %w", set.Name, err)
		}
		out = append(out, fmt.Sprintf("tags inet %s set %s: %d elements", TagTable, set.Name, len(elems)))
	}
	for _, name := range []string{UntaggedCounter, SpoofedCounter} {
		if n, err := counted(c, t, name); err == nil {
			out = append(out, fmt.Sprintf("tags inet %s counter %s: %d packets", TagTable, name, n))
		}
	}
	return out, nil
}
