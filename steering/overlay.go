package steering

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
)

// DefaultOverlayPort is the overlay's UDP port when the map gives none
// (IANA's VXLAN port).
const DefaultOverlayPort = 4789

// Overlay carries the service network between nodes in VXLAN, with the
// Group Based Policy extension, which lets every packet carry a tag from
// its sender's packet mark to its receiver's. Every node is a static
// peer: its tunnel endpoint is its address on the service network, so the
// map already names every instance's, and Gateways names the gateways'.
type Overlay struct {
	// VNI is the VXLAN network identifier, 1 to 2^24-1.
	VNI uint32 `yaml:"vni" json:"vni"`
	// Port is the UDP destination port; 0 means DefaultOverlayPort.
	Port uint16 `yaml:"port,omitempty" json:"port,omitempty"`
	// Gateways maps each gateway's node name to its addresses on the
	// service network, at most one per family, as for an instance.
	Gateways map[string]Addresses `yaml:"gateways,omitempty" json:"gateways,omitempty"`
}

// PortOrDefault is the overlay's UDP port.
func (o *Overlay) PortOrDefault() uint16 {
	if o.Port == 0 {
		return DefaultOverlayPort
	}
	return o.Port
}

// OverlayNode is one node on the overlay: a gateway or an instance's host.
type OverlayNode struct {
	Name string
	// ID is its ID: an instance's, or a gateway's (see FirstGatewayID).
	ID uint16
	// Underlay is its tunnel endpoint: its address on the service network
	// in the overlay's family.
	Underlay netip.Addr
	// V4 and V6 are its addresses on the service network: the next hops
	// routes name it by.
	V4, V6 netip.Addr
}

// OverlayNodes returns the map's overlay and every node on it, sorted by
// name, or nil if the map has no overlay.
func (t *Table) OverlayNodes() (*Overlay, []OverlayNode) {
	o := t.m.Overlay
	if o == nil {
		return nil, nil
	}
	var nodes []OverlayNode
	for _, in := range t.instances {
		nodes = append(nodes, OverlayNode{Name: in.Name, ID: in.ID, V4: in.V4, V6: in.V6})
	}
	for _, name := range slices.Sorted(maps.Keys(o.Gateways)) {
		n := OverlayNode{Name: name, ID: t.ids[name]}
		for _, s := range o.Gateways[name] {
			if a, err := netip.ParseAddr(s); err == nil {
				if a = a.Unmap(); a.Is4() {
					n.V4 = a
				} else {
					n.V6 = a
				}
			}
		}
		nodes = append(nodes, n)
	}
	v4 := !slices.ContainsFunc(nodes, func(n OverlayNode) bool { return !n.V4.IsValid() })
	for i := range nodes {
		nodes[i].Underlay = nodes[i].V6
		if v4 {
			nodes[i].Underlay = nodes[i].V4
		}
	}
	slices.SortFunc(nodes, func(a, b OverlayNode) int { return cmp.Compare(a.Name, b.Name) })
	return o, nodes
}

// checkOverlay checks the overlay against the instances (ns, as
// checkServices found them): a valid VNI, gateways named and addressed as
// instances are, no address used twice, one family every node has an
// address in (the tunnels'), and tunnel endpoints whose last 32 bits
// differ (each node's tunnel device takes its MAC from them).
func (m *Map) checkOverlay(v *validator, ns *nodeSet) {
	o := m.Overlay
	if o == nil {
		return
	}
	if o.VNI < 1 || o.VNI > 1<<24-1 {
		v.add("overlay.vni", fmt.Sprintf("%d: want 1 to %d", o.VNI, 1<<24-1))
	}
	if len(o.Gateways) > MaxGateways {
		v.add("overlay.gateways", fmt.Sprintf("%d gateways; at most %d fit in the tag", len(o.Gateways), MaxGateways))
	}
	nodes := slices.Clone(ns.nodes)
	owner := maps.Clone(ns.owner)
	for _, gname := range slices.Sorted(maps.Keys(o.Gateways)) {
		field := "overlay.gateways." + gname
		v.name(field, gname)
		if ns.names[gname] {
			v.add(field, fmt.Sprintf("%q is an instance's name; a gateway is another node", gname))
		}
		byFam := v.nodeAddrs(field, "gateway", o.Gateways[gname], func(afield string, a netip.Addr) {
			if other, dup := owner[a]; dup {
				v.add(afield, fmt.Sprintf("duplicate address %s (also %s)", a, other))
			}
			owner[a] = field
		})
		nodes = append(nodes, checkedNode{field, byFam})
	}
	v4, v6 := true, true
	var no4, no6 string
	for _, n := range nodes {
		if !n.addrs[0].IsValid() && v4 {
			v4, no4 = false, n.field
		}
		if !n.addrs[1].IsValid() && v6 {
			v6, no6 = false, n.field
		}
	}
	if !v4 && !v6 {
		v.add("overlay", fmt.Sprintf("the tunnels need one family every node has an address in: %s has no IPv4 address and %s no IPv6 address", no4, no6))
		return
	}
	endpoint := map[[4]byte]string{}
	for _, n := range nodes {
		a := n.addrs[1]
		if v4 {
			a = n.addrs[0]
		}
		b := a.As16()
		key := [4]byte(b[12:])
		if other, dup := endpoint[key]; dup {
			v.add(n.field, fmt.Sprintf("tunnel endpoint %s ends in the same 32 bits as %s's; each node's tunnel device takes its MAC from them", a, other))
		}
		endpoint[key] = n.field
	}
}
