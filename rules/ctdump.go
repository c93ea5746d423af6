package rules

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/nfsteer/nfsteer/internal/nlmsg"
	"github.com/nfsteer/nfsteer/steering"
)

// This file reads conntrack dump messages (ctnetlink,
// linux/netfilter/nfnetlink_conntrack.h) in place: Walk streams the table
// through them instead of decoding all of it into values first, which
// for a gateway's 200,000 connections was 100 MB of garbage every walk
// and stalled its packet path (BENCHMARKS.md, session 18).

// TCP connection states in conntrack (enum tcp_conntrack in
// linux/netfilter/nf_conntrack_tcp.h).
const (
	tcpTimeWait = 7
	tcpClose    = 8
)

// ctnetlink layout.
const (
	subsysCtnetlink = 1
	ctMsgNew        = 0 // IPCTNL_MSG_CT_NEW: what a dump returns
	ctMsgGet        = 1 // IPCTNL_MSG_CT_GET

	ctaTupleOrig = 1
	ctaProtoinfo = 4
	ctaMark      = 8
	ctaZone      = 18

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum        = 1
	ctaProtoSrcPort    = 2
	ctaProtoDstPort    = 3
	ctaProtoICMPID     = 4
	ctaProtoICMPType   = 5
	ctaProtoICMPCode   = 6
	ctaProtoICMPv6ID   = 7
	ctaProtoICMPv6Type = 8
	ctaProtoICMPv6Code = 9

	ctaProtoinfoTCP           = 1
	ctaProtoinfoTCPState      = 1
	ctaProtoinfoTCPFlagsOrig  = 4
	ctaProtoinfoTCPFlagsReply = 5

	nfgenLen = 4 // struct nfgenmsg
)

// errNoTuple: a conntrack message without its original tuple.
var errNoTuple = errors.New("conntrack entry without an original tuple")

// ctEntry is what Walk needs of one conntrack entry.
type ctEntry struct {
	// flow is the original direction; ICMP's identifier is in both ports.
	flow               steering.Flow
	mark               uint32
	zone               uint16 // its conntrack zone (a tag, on an overlay's instance host)
	icmp               bool
	icmpType, icmpCode uint8
	tcp                bool
	tcpState           uint8
}

// conn is the entry as Walk reports it.
func (e *ctEntry) conn() Conn {
	return Conn{Flow: e.flow, Mark: e.mark, Zone: e.zone, Closed: e.tcp && (e.tcpState == tcpTimeWait || e.tcpState == tcpClose)}
}

// parseCT reads the body of an IPCTNL_MSG_CT_NEW message into e.
func parseCT(body []byte, e *ctEntry) error {
	*e = ctEntry{}
	if len(body) < nfgenLen {
		return nlmsg.ErrShortMessage
	}
	tuple := false
	err := nlmsg.ForEach(body[nfgenLen:], func(typ uint16, v []byte) error {
		switch typ {
		case ctaTupleOrig:
			tuple = true
			return nlmsg.ForEach(v, func(typ uint16, v []byte) error {
				switch typ {
				case ctaTupleIP:
					return nlmsg.ForEach(v, e.ip)
				case ctaTupleProto:
					return nlmsg.ForEach(v, e.proto)
				}
				return nil
			})
		case ctaMark:
			if len(v) < 4 {
				return nlmsg.ErrShortAttr
			}
			e.mark = binary.BigEndian.Uint32(v)
		case ctaZone:
			if len(v) < 2 {
				return nlmsg.ErrShortAttr
			}
			e.zone = binary.BigEndian.Uint16(v)
		case ctaProtoinfo:
			return nlmsg.ForEach(v, func(typ uint16, v []byte) error {
				if typ != ctaProtoinfoTCP {
					return nil
				}
				return nlmsg.ForEach(v, func(typ uint16, v []byte) error {
					if typ == ctaProtoinfoTCPState && len(v) >= 1 {
						e.tcp, e.tcpState = true, v[0]
					}
					return nil
				})
			})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !tuple {
		return errNoTuple
	}
	return nil
}

// ip reads one attribute of a tuple's addresses.
func (e *ctEntry) ip(typ uint16, v []byte) error {
	var a netip.Addr
	switch typ {
	case ctaIPv4Src, ctaIPv4Dst:
		if len(v) < 4 {
			return nlmsg.ErrShortAttr
		}
		a = netip.AddrFrom4([4]byte(v[:4]))
	case ctaIPv6Src, ctaIPv6Dst:
		if len(v) < 16 {
			return nlmsg.ErrShortAttr
		}
		a = netip.AddrFrom16([16]byte(v[:16]))
	default:
		return nil
	}
	if typ == ctaIPv4Src || typ == ctaIPv6Src {
		e.flow.Src = a
	} else {
		e.flow.Dst = a
	}
	return nil
}

// proto reads one attribute of a tuple's protocol part.
func (e *ctEntry) proto(typ uint16, v []byte) error {
	switch typ {
	case ctaProtoNum, ctaProtoICMPType, ctaProtoICMPCode, ctaProtoICMPv6Type, ctaProtoICMPv6Code:
		if len(v) < 1 {
			return nlmsg.ErrShortAttr
		}
	case ctaProtoSrcPort, ctaProtoDstPort, ctaProtoICMPID, ctaProtoICMPv6ID:
		if len(v) < 2 {
			return nlmsg.ErrShortAttr
		}
	}
	switch typ {
	case ctaProtoNum:
		e.flow.Proto = v[0]
	case ctaProtoSrcPort:
		e.flow.SrcPort = binary.BigEndian.Uint16(v)
	case ctaProtoDstPort:
		e.flow.DstPort = binary.BigEndian.Uint16(v)
	case ctaProtoICMPID, ctaProtoICMPv6ID:
		id := binary.BigEndian.Uint16(v)
		e.flow.SrcPort, e.flow.DstPort, e.icmp = id, id, true
	case ctaProtoICMPType, ctaProtoICMPv6Type:
		e.icmpType, e.icmp = v[0], true
	case ctaProtoICMPCode, ctaProtoICMPv6Code:
		e.icmpCode, e.icmp = v[0], true
	}
	return nil
}

// dumpRequest is the message that asks for the whole table, both
// families.
func dumpRequest(seq uint32) []byte {
	b := make([]byte, nlmsg.HeaderLen+nfgenLen)
	nlmsg.PutHeader(b, len(b), subsysCtnetlink<<8|ctMsgGet, nlmsg.FlagRequest|nlmsg.FlagDump, seq)
	return b // nfgenmsg: AF_UNSPEC, version 0, res_id 0
}
