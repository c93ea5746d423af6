package steering

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Trace is the path a flow would take through its tenant's chain, in both
// directions, as [Table.Decide] would steer it on every node with no pins:
// what `nfsteer trace` prints. It sends nothing.
type Trace struct {
	Flow string `json:"flow"`
	// Ingress is the gateway interface the flow was traced entering by
	// (none: the tenant is told by the source prefix alone).
	Ingress string `json:"ingress,omitempty"`
	// Spoofed, when set, says why a gateway drops the flow's packets
	// where they enter (see [Table.TenantAt]): then nothing else applies.
	Spoofed string `json:"spoofed,omitempty"`
	// Shared, when set, lists the zoned tenants whose prefixes hold the
	// source (see [TenantInfo.Zoned]) when no ingress was given to tell
	// them apart: then nothing else applies.
	Shared  []string `json:"shared,omitempty"`
	Tenant  string   `json:"tenant,omitempty"`
	Code    uint32   `json:"code"`
	Slot    uint32   `json:"slot"`
	Version uint64   `json:"version"`
	// Forward is the path of the flow's first packet; Reply that of its
	// answer. Each ends with the hop whose node routes the packet normally.
	Forward []TraceHop `json:"forward"`
	Reply   []TraceHop `json:"reply"`
	// Verdict is what the chain's firewalls would do with the opening
	// packet: "pass" when there is no firewall.
	Verdict string `json:"verdict"`
}

// TraceHop is one node's decision.
type TraceHop struct {
	// Node is who decides: "gateway" or an instance name.
	Node string `json:"node"`
	// Decision is a Kind's name: "steer" sends the packet to Instance.
	Decision string `json:"decision"`
	Hop      int    `json:"hop"`
	Service  string `json:"service,omitempty"`
	Instance string `json:"instance,omitempty"`
	ID       uint16 `json:"id,omitempty"`
	Address  string `json:"address,omitempty"`
	// Secondary holds the slot's secondary role: who takes the flow over
	// if Instance dies.
	Secondary string `json:"secondary,omitempty"`
	// Skipped lists, best first, the instances that rank above Instance
	// for the slot but hold no role, each with why: "fw-1 (down)".
	Skipped []string `json:"skipped,omitempty"`
	// Fallback says every instance of Service is out, so Instance was
	// chosen among out-of-service instances (see [ServiceInfo.Fallback]).
	Fallback bool `json:"fallback,omitempty"`
}

// Trace computes f's path from a gateway (where the tenant's traffic
// enters) along the chain and back.
func (t *Table) Trace(f Flow) Trace { return t.TraceFrom(f, "") }

// TraceFrom is Trace for a flow whose first packet enters the gateway on
// interface ingress ("": wherever its tenant's traffic enters): where the
// map binds tenants to interfaces, the packet may be dropped there as
// spoofed (Trace.Spoofed).
func (t *Table) TraceFrom(f Flow, ingress string) Trace {
	tr := Trace{Flow: f.String(), Ingress: ingress, Version: t.version, Verdict: "pass"}
	ti := t.TenantOf(f.Src)
	if ingress != "" {
		var err error
		if ti, err = t.TenantAt(ingress, f.Src); err != nil {
			tr.Spoofed = err.Error()
			return tr
		}
	} else if ti < 0 {
		for i := range t.tenants {
			if tn := &t.tenants[i]; t.TenantByName(tn.Name) == i && tn.Zoned() && tn.holds(f.Src) {
				tr.Shared = append(tr.Shared, tn.Name)
				ti = i
			}
		}
		switch len(tr.Shared) {
		case 0:
		case 1:
			tr.Shared = nil
		default:
			return tr
		}
	}
	if ti >= 0 {
		tr.Tenant = t.tenants[ti].Name
		if t.FirstFirewall(ti) >= 0 {
			if r := t.Permit(ti, &f); r < 0 {
				tr.Verdict = "drop: no allow rule of the tenant matches the opening packet"
			} else {
				tr.Verdict = fmt.Sprintf("allow: rule %d", r)
			}
		}
	}
	tr.Code = AffinityCode(&f)
	tr.Slot = t.SlotOf(tr.Code)
	back := Flow{Src: f.Dst, Dst: f.Src, SrcPort: f.DstPort, DstPort: f.SrcPort, Proto: f.Proto}
	tr.Forward = t.walk(&f, false, ti)
	tr.Reply = t.walk(&back, true, ti)
	return tr
}

