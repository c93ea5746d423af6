//go:build linux

package offload

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/rules"
)

// record is struct ask as the program writes it: the addresses as IPv6
// (an IPv4 one mapped), the ports in the packet's byte order, padding,
// then the time of the ask.
func record(src, dst netip.AddrPort, askedNs uint64) []byte {
	b := make([]byte, askLen)
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(b[0:16], s[:])
	copy(b[16:32], d[:])
	binary.BigEndian.PutUint16(b[32:], src.Port())
	binary.BigEndian.PutUint16(b[34:], dst.Port())
	copy(b[36:40], []byte{0xde, 0xad, 0xbe, 0xef}) // padding: ignored
	binary.NativeEndian.PutUint64(b[40:], askedNs)
	return b
}

// TestAskOf decodes asks as the program writes them into the connection
// ctnetlink is given, in its own family, and the key of the programs' map
// conns; a record too short for an ask decodes to the zero ask rather than
// panicking.
func TestAskOf(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name     string
		rec      []byte
		conn     rules.LiberalConn
		askedNs  uint64
		keySport uint16 // the key's source port, as the map holds it
	}{
		{
			"IPv4",
			record(ap("10.20.1.2:44101"), ap("10.99.0.2:5203"), 0x0201),
			rules.LiberalConn{Src: netip.MustParseAddr("10.20.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 44101, DstPort: 5203},
			0x0201, 0x45ac,
		},
		{
			"IPv6",
			record(ap("[fd00:10::2]:44101"), ap("[fd00:99::2]:5203"), 7),
			rules.LiberalConn{Src: netip.MustParseAddr("fd00:10::2"), Dst: netip.MustParseAddr("fd00:99::2"), SrcPort: 44101, DstPort: 5203},
			7, 0x45ac,
		},
		{
			"extreme ports",
			record(ap("1.2.3.4:1"), ap("5.6.7.8:65535"), 1<<64-1),
			rules.LiberalConn{Src: netip.MustParseAddr("1.2.3.4"), Dst: netip.MustParseAddr("5.6.7.8"), SrcPort: 1, DstPort: 65535},
			1<<64 - 1, 0x0100,
		},
		{"short", []byte{1, 2, 3}, rules.LiberalConn{}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := askOf(tc.rec)
			if diff := cmp.Diff(tc.conn, a.conn, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" || a.askedNs != tc.askedNs {
				t.Errorf("askOf: asked at %#x, want %#x; connection (-want +got):\n%s", a.askedNs, tc.askedNs, diff)
			}
			if a.key.Sport != tc.keySport {
				t.Errorf("askOf: key's source port %#04x; want %#04x, as the packet's bytes read on this machine", a.key.Sport, tc.keySport)
			}
			if len(tc.rec) >= askLen {
				s := tc.conn.Src.As16()
				if got := binary.NativeEndian.Uint32(s[12:]); a.key.Saddr[3] != got {
					t.Errorf("askOf: key's source address ends %#x; want %#x", a.key.Saddr[3], got)
				}
			}
		})
	}
}

// FuzzAskOf decodes any record without panicking, and a whole ask's
// connection back into the bytes it came from.
func FuzzAskOf(f *testing.F) {
	f.Add(record(netip.MustParseAddrPort("10.20.1.2:44101"), netip.MustParseAddrPort("10.99.0.2:5203"), 1))
	f.Add(record(netip.MustParseAddrPort("[fd00:10::2]:1"), netip.MustParseAddrPort("[fd00:99::2]:2"), 2))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		a := askOf(b)
		if len(b) < askLen {
			return
		}
		src, dst := netip.AddrPortFrom(a.conn.Src, a.conn.SrcPort), netip.AddrPortFrom(a.conn.Dst, a.conn.DstPort)
		back := record(src, dst, a.askedNs)
		copy(back[36:40], b[36:40])
		if string(back) != string(b[:askLen]) {
			t.Errorf("askOf(%x) = %v → %v, which writes back as %x", b[:askLen], src, dst, back)
		}
	})
}
