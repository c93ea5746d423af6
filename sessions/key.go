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
	p, ok := protoNames[k.Proto]
	if !ok {
		p = strconv.Itoa(int(k.Proto))
	}
	return p + "/" + netip.AddrPortFrom(k.A, k.PA).String() + "/" + netip.AddrPortFrom(k.B, k.PB).String()
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
	var proto uint8
	found := false
	for n, name := range protoNames {
		if strings.EqualFold(name, parts[0]) {
			proto, found = n, true
		}
	}
	if !found {
		n, err := strconv.ParseUint(parts[0], 10, 8)
		if err != nil {
			return Key{}, fmt.Errorf("%q: unknown protocol %q: %w", s, parts[0], ErrBadKey)
		}
		proto = uint8(n)
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

func (k Key) ordered() Key {
	if c := k.A.Compare(k.B); c > 0 || c == 0 && k.PA > k.PB {
		k.A, k.B, k.PA, k.PB = k.B, k.A, k.PB, k.PA
	}
	return k
}
