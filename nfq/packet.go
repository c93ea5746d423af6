package nfq

import (
	"encoding/binary"
	"net/netip"

	"github.com/nfsteer/nfsteer/steering"
)

// IP protocol numbers the parser knows.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
	protoDCCP   = 33
	protoSCTP   = 132
	protoUDPLit = 136
)

// Packet is what the steering decision needs to know of one packet.
type Packet struct {
	steering.Flow
	// TCPFlags holds the TCP flags byte (SYN = 0x02, ACK = 0x10) for TCP.
	TCPFlags uint8
	// ICMPType holds the ICMP or ICMPv6 type.
	ICMPType uint8
	later    Later
}

// Later returns the handle that answers this packet after its handler
// returned Defer.
func (p *Packet) Later() Later { return p.later }

// Opening reports whether p can open a flow: a TCP SYN without ACK, or any
// packet of a protocol without a handshake (UDP, ICMP echo...).
func (p *Packet) Opening() bool {
	if p.Proto == ProtoTCP {
		return p.TCPFlags&0x12 == 0x02
	}
	return true
}

// DefaultCopyRange is how much of a queued packet the kernel copies to the
// agent by default: room for an IPv4 header with options and a TCP header
// with options (120 bytes), or an IPv6 header with a few extension headers.
// Copying the whole packet, up to 64 KB with GSO, costs the kernel a copy
// the decision never reads.
const DefaultCopyRange = 256

// maxExtHeaders bounds the IPv6 extension header walk; real packets carry a
// handful, and a hostile chain must not make the packet path loop.
const maxExtHeaders = 16

// Parse decodes an IPv4 or IPv6 packet (as NFQUEUE delivers it, from the IP
// header on) into p. It never panics and allocates nothing. On error p is
// partly filled and the error is one of the package's sentinels. Fragments
// give ErrFragment: their ports are unknown or apply to one piece only, and
// the kernel's conntrack normally reassembles before the queue anyway.
func Parse(b []byte, p *Packet) error { return ParseCapture(b, len(b), p) }

// ParseCapture is Parse for the first bytes of a packet of length bytes,
// as the queue delivers it with a copy range shorter than the packet: the
// headers the decision needs are in b, the packet's lengths are checked
// against length. length below len(b) is taken as len(b).
func ParseCapture(b []byte, length int, p *Packet) error {
	*p = Packet{}
	if len(b) < 1 {
		return ErrTruncated
	}
	length = max(length, len(b))
	switch b[0] >> 4 {
	case 4:
		return parse4(b, length, p)
	case 6:
		return parse6(b, length, p)
	}
	return ErrVersion
}

func parse4(b []byte, length int, p *Packet) error {
	if len(b) < 20 {
		return ErrTruncated
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 {
		return ErrHeaderLen
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if total == 0 && length > 0xffff {
		total = length // BIG TCP aggregate (the queue has the GSO flag)
	}
	if total < ihl {
		return ErrTotalLen
	}
	if total > length {
		return ErrTruncated
	}
	b = b[:min(total, len(b))] // drop link-layer padding
	p.Src = netip.AddrFrom4([4]byte(b[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	p.Proto = b[9]
	if frag := binary.BigEndian.Uint16(b[6:8]); frag&0x3fff != 0 { // MF or offset
		return ErrFragment
	}
	if ihl > len(b) {
		return ErrTruncated // a capture that ends inside the options
	}
	return parseL4(b[ihl:], p)
}

func parse6(b []byte, length int, p *Packet) error {
	if len(b) < 40 {
		return ErrTruncated
	}
	payload := int(binary.BigEndian.Uint16(b[4:6]))
	if payload == 0 && length > 40+0xffff {
		payload = length - 40 // jumbogram / BIG TCP
	}
	if 40+payload > length {
		return ErrTruncated
	}
	b = b[:min(40+payload, len(b))]
	p.Src = netip.AddrFrom16([16]byte(b[8:24]))
	p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	next, off := b[6], 40
	for i := 0; ; i++ {
		if i == maxExtHeaders {
			return ErrExtHeaders
		}
		var hlen int
		switch next {
		case 0, 43, 60, 135, 139, 140: // hop-by-hop, routing, dest opts, mobility, HIP, shim6
			if off+8 > len(b) {
				return ErrTruncated
			}
			hlen = (int(b[off+1]) + 1) * 8
		case 51: // AH counts in 4-byte units, minus 2
			if off+8 > len(b) {
				return ErrTruncated
			}
			hlen = (int(b[off+1]) + 2) * 4
		case 44: // fragment
			if off+8 > len(b) {
				return ErrTruncated
			}
			p.Proto = b[off]
			return ErrFragment
		default:
			p.Proto = next
			return parseL4(b[off:], p)
		}
		if off+hlen > len(b) {
			return ErrExtHeaders
		}
		next = b[off]
		off += hlen
	}
}

func parseL4(b []byte, p *Packet) error {
	switch p.Proto {
	case ProtoTCP:
		if len(b) < 20 {
			return ErrTruncated
		}
		if doff := int(b[12]>>4) * 4; doff < 20 || doff > len(b) {
			return ErrL4Header
		}
		p.TCPFlags = b[13]
		fallthrough
	case ProtoUDP, protoUDPLit, protoSCTP, protoDCCP:
		if len(b) < 8 {
			return ErrTruncated
		}
		p.SrcPort = binary.BigEndian.Uint16(b[0:2])
		p.DstPort = binary.BigEndian.Uint16(b[2:4])
	case ProtoICMP, ProtoICMPv6:
		if len(b) < 8 {
			return ErrTruncated
		}
		p.ICMPType = b[0]
		if isEcho(p.Proto, p.ICMPType) {
			// Request and reply carry the same identifier: using it as both
			// ports keeps the affinity code symmetric.
			id := binary.BigEndian.Uint16(b[4:6])
			p.SrcPort, p.DstPort = id, id
		}
	}
	return nil
}

func isEcho(proto, typ uint8) bool {
	if proto == ProtoICMP {
		return typ == 8 || typ == 0
	}
	return typ == 128 || typ == 129
}
