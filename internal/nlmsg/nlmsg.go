package nlmsg

import (
	"encoding/binary"
	"errors"
)

// Sizes and types from linux/netlink.h.
const (
	HeaderLen = 16 // struct nlmsghdr
	AttrLen   = 4  // struct nlattr

	Error = 2 // NLMSG_ERROR
	Done  = 3 // NLMSG_DONE

	FlagRequest = 0x1
	FlagDump    = 0x300 // NLM_F_ROOT | NLM_F_MATCH

	// attrTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER.
	attrTypeMask = 0x3fff
)

// Errors reading messages.
var (
	ErrShortMessage = errors.New("netlink message shorter than its header says")
	ErrShortAttr    = errors.New("netlink attribute shorter than its header says")
)

// Align rounds n up to netlink's 4-byte alignment.
func Align(n int) int { return (n + 3) &^ 3 }

// Next splits the first message off a datagram: its type and flags, its
// body (after the netlink header) and what follows it.
func Next(b []byte) (typ, flags uint16, body, rest []byte, err error) {
	if len(b) < HeaderLen {
		return 0, 0, nil, nil, ErrShortMessage
	}
	n := int(binary.NativeEndian.Uint32(b[0:4]))
	if n < HeaderLen || n > len(b) {
		return 0, 0, nil, nil, ErrShortMessage
	}
	typ = binary.NativeEndian.Uint16(b[4:6])
	flags = binary.NativeEndian.Uint16(b[6:8])
	return typ, flags, b[HeaderLen:n], b[min(Align(n), len(b)):], nil
}

// Attrs reads a run of attributes. Each call of next returns the next
// attribute's type (without the nested and byte-order flags) and value;
// ok is false at the end, and err says the run was cut short.
type Attrs struct{ b []byte }

// NewAttrs returns the attributes in b.
func NewAttrs(b []byte) Attrs { return Attrs{b} }

// Next returns the next attribute.
func (a *Attrs) Next() (typ uint16, v []byte, ok bool, err error) {
	if len(a.b) < AttrLen {
		return 0, nil, false, nil
	}
	n := int(binary.NativeEndian.Uint16(a.b[0:2]))
	if n < AttrLen || n > len(a.b) {
		return 0, nil, false, ErrShortAttr
	}
	typ = binary.NativeEndian.Uint16(a.b[2:4]) & attrTypeMask
	v = a.b[AttrLen:n]
	a.b = a.b[min(Align(n), len(a.b)):]
	return typ, v, true, nil
}

// ForEach calls fn with each attribute in b, in order, until fn returns an
// error or the attributes end; it returns fn's error, or ErrShortAttr for
// a run cut short.
func ForEach(b []byte, fn func(typ uint16, v []byte) error) error {
	a := NewAttrs(b)
	for {
		typ, v, ok, err := a.Next()
		if err != nil || !ok {
			return err
		}
		if err := fn(typ, v); err != nil {
			return err
		}
	}
}

// PutHeader writes a netlink header for a message of n bytes into b.
func PutHeader(b []byte, n int, typ, flags uint16, seq uint32) {
	binary.NativeEndian.PutUint32(b[0:4], uint32(n))
	binary.NativeEndian.PutUint16(b[4:6], typ)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	binary.NativeEndian.PutUint32(b[8:12], seq)
	binary.NativeEndian.PutUint32(b[12:16], 0)
}

// PutAttrHeader writes an attribute header for a value of n bytes into b.
func PutAttrHeader(b []byte, typ uint16, n int) {
	binary.NativeEndian.PutUint16(b[0:2], uint16(AttrLen+n))
	binary.NativeEndian.PutUint16(b[2:4], typ)
}
