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
	"golang.org/x/sys/unix"
)

// Hook priorities of the tag chains, around iptables' mangle chains
// (-150): an instance host's zone goes on before conntrack looks the
// packet up (raw), MarkTag before NFSTEER-PRE restores the halves, and
// the tag on the way out after NFSTEER-POST has saved them.
const (
	prioTagRaw  = -300
	prioTagPre  = -151
	prioTagPost = -140
)

// applyTags makes table inet nfsteer hold exactly the tag rules of s (see
// [TenantTag]), in one transaction: no packet meets half of them. It is
// replaced whole, keeping the count of its untagged counter.
func applyTags(s Spec) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	t := &nftables.Table{Name: TagTable, Family: nftables.TableFamilyINet}
	var kept uint64
	if old, err := c.ListTableOfFamily(TagTable, nftables.TableFamilyINet); err == nil && old != nil {
		if n, err := countUntagged(c, t); err == nil {
			kept = n
		}
		c.DelTable(t)
	}
	c.AddTable(t)
	if len(s.steered()) == 0 {
		err = instanceTags(c, t, s.Tags, kept)
	} else {
		err = gatewayTags(c, t, s.Tags)
	}
	if err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("installing table inet %s: %w", TagTable, err)
	}
	return nil
}

// gatewayTags tags what the gateway sends into the overlay by the flow's
// tenant address, as the agent decides it: in conntrack's original
// direction the source's tenant, else the destination's; in the reply
// direction the destination's (the flow's first source), else the
// source's. A packet of no tenant leaves with tag 0, which instance hosts
// drop.
func gatewayTags(c *nftables.Conn, t *nftables.Table, tags []TenantTag) error {
	post := c.AddChain(&nftables.Chain{Name: "tag", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(prioTagPost)})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: slices.Concat(oifOverlay(), setMark(0))})
	for _, fam := range []struct {
		proto byte
		key   nftables.SetDatatype
		off   uint32 // of the source address in the network header
		len   uint32
		is4   bool
		name  string
	}{
		{unix.NFPROTO_IPV4, nftables.TypeIPAddr, 12, 4, true, "tags4"},
		{unix.NFPROTO_IPV6, nftables.TypeIP6Addr, 8, 16, false, "tags6"},
	} {
		set := &nftables.Set{Table: t, Name: fam.name, KeyType: fam.key, DataType: nftables.TypeMark, IsMap: true, Interval: true}
		elems, err := intervalElements(tags, fam.is4)
		if err != nil {
			return err
		}
		if err := c.AddSet(set, elems); err != nil {
			return fmt.Errorf("adding map %s: %w", set.Name, err)
		}
		// Per direction, the fallback first: the later rule wins where
		// both addresses are tenants'.
		src, dst := fam.off, fam.off+fam.len
		for _, r := range []struct {
			dir byte
			off uint32
		}{{0, dst}, {0, src}, {1, src}, {1, dst}} {
			dir, off := r.dir, r.off
			c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: slices.Concat(oifOverlay(),
				[]expr.Any{
					&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam.proto}},
					&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{dir}},
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: fam.len},
					&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
					&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
				})})
		}
	}
	return nil
}

// instanceTags: an instance host takes its flows' zones from the tags
// they arrive with, drops what it may not steer, marks what reaches its
// agent with a tag (MarkTag), and tags what it sends on.
func instanceTags(c *nftables.Conn, t *nftables.Table, tags []TenantTag, kept uint64) error {
	set := &nftables.Set{Table: t, Name: "tags", KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian}
	var elems []nftables.SetElement
	for _, tt := range tags {
		elems = append(elems, nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(tt.Tag))})
	}
	if err := c.AddSet(set, elems); err != nil {
		return fmt.Errorf("adding set %s: %w", set.Name, err)
	}
	c.AddObj(&nftables.CounterObj{Table: t, Name: UntaggedCounter, Packets: kept})
	drop := []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: UntaggedCounter}, &expr.Verdict{Kind: expr.VerdictDrop}}

	raw := c.AddChain(&nftables.Chain{Name: "zone", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(prioTagRaw)})
	// A tag that names no tenant (0: none), with the GBP flags cut off.
	c.AddRule(&nftables.Rule{Table: t, Chain: raw, Exprs: slices.Concat(iifOverlay(true), loadMark(0xffff),
		[]expr.Any{&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: true}}, drop)})
	// The tag alone in the mark, and as the flow's zone.
	c.AddRule(&nftables.Rule{Table: t, Chain: raw, Exprs: slices.Concat(iifOverlay(true), loadMark(OrigMask),
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
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: slices.Concat(oifOverlay(),
		[]expr.Any{
			&expr.Ct{Key: expr.CtKeyZONE, Register: 1},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		})})
	return nil
}

// intervalElements are the elements of an interval map from the tenants'
// prefixes of one family to their tags: each prefix's first address
// carries the tag, and the address after its last ends it (unless the next
// prefix starts there, or it is the end of the space).
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
		if !ok || i+1 < len(spans) && spans[i+1].p.Addr() == end {
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
func countUntagged(c *nftables.Conn, t *nftables.Table) (uint64, error) {
	o, err := c.GetObject(&nftables.CounterObj{Table: t, Name: UntaggedCounter})
	if err != nil {
		return 0, err
	}
	if co, ok := o.(*nftables.CounterObj); ok {
		return co.Packets, nil
	}
	return 0, fmt.Errorf("%s is not a counter", UntaggedCounter)
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
	if n, err := countUntagged(c, t); err == nil {
		out = append(out, fmt.Sprintf("tags inet %s counter %s: %d packets", TagTable, UntaggedCounter, n))
	}
	return out, nil
}
