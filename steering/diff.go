package steering

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Change is one difference between two maps, as `nfsteer map diff` prints
// it.
type Change struct {
	// Op is "add", "remove" or "change".
	Op string `json:"op"`
	// Kind is "tenant", "service", "instance", "slots" or "overlay".
	Kind string `json:"kind"`
	Name string `json:"name,omitempty"`
	// Field, From and To say what changed for Op "change".
	Field string `json:"field,omitempty"`
	From  string `json:"from,omitempty"`
	To    string `json:"to,omitempty"`
}

func (c Change) String() string {
	sign := map[string]string{"add": "+", "remove": "-", "change": "~"}[c.Op]
	from, to := cmp.Or(c.From, "none"), cmp.Or(c.To, "none") // a field unset, such as a tenant's tag
	if c.Op == "change" && c.Name == "" {
		return fmt.Sprintf("%s %s: %s -> %s", sign, c.Field, from, to)
	}
	if c.Op == "change" {
		return fmt.Sprintf("%s %s %s %s: %s -> %s", sign, c.Kind, c.Name, c.Field, from, to)
	}
	return fmt.Sprintf("%s %s %s", sign, c.Kind, c.Name)
}

// Diff lists what turns map a into map b, sorted by kind and name. Either
// may be nil (an empty map).
func Diff(a, b *Map) []Change {
	if a == nil {
		a = &Map{}
	}
	if b == nil {
		b = &Map{}
	}
	var out []Change
	if a.SlotCount() != b.SlotCount() {
		out = append(out, Change{Op: "change", Kind: "slots", Field: "slots", From: fmt.Sprint(a.SlotCount()), To: fmt.Sprint(b.SlotCount())})
	}
	if oa, ob := overlayString(a.Overlay), overlayString(b.Overlay); oa != ob {
		out = append(out, Change{Op: "change", Kind: "overlay", Field: "overlay", From: oa, To: ob})
	}
	for _, name := range unionKeys(a.Services, b.Services) {
		sa, sb := a.Services[name], b.Services[name]
		switch {
		case sa == nil:
			out = append(out, Change{Op: "add", Kind: "service", Name: name})
		case sb == nil:
			out = append(out, Change{Op: "remove", Kind: "service", Name: name})
		case sa.FunctionName() != sb.FunctionName():
			out = append(out, Change{Op: "change", Kind: "service", Name: name, Field: "function", From: sa.FunctionName(), To: sb.FunctionName()})
		}
	}
	ia, ib := instanceAddrs(a), instanceAddrs(b)
	for _, name := range unionKeys(ia, ib) {
		xa, inA := ia[name]
		xb, inB := ib[name]
		switch {
		case !inA:
			out = append(out, Change{Op: "add", Kind: "instance", Name: name, To: xb})
		case !inB:
			out = append(out, Change{Op: "remove", Kind: "instance", Name: name, From: xa})
		case xa != xb:
			out = append(out, Change{Op: "change", Kind: "instance", Name: name, Field: "service/addresses", From: xa, To: xb})
		}
	}
	for _, name := range unionKeys(a.Tenants, b.Tenants) {
		ta, tb := a.Tenants[name], b.Tenants[name]
		switch {
		case ta == nil:
			out = append(out, Change{Op: "add", Kind: "tenant", Name: name})
		case tb == nil:
			out = append(out, Change{Op: "remove", Kind: "tenant", Name: name})
		default:
			for _, f := range []struct {
				field    string
				from, to string
			}{
				{"ingress", list(ta.Ingress), list(tb.Ingress)},
				{"prefixes", list(ta.Prefixes), list(tb.Prefixes)},
				{"chain", list(ta.Chain), list(tb.Chain)},
				{"allow", allows(ta.Allow), allows(tb.Allow)},
				{"tag", tagOf(ta.Tag), tagOf(tb.Tag)},
				{"snat", ta.SNAT, tb.SNAT},
				{"via", ta.Via, tb.Via},
			} {
				if f.from != f.to {
					out = append(out, Change{Op: "change", Kind: "tenant", Name: name, Field: f.field, From: f.from, To: f.to})
				}
			}
		}
	}
	return out
}

// instanceAddrs describes each instance as "service address,address".
func instanceAddrs(m *Map) map[string]string {
	out := map[string]string{}
	for sname, svc := range m.Services {
		if svc == nil {
			continue
		}
		for name, addrs := range svc.Instances {
			out[name] = sname + " " + strings.Join(addrs, ",")
		}
	}
	return out
}

func list(s []string) string { return "[" + strings.Join(s, " ") + "]" }

// tagOf writes a tenant's tag, "" for none.
func tagOf(tag uint16) string {
	if tag == 0 {
		return ""
	}
	return strconv.Itoa(int(tag))
}

// allows writes rules as the map file does: "[{proto: tcp, dst:
// 10.99.0.0/24, ports: [443]}]".
func allows(rules []Allow) string {
	parts := make([]string, len(rules))
	for i, r := range rules {
		var fields []string
		if r.Proto != "" {
			fields = append(fields, "proto: "+r.Proto)
		}
		if r.Dst != "" {
			fields = append(fields, "dst: "+r.Dst)
		}
		if len(r.Ports) > 0 {
			fields = append(fields, "ports: ["+strings.Join(r.Ports, ", ")+"]")
		}
		parts[i] = "{" + strings.Join(fields, ", ") + "}"
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func unionKeys[V any](a, b map[string]V) []string {
	var out []string
	for k := range a {
		out = append(out, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// overlayString describes an overlay in one line for a diff ("none" when
// there is none).
func overlayString(o *Overlay) string {
	if o == nil {
		return "none"
	}
	var gws []string
	for _, name := range unionKeys(o.Gateways, nil) {
		gws = append(gws, name+"="+strings.Join(o.Gateways[name], ","))
	}
	return fmt.Sprintf("vni %d port %d gateways [%s]", o.VNI, o.PortOrDefault(), strings.Join(gws, " "))
}
