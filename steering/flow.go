package steering

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Flow is the 5-tuple of one packet as it travels: Src is its sender.
// For ICMP echo both ports hold the echo identifier; for other ICMP
// messages and protocols without ports they are zero.
type Flow struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
}

// protoNames names the IP protocols nfsteer writes by name.
var protoNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 58: "icmpv6", 132: "sctp"}

// AppendProto appends protocol p's name (tcp, udp, icmp, icmpv6, sctp,
// dccp) or, for the others, its number.
func AppendProto(b []byte, p uint8) []byte {
	if name, ok := protoNames[p]; ok {
		return append(b, name...)
	}
	return strconv.AppendUint(b, uint64(p), 10)
}

// ParseProto returns the IP protocol number named s: a name AppendProto
// writes (any case) or a number 0-255.
func ParseProto(s string) (uint8, error) {
	if p, ok := protoByName(s); ok {
		return p, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("unknown protocol %q (want tcp, udp, icmp, icmpv6, sctp, dccp or 0-255)", s)
	}
	return uint8(n), nil
}

func protoByName(s string) (uint8, bool) {
	for n, name := range protoNames {
		if strings.EqualFold(name, s) {
			return n, true
		}
	}
	return 0, false
}

// String writes f in nfsteer's one notation for flows, the source first
// and IPv6 addresses in brackets: "tcp/10.10.1.2:40000/10.99.0.2:5201",
// "udp/[fd00:10::5]:5353/[fd00:99::2]:53". Session keys, trace and every
// command's output use it.
func (f Flow) String() string {
	var buf [128]byte
	b := AppendProto(buf[:0], f.Proto)
	b = append(b, '/')
	b = netip.AddrPortFrom(f.Src, f.SrcPort).AppendTo(b)
	b = append(b, '/')
	return string(netip.AddrPortFrom(f.Dst, f.DstPort).AppendTo(b))
}

// Reversed returns f as its reply travels: the endpoints swapped.
func (f Flow) Reversed() Flow {
	return Flow{Src: f.Dst, Dst: f.Src, SrcPort: f.DstPort, DstPort: f.SrcPort, Proto: f.Proto}
}

// AffinityCode returns the stream affinity code of f: a 32-bit hash that is
// the same for both directions of a flow and on every node, whatever its
// byte order or Go version.
//
// Definition (stable; other implementations must match it): order the two
// endpoints (16-byte address in IPv4-mapped form for IPv4, then big-endian
// port) so the lower one comes first; hash proto, low address, low port,
// high address, high port with 64-bit FNV-1a; pass the result through the
// splitmix64 finalizer and fold it to 32 bits by xoring the two halves.
func AffinityCode(f *Flow) uint32 {
	a, b := f.Src.As16(), f.Dst.As16()
	pa, pb := f.SrcPort, f.DstPort
	if c := compareEndpoint(&a, pa, &b, pb); c > 0 {
		a, b = b, a
		pa, pb = pb, pa
	}
	h := uint64(fnvOffset)
	h = fnvByte(h, f.Proto)
	h = fnvBytes(h, a[:])
	h = fnvByte(fnvByte(h, byte(pa>>8)), byte(pa))
	h = fnvBytes(h, b[:])
	h = fnvByte(fnvByte(h, byte(pb>>8)), byte(pb))
	h = mix64(h)
	return uint32(h) ^ uint32(h>>32)
}

func compareEndpoint(a *[16]byte, pa uint16, b *[16]byte, pb uint16) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	switch {
	case pa < pb:
		return -1
	case pa > pb:
		return 1
	}
	return 0
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvByte(h uint64, c byte) uint64 { return (h ^ uint64(c)) * fnvPrime }

func fnvBytes(h uint64, b []byte) uint64 {
	for _, c := range b {
		h = fnvByte(h, c)
	}
	return h
}

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h = fnvByte(h, s[i])
	}
	return h
}

// mix64 is the splitmix64 finalizer: FNV alone spreads the last bytes
// poorly, and slots are taken from the low bits.
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