// holds reports whether a is in the tenant's prefixes.
func (ti *TenantInfo) holds(a netip.Addr) bool {
	a = a.Unmap()
	return slices.ContainsFunc(ti.Prefixes, func(p netip.Prefix) bool { return p.Contains(a) })
}

// walk follows Decide from the gateway until a node routes normally (a
// zoned tenant's, DecideTagged for tenant). A chain has at most MaxChain
// services, so the loop ends; the bound guards against a table that would
// send a flow in circles.
func (t *Table) walk(f *Flow, reply bool, tenant int) []TraceHop {
	var out []TraceHop
	n, name := Node{Instance: -1}, "gateway"
	for range MaxChain + 1 {
		var d Decision
		if tenant >= 0 && t.tenants[tenant].Zoned() {
			d = t.DecideTagged(n, f, tenant, reply, nil)
		} else {
			d = t.Decide(n, f, reply, nil)
		}
		h := TraceHop{Node: name, Decision: d.Kind.String(), Hop: d.Hop}
		if d.Kind != Steer {
			h.Hop = -1
			out = append(out, h)
			return out
		}
		in := d.Instance
		h.Service = t.services[in.Service].Name
		h.Instance, h.ID = in.Name, in.ID
		if a, ok := in.Addr(f.Dst.Unmap().Is4()); ok {
			h.Address = a.String()
		}
		if _, s := t.RolesFor(in.Service, d.Slot); s != nil {
			h.Secondary = s.Name
		}
		h.Skipped = t.skippedFor(in, d.Slot)
		h.Fallback = t.services[in.Service].Fallback()
		out = append(out, h)
		n, name = t.NodeFor(in.Name), in.Name
	}
	return out
}

// skippedFor lists the instances of in's service that outrank in for slot
// (by the rendezvous weight roles are assigned by) but are down or drained.
func (t *Table) skippedFor(in *Instance, slot uint32) []string {
	s := &t.services[in.Service]
	names := make([]string, len(s.Instances))
	for k, ii := range s.Instances {
		names[k] = t.instances[ii].Name
	}
	var mine uint64
	type ranked struct {
		w  uint64
		in *Instance
	}
	var above []ranked
	for k, ii := range s.Instances {
		w := weight(instanceBase(s.Name, names[k]), slot)
		if &t.instances[ii] == in {
			mine = w
			continue
		}
		above = append(above, ranked{w, &t.instances[ii]})
	}
	slices.SortFunc(above, func(a, b ranked) int { return cmp.Compare(b.w, a.w) })
	var out []string
	for _, r := range above {
		if r.w < mine {
			break
		}
		if r.in.Out() {
			out = append(out, r.in.Name+" ("+r.in.State()+")")
		}
	}
	return out
}

// TenantAt returns the tenant a gateway takes a packet from src entering
// on interface iface for (-1: none), as its anti-spoofing rules decide it
// (see [Tenant.Ingress]): the tenant bound to iface, if src is in its
// prefixes; the tenant whose prefixes hold src, if that tenant is bound
// to no interface. Otherwise the packet is dropped where it enters, and
// the error, wrapping [ErrSpoofed], says why. It walks every tenant: it is
// for tools, not the packet path, where the kernel's rules decide.
func (t *Table) TenantAt(iface string, src netip.Addr) (int, error) {
	for i := range t.tenants {
		tn := &t.tenants[i]
		if t.TenantByName(tn.Name) != i || !slices.Contains(tn.Ingress, iface) {
			continue
		}
		if !tn.holds(src) {
			return -1, fmt.Errorf("%w: %s enters by %s, tenant %s's interface, from outside its prefixes", ErrSpoofed, src, iface, tn.Name)
		}
		return i, nil
	}
	ti := t.TenantOf(src)
	if ti < 0 {
		// A zoned tenant's address (which TenantOf does not look up).
		ti = slices.IndexFunc(t.tenants, func(tn TenantInfo) bool { return tn.Zoned() && tn.holds(src) && t.TenantByName(tn.Name) >= 0 })
	}
	if ti >= 0 && len(t.tenants[ti].Ingress) > 0 {
		return -1, fmt.Errorf("%w: %s is tenant %s's, which enters by %s, not %s", ErrSpoofed, src, t.tenants[ti].Name, strings.Join(t.tenants[ti].Ingress, ", "), iface)
	}
	return ti, nil
}
