package rules

import (
	"fmt"
	"net"
	"net/netip"
)

// OverlayDevice is the name of nfsteer's VXLAN device: nfsteer owns it by
// its name, and removing it removes its forwarding and neighbour entries.
const OverlayDevice = "nfsteer0"

// Overlay is a node's part of the service network's overlay: a VXLAN
// device with the Group Based Policy extension, so that a packet's mark
// (its low 16 bits) travels with it to the next node, and with static
// peers only. No learning and no flooding: every peer's tunnel endpoint
// and MAC are written from the map, and a frame for anyone else is
// dropped.
type Overlay struct {
	VNI  uint32
	Port uint16
	// Local is this node's tunnel endpoint, its address on the service
	// network.
	Local netip.Addr
	// V4 is this node's IPv4 address on the service network, if it has
	// one. The device holds it too (as a /32): reverse-path filtering, in
	// any mode, drops whatever arrives on an interface with no IPv4
	// address, and with one its loose mode lets steered packets in.
	V4    netip.Addr
	Peers []Peer
	// Gateway is this node's number as an overlay gateway (see
	// steering.GatewayNumber), 0 on an instance host. A gateway puts it in
	// the tag of a zoned tenant's flows (see [TenantTag]), so that the
	// chain hands them back to it.
	Gateway uint16
}

// Peer is another node on the overlay. Routes on the overlay device name
// it by V4 (its IPv4 address on the service network), as an on-link next
// hop, and by [OverlayLinkLocal] for IPv6: the kernel accepts no IPv6
// on-link next hop that its main table routes through another device.
// Each has a permanent neighbour entry with the peer's MAC.
type Peer struct {
	// Name is its node name (an instance's, for the hops' routes).
	Name string
	// Underlay is its tunnel endpoint.
	Underlay netip.Addr
	V4       netip.Addr
}

// nexthops returns the addresses routes name p by on the overlay device.
func (p Peer) nexthops() []netip.Addr {
	ll := OverlayLinkLocal(p.Underlay)
	if p.V4.IsValid() {
		return []netip.Addr{p.V4, ll}
	}
	return []netip.Addr{ll}
}

// OverlayMAC is the MAC of the overlay device whose tunnel endpoint is
// underlay: locally administered, 02:6e followed by the endpoint's last 32
// bits (the map refuses two endpoints that share them).
func OverlayMAC(underlay netip.Addr) net.HardwareAddr {
	b := underlay.As16()
	return net.HardwareAddr{0x02, 0x6e, b[12], b[13], b[14], b[15]}
}

// OverlayLinkLocal is the IPv6 link-local address of the overlay device
// whose tunnel endpoint is underlay: the modified EUI-64 of its MAC, the
// address the kernel gives the device itself.
func OverlayLinkLocal(underlay netip.Addr) netip.Addr {
	m := OverlayMAC(underlay)
	return netip.AddrFrom16([16]byte{0xfe, 0x80, 8: m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]})
}

// peer returns the peer called name.
func (o *Overlay) peer(name string) (Peer, bool) {
	for _, p := range o.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return Peer{}, false
}

// validate checks what the kernel would refuse, or what would make the
// device useless, before anything is changed.
func (o *Overlay) validate() error {
	if o.VNI < 1 || o.VNI > 1<<24-1 {
		return fmt.Errorf("overlay VNI %d: want 1 to %d", o.VNI, 1<<24-1)
	}
	if o.Port == 0 {
		return fmt.Errorf("overlay port 0")
	}
	if !o.Local.IsValid() {
		return fmt.Errorf("overlay: this node has no tunnel endpoint")
	}
	for _, p := range o.Peers {
		if !p.Underlay.IsValid() || p.Underlay.Is4() != o.Local.Is4() {
			return fmt.Errorf("overlay peer %s: tunnel endpoint %v is not in the family of this node's (%v)", p.Name, p.Underlay, o.Local)
		}
	}
	return nil
}
