//go:build linux

package rules

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// applyOverlay makes nfsteer's VXLAN device exactly o: created if
// missing, created again if its VXLAN settings differ (a VNI, port or
// endpoint change cannot be made in place), its MAC set, up, and its
// forwarding and neighbour entries those of o's peers. It only reads when
// everything is in place.
func applyOverlay(o *Overlay) error {
	want := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: OverlayDevice, HardwareAddr: OverlayMAC(o.Local)},
		VxlanId:   int(o.VNI),
		SrcAddr:   net.IP(o.Local.AsSlice()),
		Port:      int(o.Port),
		GBP:       true,
		Learning:  false,
	}
	link, err := overlayLink()
	if err != nil {
		return err
	}
	if link != nil && !sameVxlan(link, want) {
		if err := netlink.LinkDel(link); err != nil {
			return fmt.Errorf("deleting %s to create it again: %w", OverlayDevice, err)
		}
		link = nil
	}
	if link == nil {
		if err := netlink.LinkAdd(want); err != nil {
			return fmt.Errorf("creating %s: %w", OverlayDevice, err)
		}
		if link, err = overlayLink(); err != nil {
			return err
		}
		// Loose reverse-path filtering on the device: a steered packet
		// arrives on it from a source the node routes elsewhere, which
		// strict filtering would drop. The kernel applies the higher of
		// the device's and the host-wide value, so loose wins over both
		// off and strict.
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+OverlayDevice+"/rp_filter", []byte("2"), 0); err != nil {
			return fmt.Errorf("setting %s's rp_filter: %w", OverlayDevice, err)
		}
	}
	attrs := link.Attrs()
	if mtu, err := overlayMTU(o.Local); err != nil {
		return err
	} else if mtu != 0 && attrs.MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("setting %s's MTU to %d: %w", OverlayDevice, mtu, err)
		}
	}
	if attrs.HardwareAddr.String() != want.HardwareAddr.String() {
		if err := netlink.LinkSetHardwareAddr(link, want.HardwareAddr); err != nil {
			return fmt.Errorf("setting %s's MAC: %w", OverlayDevice, err)
		}
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("setting %s up: %w", OverlayDevice, err)
		}
	}
	if err := syncAddress(link, o.V4); err != nil {
		return err
	}
	if err := syncFDB(attrs.Index, o.Peers); err != nil {
		return err
	}
	return syncNeighbours(attrs.Index, o.Peers)
}

// syncAddress makes v4 (if valid), as a /32, the device's only IPv4
// address (see [Overlay.V4]).
func syncAddress(link netlink.Link, v4 netip.Addr) error {
	have, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing %s's addresses: %w", OverlayDevice, err)
	}
	found := false
	for _, a := range have {
		ones, _ := a.Mask.Size()
		if v4.IsValid() && addrOf(a.IP) == v4 && ones == 32 {
			found = true
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("deleting %s's stale address %s: %w", OverlayDevice, a.IPNet, err)
		}
	}
	if found || !v4.IsValid() {
		return nil
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(v4.AsSlice()), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrAdd(link, a); err != nil {
		return fmt.Errorf("adding %s to %s: %w", v4, OverlayDevice, err)
	}
	return nil
}

// overlayMTU is the MTU that fits the overlay's packets in the service
// network without fragments: that of the interface holding the node's
// tunnel endpoint less VXLAN's 50 bytes (70 over IPv6), or 0 if no
// interface holds it (the kernel's default stays).
func overlayMTU(local netip.Addr) (int, error) {
	fam, overhead := netlink.FAMILY_V4, 50
	if local.Is6() {
		fam, overhead = netlink.FAMILY_V6, 70
	}
	addrs, err := netlink.AddrList(nil, fam)
	if err != nil {
		return 0, fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		if addrOf(a.IP) != local {
			continue
		}
		l, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return 0, fmt.Errorf("finding the interface of %s: %w", local, err)
		}
		if l.Attrs().Name == OverlayDevice {
			continue // the device's own copy of the address
		}
		return l.Attrs().MTU - overhead, nil
	}
	return 0, nil
}

// overlayLink returns nfsteer's VXLAN device, or nil if there is none.
func overlayLink() (*netlink.Vxlan, error) {
	l, err := netlink.LinkByName(OverlayDevice)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil, nil
		}
		return nil, fmt.Errorf("finding %s: %w", OverlayDevice, err)
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		return nil, fmt.Errorf("%s is a %s device, not nfsteer's VXLAN device: rename or delete it", OverlayDevice, l.Type())
	}
	return vx, nil
}

func sameVxlan(have, want *netlink.Vxlan) bool {
	return have.VxlanId == want.VxlanId && have.Port == want.Port && have.GBP && !have.Learning &&
		have.SrcAddr.Equal(want.SrcAddr) && have.VtepDevIndex == 0 && (have.Group == nil || have.Group.IsUnspecified())
}

