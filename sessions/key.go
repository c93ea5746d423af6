package sessions

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/nfsteer/nfsteer/steering"
)

// String formats k as "proto/addr:port/addr:port" with the endpoints in key
// order, IPv6 addresses in brackets: "tcp/10.10.1.2:40000/10.99.0.2:5201";
// a tagged key (a flow on an overlay) starts with its tenant's tag:
// "t7/tcp/10.10.1.2:40000/10.99.0.2:5201". It is the flow's name in Redis
// keys and on the command line.
func (k Key) String() string {
	var buf [128]byte // more than the longest: "icmpv6/" and two bracketed IPv6 addresses with ports
	return string(k.AppendTo(buf[:0]))
}

// AppendTo appends k in [Key.String]'s form to b. The mirror names a flow
// for every session it writes: this costs one allocation, the string,
// where concatenating the parts cost five.
func (k Key) AppendTo(b []byte) []byte {
	if k.Tag != 0 {
		b = append(b, 't')
		b = strconv.AppendUint(b, uint64(k.Tag), 10)
		b = append(b, '/')
	}
	b = steering.AppendProto(b, k.Proto)
	b = append(b, '/')
	b = netip.AddrPortFrom(k.A, k.PA).AppendTo(b)
	b = append(b, '/')
	return netip.AddrPortFrom(k.B, k.PB).AppendTo(b)
}

// ErrBadKey is returned by [ParseKey] for anything that is not a flow key.
var ErrBadKey = errors.New("not a flow key (want [tTAG/]proto/addr:port/addr:port)")

// ParseKey parses a key in the form [Key.String] writes; the endpoints may
// come in either order.
func ParseKey(s string) (Key, error) {
	parts := strings.Split(s, "/")
	var tag uint16
	if len(parts) == 4 {
		n, err := strconv.ParseUint(strings.TrimPrefix(parts[0], "t"), 10, 16)
		if !strings.HasPrefix(parts[0], "t") || err != nil || n == 0 || parts[0] != "t"+strconv.FormatUint(n, 10) {
			return Key{}, fmt.Errorf("%q: %q is not a tenant tag: %w", s, parts[0], ErrBadKey)
		}
		tag, parts = uint16(n), parts[1:]
	}
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
	k := Key{A: a.Addr(), PA: a.Port(), B: b.Addr(), PB: b.Port(), Proto: proto, Tag: tag}
	return k.ordered(), nil
}

func (k Key) ordered() Key {
	if c := k.A.Compare(k.B); c > 0 || c == 0 && k.PA > k.PB {
		k.A, k.B, k.PA, k.PB = k.B, k.A, k.PB, k.PA
	}
	return k
}
