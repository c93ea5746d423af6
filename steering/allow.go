package steering

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Allow is one of a tenant's firewall rules as the operator writes it: a
// protocol, a destination prefix and, for TCP and UDP, destination ports
// ("443" or "8000-8100"). Empty fields match anything. The firewall
// function admits a new flow when any of the tenant's rules matches its
// opening packet.
type Allow struct {
	Proto string   `yaml:"proto,omitempty" json:"proto,omitempty"`
	Dst   string   `yaml:"dst,omitempty" json:"dst,omitempty"`
	Ports []string `yaml:"ports,omitempty" json:"ports,omitempty"`
}

// AllowRule is a compiled [Allow].
type AllowRule struct {
	Proto uint8 // 0: any
	Dst   netip.Prefix
	// Ports holds inclusive ranges; empty matches every port.
	Ports [][2]uint16
}

// ParseAllow decodes one allow rule written as in a map file (a YAML
// mapping such as {proto: tcp, dst: 10.99.0.0/24, ports: ["443"]}) as
// strictly as [Parse] decodes the file: an unknown key, a value of the
// wrong type or anything after the rule is an error wrapping
// [ErrInvalidMap]. Every way into the map reads rules the same way, so a
// typo cannot widen a firewall. The rule's values are validated with the
// map it joins, which names the tenant in its errors.
func ParseAllow(s string) (Allow, error) {
	dec := yaml.NewDecoder(strings.NewReader(s))
	dec.KnownFields(true)
	var a Allow
	if err := dec.Decode(&a); err != nil {
		if errors.Is(err, io.EOF) {
			return Allow{}, fmt.Errorf("%w: the rule is empty", ErrInvalidMap)
		}
		return Allow{}, fmt.Errorf("%w: %v", ErrInvalidMap, yamlError(err))
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return Allow{}, fmt.Errorf("%w: more than one rule", ErrInvalidMap)
	}
	return a, nil
}

// compileAllow checks one rule; field names it in errors.
func compileAllow(v *validator, field string, a Allow) AllowRule {
	var r AllowRule
	if a.Proto != "" && a.Proto != "any" {
		p, ok := protoByName(a.Proto)
		if !ok {
			v.add(field+".proto", fmt.Sprintf("unknown protocol %q (known: any, tcp, udp, icmp, icmpv6, sctp, dccp)", a.Proto))
		}
		r.Proto = p
	}
	if a.Dst != "" {
		p, err := netip.ParsePrefix(a.Dst)
		switch {
		case err != nil:
			v.add(field+".dst", fmt.Sprintf("%q is not a CIDR prefix", a.Dst))
		case p != p.Masked():
			v.add(field+".dst", fmt.Sprintf("%s has host bits set (did you mean %s?)", p, p.Masked()))
		default:
			r.Dst = p
		}
	}
	if len(a.Ports) > 0 && r.Proto != 6 && r.Proto != 17 && r.Proto != 132 {
		v.add(field+".ports", "ports need proto tcp, udp or sctp")
	}
	for i, s := range a.Ports {
		lo, hi, ok := parsePortRange(s)
		if !ok {
			v.add(fmt.Sprintf("%s.ports[%d]", field, i), fmt.Sprintf("%q is not a port (1-65535) or a range lo-hi", s))
			continue
		}
		r.Ports = append(r.Ports, [2]uint16{lo, hi})
	}
	return r
}

func parsePortRange(s string) (lo, hi uint16, ok bool) {
	a, b, isRange := strings.Cut(s, "-")
	if !isRange {
		b = a
	}
	x, err1 := strconv.ParseUint(a, 10, 16)
	y, err2 := strconv.ParseUint(b, 10, 16)
	if err1 != nil || err2 != nil || x == 0 || y < x {
		return 0, 0, false
	}
	return uint16(x), uint16(y), true
}

// Match reports whether the rule admits f, a flow in its original
// direction.
func (r *AllowRule) Match(f *Flow) bool {
	if r.Proto != 0 && r.Proto != f.Proto {
		return false
	}
	if r.Dst.IsValid() && !r.Dst.Contains(f.Dst.Unmap()) {
		return false
	}
	if len(r.Ports) == 0 {
		return true
	}
	for _, p := range r.Ports {
		if f.DstPort >= p[0] && f.DstPort <= p[1] {
			return true
		}
	}
	return false
}

// Permit returns the index of the first of tenant's rules that admits f,
// or -1. It allocates nothing.
func (t *Table) Permit(tenant int, f *Flow) int {
	for i := range t.tenants[tenant].Allow {
		if t.tenants[tenant].Allow[i].Match(f) {
			return i
		}
	}
	return -1
}
