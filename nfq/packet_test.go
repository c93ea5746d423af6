package nfq

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/nfsteer/nfsteer/steering"
)

// ip4 builds an IPv4 packet around payload.
func ip4(proto uint8, src, dst string, payload []byte) []byte {
	b := make([]byte, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8], b[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	copy(b[20:], payload)
	return b
}

// ip6 builds an IPv6 packet; ext are (type, header bytes) pairs inserted
// before payload.
func ip6(proto uint8, src, dst string, payload []byte, ext ...[]byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	b[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	next := &b[6]
	for _, e := range ext {
		*next = e[0]
		h := append([]byte{}, e[1:]...)
		b = append(b, h...)
		next = &b[len(b)-len(h)]
	}
	*next = proto
	b = append(b, payload...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

func tcp(sport, dport uint16, flags uint8) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12], b[13] = 5<<4, flags
	return b
}

func udp(sport, dport uint16) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	return b
}

func icmp(typ uint8, id uint16) []byte {
	b := make([]byte, 8)
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	return b
}

func TestParse(t *testing.T) {
	a4, b4 := netip.MustParseAddr("10.10.1.2"), netip.MustParseAddr("10.99.0.2")
	a6, b6 := netip.MustParseAddr("fd00:10::2"), netip.MustParseAddr("fd00:99::2")
	hopByHop := []byte{0, 0, 0, 1, 4, 0, 0, 0, 0} // type 0, then an 8-byte header holding PadN
	destOpts := []byte{60, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	frag6 := []byte{44, 0, 0, 0, 1, 0, 0, 0, 1}

	tests := []struct {
		name    string
		pkt     []byte
		want    Packet
		wantErr error
	}{
		{"IPv4 TCP SYN", ip4(6, "10.10.1.2", "10.99.0.2", tcp(40000, 5201, 0x02)),
			Packet{Flow: steering.Flow{Src: a4, Dst: b4, SrcPort: 40000, DstPort: 5201, Proto: 6}, TCPFlags: 0x02}, nil},
		{"IPv4 UDP", ip4(17, "10.10.1.2", "10.99.0.2", udp(53000, 53)),
			Packet{Flow: steering.Flow{Src: a4, Dst: b4, SrcPort: 53000, DstPort: 53, Proto: 17}}, nil},
		{"IPv4 ICMP echo", ip4(1, "10.10.1.2", "10.99.0.2", icmp(8, 77)),
			Packet{Flow: steering.Flow{Src: a4, Dst: b4, SrcPort: 77, DstPort: 77, Proto: 1}, ICMPType: 8}, nil},
		{"IPv4 ICMP unreachable has no ports", ip4(1, "10.10.1.2", "10.99.0.2", icmp(3, 77)),
			Packet{Flow: steering.Flow{Src: a4, Dst: b4, Proto: 1}, ICMPType: 3}, nil},
		{"IPv4 GRE has no ports", ip4(47, "10.10.1.2", "10.99.0.2", []byte{0, 0, 8, 0}),
			Packet{Flow: steering.Flow{Src: a4, Dst: b4, Proto: 47}}, nil},
		{"IPv4 with options", func() []byte {
			b := ip4(17, "10.10.1.2", "10.99.0.2", append([]byte{1, 1, 1, 0}, udp(1, 2)...))
			b[0] = 0x46
			return b
		}(), Packet{Flow: steering.Flow{Src: a4, Dst: b4, SrcPort: 1, DstPort: 2, Proto: 17}}, nil},
		{"IPv4 with link padding", append(ip4(17, "10.10.1.2", "10.99.0.2", udp(1, 2)), 0, 0, 0, 0),
			Packet{Flow: steering.Flow{Src: a4, Dst: b4, SrcPort: 1, DstPort: 2, Proto: 17}}, nil},
		{"IPv6 TCP", ip6(6, "fd00:10::2", "fd00:99::2", tcp(1, 2, 0x12)),
			Packet{Flow: steering.Flow{Src: a6, Dst: b6, SrcPort: 1, DstPort: 2, Proto: 6}, TCPFlags: 0x12}, nil},
		{"IPv6 UDP after hop-by-hop and dest options", ip6(17, "fd00:10::2", "fd00:99::2", udp(5, 6), hopByHop, destOpts),
			Packet{Flow: steering.Flow{Src: a6, Dst: b6, SrcPort: 5, DstPort: 6, Proto: 17}}, nil},
		{"ICMPv6 echo reply", ip6(58, "fd00:10::2", "fd00:99::2", icmp(129, 9)),
			Packet{Flow: steering.Flow{Src: a6, Dst: b6, SrcPort: 9, DstPort: 9, Proto: 58}, ICMPType: 129}, nil},

		{"empty", nil, Packet{}, ErrTruncated},
		{"version 5", []byte{0x50, 0, 0, 0}, Packet{}, ErrVersion},
		{"IPv4 shorter than a header", ip4(6, "10.10.1.2", "10.99.0.2", nil)[:19], Packet{}, ErrTruncated},
		{"IPv4 IHL below 5", func() []byte { b := ip4(17, "10.10.1.2", "10.99.0.2", udp(1, 2)); b[0] = 0x44; return b }(), Packet{}, ErrHeaderLen},
		{"IPv4 total length below IHL", func() []byte {
			b := ip4(17, "10.10.1.2", "10.99.0.2", udp(1, 2))
			binary.BigEndian.PutUint16(b[2:], 10)
			return b
		}(), Packet{}, ErrTotalLen},
		{"IPv4 total length beyond the buffer", func() []byte {
			b := ip4(17, "10.10.1.2", "10.99.0.2", udp(1, 2))
			binary.BigEndian.PutUint16(b[2:], 900)
			return b
		}(), Packet{}, ErrTruncated},
		{"IPv4 IHL beyond the packet", func() []byte { b := ip4(17, "10.10.1.2", "10.99.0.2", udp(1, 2)); b[0] = 0x4f; return b }(), Packet{}, ErrTotalLen},
		{"IPv4 truncated TCP", ip4(6, "10.10.1.2", "10.99.0.2", tcp(1, 2, 2)[:12]),
			Packet{Flow: steering.Flow{Src: a4, Dst: b4, Proto: 6}}, ErrTruncated},
		{"IPv4 TCP data offset too small", func() []byte {
			h := tcp(1, 2, 2)
			h[12] = 4 << 4
			return ip4(6, "10.10.1.2", "10.99.0.2", h)
		}(), Packet{Flow: steering.Flow{Src: a4, Dst: b4, Proto: 6}}, ErrL4Header},
		{"IPv4 first fragment", func() []byte { b := ip4(17, "10.10.1.2", "10.99.0.2", udp(1, 2)); b[6] = 0x20; return b }(),
			Packet{Flow: steering.Flow{Src: a4, Dst: b4, Proto: 17}}, ErrFragment},
		{"IPv4 later fragment", func() []byte { b := ip4(17, "10.10.1.2", "10.99.0.2", udp(1, 2)); b[7] = 0x10; return b }(),
			Packet{Flow: steering.Flow{Src: a4, Dst: b4, Proto: 17}}, ErrFragment},
		{"IPv6 fragment", ip6(17, "fd00:10::2", "fd00:99::2", udp(1, 2), frag6),
			Packet{Flow: steering.Flow{Src: a6, Dst: b6, Proto: 17}}, ErrFragment},
		{"IPv6 payload length beyond the buffer", func() []byte {
			b := ip6(17, "fd00:10::2", "fd00:99::2", udp(1, 2))
			binary.BigEndian.PutUint16(b[4:], 999)
			return b
		}(), Packet{}, ErrTruncated},
		{"IPv6 extension header beyond the packet", func() []byte {
			b := ip6(17, "fd00:10::2", "fd00:99::2", nil, hopByHop)
			b[41] = 9
			return b
		}(), Packet{Flow: steering.Flow{Src: a6, Dst: b6}}, ErrExtHeaders},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Packet
			err := Parse(tt.pkt, &got)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Parse error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmpopts.IgnoreUnexported(Packet{})); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseLongExtensionChain(t *testing.T) {
	var ext [][]byte
	for i := 0; i < maxExtHeaders+1; i++ {
		ext = append(ext, []byte{60, 0, 0, 1, 4, 0, 0, 0, 0})
	}
	var p Packet
	if err := Parse(ip6(17, "fd00::1", "fd00::2", udp(1, 2), ext...), &p); !errors.Is(err, ErrExtHeaders) {
		t.Errorf("Parse of %d extension headers: got %v, want ErrExtHeaders", len(ext), err)
	}
}

func TestParseAllocatesNothing(t *testing.T) {
	pkt := ip6(17, "fd00:10::2", "fd00:99::2", udp(5, 6))
	var p Packet
	if a := testing.AllocsPerRun(1000, func() { _ = Parse(pkt, &p) }); a != 0 {
		t.Errorf("Parse allocates %v times per packet", a)
	}
}

// FuzzParse feeds arbitrary bytes to the parser. Invariants: no panic; a
// packet it accepts has addresses of the family its version nibble says,
// and ports only for protocols that have them.
func FuzzParse(f *testing.F) {
	f.Add(ip4(6, "10.10.1.2", "10.99.0.2", tcp(40000, 5201, 0x02)))
	f.Add(ip4(1, "10.10.1.2", "10.99.0.2", icmp(8, 1)))
	f.Add(ip6(17, "fd00:10::2", "fd00:99::2", udp(5, 6), []byte{0, 0, 0, 1, 4, 0, 0, 0, 0}))
	f.Add(ip6(58, "fd00:10::2", "fd00:99::2", icmp(128, 1), []byte{51, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}))
	f.Add(ip6(17, "fd00:10::2", "fd00:99::2", udp(1, 2), []byte{44, 0, 0, 0, 1, 0, 0, 0, 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if err := Parse(b, &p); err != nil {
			return
		}
		switch b[0] >> 4 {
		case 4:
			if !p.Src.Is4() || !p.Dst.Is4() {
				t.Fatalf("IPv4 packet parsed to %v", p.Flow)
			}
		case 6:
			if !p.Src.Is6() || !p.Dst.Is6() {
				t.Fatalf("IPv6 packet parsed to %v", p.Flow)
			}
		default:
			t.Fatalf("version %d accepted", b[0]>>4)
		}
		switch p.Proto {
		case ProtoTCP, ProtoUDP, ProtoICMP, ProtoICMPv6, protoDCCP, protoSCTP, protoUDPLit:
		default:
			if p.SrcPort != 0 || p.DstPort != 0 {
				t.Fatalf("protocol %d got ports %d/%d", p.Proto, p.SrcPort, p.DstPort)
			}
		}
		if (p.Proto == ProtoICMP || p.Proto == ProtoICMPv6) && p.SrcPort != p.DstPort {
			t.Fatalf("ICMP ports differ: %d/%d", p.SrcPort, p.DstPort)
		}
		// What a capture of the same packet decodes, it decodes the same.
		for _, k := range []int{len(b) / 2, min(len(b), DefaultCopyRange)} {
			var c Packet
			if err := ParseCapture(b[:k], len(b), &c); err == nil && c != p {
				t.Fatalf("capture of %d bytes of %d: %+v; the whole packet: %+v", k, len(b), c, p)
			}
		}
	})
}

// TestParseCapture: the first bytes of a long packet, as the queue copies
// them, decode as the whole packet does; too few bytes, or a packet
// shorter than its header says, do not.
func TestParseCapture(t *testing.T) {
	payload := append(tcp(40000, 5201, 0x02), make([]byte, 1400)...)
	for _, tc := range []struct {
		name   string
		pkt    []byte
		keep   int
		length int
		want   error
	}{
		{"IPv4, 256 bytes of 1,440", ip4(6, "10.10.1.2", "10.99.0.2", payload), DefaultCopyRange, 1440, nil},
		{"IPv6, 256 bytes of 1,460", ip6(6, "fd00:10::2", "fd00:99::2", payload), DefaultCopyRange, 1460, nil},
		{"IPv4, the TCP header cut", ip4(6, "10.10.1.2", "10.99.0.2", payload), 30, 1440, ErrTruncated},
		// Found by FuzzParse: a capture shorter than the IPv4 header's
		// options used to panic.
		{"IPv4, the capture ends inside the options", func() []byte {
			b := ip4(6, "10.10.1.2", "10.99.0.2", payload)
			b = append(b[:20:20], append([]byte{1, 1, 1, 1, 1, 1, 1, 1}, b[20:]...)...) // 8 bytes of NOP options
			b[0] = 0x47                                                                 // 28-byte header
			binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
			return b
		}(), 24, 1448, ErrTruncated},
		{"IPv4, longer than the packet was", ip4(6, "10.10.1.2", "10.99.0.2", payload), DefaultCopyRange, 1000, ErrTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var whole, got Packet
			if err := Parse(tc.pkt, &whole); err != nil {
				t.Fatal(err)
			}
			pkt := tc.pkt[:tc.length]
			if tc.length > len(tc.pkt) {
				pkt = tc.pkt
			}
			err := ParseCapture(pkt[:min(tc.keep, len(pkt))], tc.length, &got)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseCapture = %v, want %v", err, tc.want)
			}
			if err == nil && got != whole {
				t.Errorf("capture decodes %+v, the whole packet %+v", got, whole)
			}
		})
	}
}