// fdbEntry is a forwarding entry of the VXLAN device: frames to mac go in
// a tunnel to dst.
type fdbEntry struct {
	mac string
	dst netip.Addr
}

// syncFDB makes the device's forwarding entries with a tunnel endpoint
// exactly one per peer. Entries with none (the device's own multicast
// addresses) are not nfsteer's.
func syncFDB(index int, peers []Peer) error {
	have, err := netlink.NeighList(index, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("listing %s's forwarding entries: %w", OverlayDevice, err)
	}
	want := map[fdbEntry]bool{}
	for _, p := range peers {
		want[fdbEntry{OverlayMAC(p.Underlay).String(), p.Underlay}] = true
	}
	found := map[fdbEntry]bool{}
	for _, n := range have {
		if n.IP == nil {
			continue
		}
		e := fdbEntry{n.HardwareAddr.String(), addrOf(n.IP)}
		if want[e] && n.State&unix.NUD_PERMANENT != 0 {
			found[e] = true
			continue
		}
		if err := netlink.NeighDel(&n); err != nil {
			return fmt.Errorf("deleting %s's stale forwarding entry %s dst %s: %w", OverlayDevice, e.mac, e.dst, err)
		}
	}
	for _, p := range peers {
		e := fdbEntry{OverlayMAC(p.Underlay).String(), p.Underlay}
		if found[e] {
			continue
		}
		n := &netlink.Neigh{LinkIndex: index, Family: unix.AF_BRIDGE, State: unix.NUD_PERMANENT, Flags: netlink.NTF_SELF,
			HardwareAddr: OverlayMAC(p.Underlay), IP: net.IP(p.Underlay.AsSlice())}
		if err := netlink.NeighAppend(n); err != nil {
			return fmt.Errorf("adding %s's forwarding entry for %s (%s dst %s): %w", OverlayDevice, p.Name, e.mac, e.dst, err)
		}
	}
	return nil
}

// syncNeighbours makes the device's neighbour entries exactly one
// permanent entry per peer's next hop, with the peer's MAC: no address
// resolution crosses the overlay.
func syncNeighbours(index int, peers []Peer) error {
	want := map[netip.Addr]string{}
	for _, p := range peers {
		for _, a := range p.nexthops() {
			want[a] = OverlayMAC(p.Underlay).String()
		}
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		have, err := netlink.NeighList(index, fam)
		if err != nil {
			return fmt.Errorf("listing %s's neighbours: %w", OverlayDevice, err)
		}
		for _, n := range have {
			if n.State&unix.NUD_PERMANENT == 0 {
				continue // the kernel's (multicast, or resolved): not nfsteer's
			}
			a := addrOf(n.IP)
			if mac, ok := want[a]; ok && mac == n.HardwareAddr.String() {
				delete(want, a)
				continue
			}
			if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("deleting %s's stale neighbour %s: %w", OverlayDevice, a, err)
			}
		}
	}
	for _, a := range slices.SortedFunc(maps.Keys(want), netip.Addr.Compare) {
		mac, _ := net.ParseMAC(want[a])
		fam := netlink.FAMILY_V6
		if a.Is4() {
			fam = netlink.FAMILY_V4
		}
		n := &netlink.Neigh{LinkIndex: index, Family: fam, State: unix.NUD_PERMANENT, IP: net.IP(a.AsSlice()), HardwareAddr: mac}
		if err := netlink.NeighSet(n); err != nil {
			return fmt.Errorf("adding %s's neighbour %s: %w", OverlayDevice, a, err)
		}
	}
	return nil
}

// removeOverlay deletes nfsteer's VXLAN device, and with it its entries.
func removeOverlay() error {
	link, err := overlayLink()
	if err != nil || link == nil {
		return err
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("deleting %s: %w", OverlayDevice, err)
	}
	return nil
}

// showOverlay describes the device and its entries, one per line.
func showOverlay() ([]string, error) {
	link, err := overlayLink()
	if err != nil || link == nil {
		return nil, err
	}
	out := []string{fmt.Sprintf("overlay %s vxlan id %d local %s dstport %d gbp mac %s", OverlayDevice, link.VxlanId, link.SrcAddr, link.Port, link.HardwareAddr)}
	fdb, err := netlink.NeighList(link.Index, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("listing %s's forwarding entries: %w", OverlayDevice, err)
	}
	for _, n := range fdb {
		if n.IP != nil {
			out = append(out, fmt.Sprintf("overlay fdb %s dst %s", n.HardwareAddr, n.IP))
		}
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := netlink.NeighList(link.Index, fam)
		if err != nil {
			return nil, fmt.Errorf("listing %s's neighbours: %w", OverlayDevice, err)
		}
		for _, n := range ns {
			if n.State&unix.NUD_PERMANENT != 0 {
				out = append(out, fmt.Sprintf("overlay neighbour %s lladdr %s", n.IP, n.HardwareAddr))
			}
		}
	}
	return out, nil
}
