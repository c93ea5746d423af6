package sessions

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

var protoNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 58: "icmpv6", 132: "sctp"}

// String formats k as "proto/addr:port/addr:port" with the endpoints in key
// order, IPv6 addresses in brackets: "tcp/10.10.1.2:40000/10.99.0.2:5201".
// It is the flow's name in Redis keys and on the command line.
func (k Key) String() string {
	var buf [128]byte // more than the longest: "icmpv6/" and two bracketed IPv6 addresses with ports
	return string(k.AppendTo(buf[:0]))
}

// AppendTo appends k in [Key.String]'s form to b. The mirror names a flow
// for every session it writes: this costs one allocation, the string,
// where concatenating the parts cost five.
func (k Key) AppendTo(b []byte) []byte {
	if p, ok := protoNames[k.Proto]; ok {
		b = append(b, p...)
	} else {
		b = strconv.AppendUint(b, uint64(k.Proto), 10)
	}
	b = append(b, '/')
	b = netip.AddrPortFrom(k.A, k.PA).AppendTo(b)
	b = append(b, '/')
	return netip.AddrPortFrom(k.B, k.PB).AppendTo(b)
}

// ErrBadKey is returned by [ParseKey] for anything that is not a flow key.
var ErrBadKey = errors.New("not a flow key (want proto/addr:port/addr:port)")

// ParseKey parses a key in the form [Key.String] writes; the endpoints may
// come in either order.
func ParseKey(s string) (Key, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 {
		return Key{}, fmt.Errorf("%q: %w", s, ErrBadKey)
	}
	proto, err := ParseProto(parts[0])
	if err != nil {
		return Key{}, fmt.Errorf("%q: %v: %w", s, err, ErrBadKey)
	}
	a, err := netip.ParseAddrPort(parts[1])
	if err != nil {
		return Key{}, fmt.Errorf("%q: %w", s, ErrBadKey)
	}
	b, err := netip.ParseAddrPort(parts[2])
	if err != nil {
		return Key{}, fmt.Errorf("%q: %w", s, ErrBadKey)
	}
	if a.Addr().Zone() != "" || b.Addr().Zone() != "" || a.Addr().Is4() != b.Addr().Is4() {
		return Key{}, fmt.Errorf("%q: endpoints of different families or with zones: %w", s, ErrBadKey)
	}
	k := Key{A: a.Addr(), PA: a.Port(), B: b.Addr(), PB: b.Port(), Proto: proto}
	return k.ordered(), nil
}

// ParseProto returns the IP protocol number named s: a name a Key uses
// (tcp, udp, icmp, icmpv6, sctp, dccp, any case) or a number 0-255.
func ParseProto(s string) (uint8, error) {
	for n, name := range protoNames {
		if strings.EqualFold(name, s) {
			return n, nil
		}
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("unknown protocol %q (want tcp, udp, icmp, icmpv6, sctp, dccp or 0-255)", s)
	}
	return uint8(n), nil
}

func (k Key) ordered() Key {
	if c := k.A.Compare(k.B); c > 0 || c == 0 && k.PA > k.PB {
		k.A, k.B, k.PA, k.PB = k.B, k.A, k.PB, k.PA
	}
	return k
}
