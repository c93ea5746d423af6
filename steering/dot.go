package steering

import (
	"fmt"
	"io"
	"strings"
)

// WriteDot draws t as a Graphviz digraph: each tenant points along its
// chain of services, each service to its instances, labelled with how many
// slots the instance holds as primary and as secondary. Down instances are
// red, drained ones dashed, unhealthy ones orange.
func (t *Table) WriteDot(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "digraph nfsteer {\n  rankdir=LR;\n  label=\"nfsteer map version %d, %d slots\";\n", t.version, t.slots)
	b.WriteString("  node [fontname=\"Helvetica\"];\n")
	for _, ti := range t.LiveTenants() {
		fmt.Fprintf(&b, "  %q [shape=box, style=filled, fillcolor=lightblue, label=%q];\n", "tenant:"+ti.Name, ti.Name+"\n"+prefixList(ti))
		prev := "tenant:" + ti.Name
		for pos, svc := range ti.Chain {
			node := "service:" + t.services[svc].Name
			fmt.Fprintf(&b, "  %q -> %q [label=\"%s %d\"];\n", prev, node, ti.Name, pos+1)
			prev = node
		}
	}
	for _, s := range t.services {
		fmt.Fprintf(&b, "  %q [shape=ellipse, label=%q];\n", "service:"+s.Name, s.Name+"\n("+s.Function+")")
		primary := make(map[int]int)
		secondary := make(map[int]int)
		for slot := range t.slots {
			r := s.Roles[slot]
			if r.Primary != NoInstance {
				primary[int(r.Primary)]++
			}
			if r.Secondary != NoInstance {
				secondary[int(r.Secondary)]++
			}
		}
		for k, ii := range s.Instances {
			in := &t.instances[ii]
			style, state := "", ""
			switch {
			case in.Down:
				style = ", color=red, fontcolor=red"
			case in.Drained:
				style = ", style=dashed"
			case in.Unhealthy:
				style = ", color=orange, fontcolor=orange"
			}
			if in.Out() {
				state = " " + in.State()
			}
			fmt.Fprintf(&b, "  %q [shape=component, label=\"%s\\nid %d%s\"%s];\n", "instance:"+in.Name, in.Name, in.ID, state, style)
			fmt.Fprintf(&b, "  %q -> %q [label=\"primary %d, secondary %d\"%s];\n", "service:"+s.Name, "instance:"+in.Name, primary[k], secondary[k], style)
		}
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func prefixList(ti TenantInfo) string {
	parts := make([]string, len(ti.Prefixes))
	for i, p := range ti.Prefixes {
		parts[i] = p.String()
	}
	return strings.Join(parts, "\n")
}
