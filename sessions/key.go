package sessions

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/nfsteer/nfsteer/steering"
)

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
	b = steering.AppendProto(b, k.Proto)
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
	proto, err := steering.ParseProto(parts[0])
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

func (k Key) ordered() Key {
	if c := k.A.Compare(k.B); c > 0 || c == 0 && k.PA > k.PB {
		k.A, k.B, k.PA, k.PB = k.B, k.A, k.PB, k.PA
	}
	return k
}
