package nfq

import (
	"encoding/binary"
	"errors"
)

// This file reads and writes nfnetlink_queue's messages
// (linux/netfilter/nfnetlink_queue.h) on byte slices, allocating nothing:
// the packet path's half of the protocol. Binding a queue, which happens
// once, goes through the netlink library.

// Message layout.
const (
	nlmsgHdrLen = 16 // struct nlmsghdr
	nfgenHdrLen = 4  // struct nfgenmsg
	nlaHdrLen   = 4  // struct nlattr

	nlmsgError  = 2 // NLMSG_ERROR
	nlmFRequest = 1

	subsysQueue = 3 // NFNL_SUBSYS_QUEUE
	msgPacket   = 0 // NFQNL_MSG_PACKET
	msgVerdict  = 1 // NFQNL_MSG_VERDICT
	msgConfig   = 2 // NFQNL_MSG_CONFIG

	attrPacketHdr  = 1  // NFQA_PACKET_HDR: be32 id, be16 hw protocol, u8 hook
	attrVerdictHdr = 2  // NFQA_VERDICT_HDR: be32 verdict, be32 id
	attrMark       = 3  // NFQA_MARK: be32
	attrPayload    = 10 // NFQA_PAYLOAD
	attrCapLen     = 13 // NFQA_CAP_LEN: be32, the packet's length when the payload is cut

	cfgCmd      = 1 // NFQA_CFG_CMD: u8 command, u8 pad, be16 pf
	cfgParams   = 2 // NFQA_CFG_PARAMS: be32 copy range, u8 copy mode
	cfgQueueLen = 3 // NFQA_CFG_QUEUE_MAXLEN: be32
	cfgMask     = 4 // NFQA_CFG_MASK: be32
	cfgFlags    = 5 // NFQA_CFG_FLAGS: be32

	cmdBind    = 1 // NFQNL_CFG_CMD_BIND
	copyPacket = 2 // NFQNL_COPY_PACKET

	verdictDrop   = 0 // NF_DROP
	verdictAccept = 1 // NF_ACCEPT

	// verdictLen is the length of one verdict message with a mark.
	verdictLen = nlmsgHdrLen + nfgenHdrLen + nlaHdrLen + 8 + nlaHdrLen + 4
)

// Errors reading the kernel's messages.
var (
	errShortMessage = errors.New("netlink message shorter than its header says")
	errShortAttr    = errors.New("netlink attribute shorter than its header says")
	errNoPacketID   = errors.New("queued packet message without a packet header")
)

func align4(n int) int { return (n + 3) &^ 3 }

// nextMessage splits the first netlink message off a datagram: its type,
// its body (after the netlink header) and what follows it.
func nextMessage(b []byte) (typ uint16, body, rest []byte, err error) {
	if len(b) < nlmsgHdrLen {
		return 0, nil, nil, errShortMessage
	}
	n := int(binary.NativeEndian.Uint32(b[0:4]))
	if n < nlmsgHdrLen || n > len(b) {
		return 0, nil, nil, errShortMessage
	}
	typ = binary.NativeEndian.Uint16(b[4:6])
	return typ, b[nlmsgHdrLen:n], b[min(align4(n), len(b)):], nil
}

// queued is one packet the kernel queued, as its message says. payload
// aliases the datagram it was read from.
type queued struct {
	id, mark uint32
	// length is the packet's length; more than len(payload) when the
	// kernel copied only the copy range.
	length  int
	payload []byte
}

// parseQueued reads the body of an NFQNL_MSG_PACKET message into q.
func parseQueued(body []byte, q *queued) error {
	*q = queued{}
	if len(body) < nfgenHdrLen {
		return errShortMessage
	}
	b := body[nfgenHdrLen:]
	haveID, haveLen := false, false
	for len(b) >= nlaHdrLen {
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & 0x3fff // without NLA_F_NESTED, NLA_F_NET_BYTEORDER
		if n < nlaHdrLen || n > len(b) {
			return errShortAttr
		}
		v := b[nlaHdrLen:n]
		switch typ {
		case attrPacketHdr:
			if len(v) < 4 {
				return errShortAttr
			}
			q.id, haveID = binary.BigEndian.Uint32(v[0:4]), true
		case attrMark:
			if len(v) < 4 {
				return errShortAttr
			}
			q.mark = binary.BigEndian.Uint32(v[0:4])
		case attrPayload:
			q.payload = v
		case attrCapLen:
			if len(v) < 4 {
				return errShortAttr
			}
			q.length, haveLen = int(binary.BigEndian.Uint32(v[0:4])), true
		}
		b = b[min(align4(n), len(b)):]
	}
	if !haveID {
		return errNoPacketID
	}
	if !haveLen || q.length < len(q.payload) {
		q.length = len(q.payload)
	}
	return nil
}

// appendVerdict appends to b the message that gives packet id of queue
// its verdict and, with accept, its mark.
func appendVerdict(b []byte, queue uint16, id uint32, accept bool, mark uint32) []byte {
	n := len(b)
	b = append(b, make([]byte, verdictLen)...)
	m := b[n:]
	binary.NativeEndian.PutUint32(m[0:4], verdictLen)
	binary.NativeEndian.PutUint16(m[4:6], subsysQueue<<8|msgVerdict)
	binary.NativeEndian.PutUint16(m[6:8], nlmFRequest)
	// seq and pid 0; nfgenmsg: AF_UNSPEC, NFNETLINK_V0, the queue.
	binary.BigEndian.PutUint16(m[18:20], queue)
	a := m[nlmsgHdrLen+nfgenHdrLen:]
	binary.NativeEndian.PutUint16(a[0:2], nlaHdrLen+8)
	binary.NativeEndian.PutUint16(a[2:4], attrVerdictHdr)
	verdict := uint32(verdictDrop)
	if accept {
		verdict = verdictAccept
	}
	binary.BigEndian.PutUint32(a[4:8], verdict)
	binary.BigEndian.PutUint32(a[8:12], id)
	a = a[nlaHdrLen+8:]
	if !accept {
		// A drop needs no mark: one attribute less.
		binary.NativeEndian.PutUint32(m[0:4], verdictLen-nlaHdrLen-4)
		return b[:len(b)-nlaHdrLen-4]
	}
	binary.NativeEndian.PutUint16(a[0:2], nlaHdrLen+4)
	binary.NativeEndian.PutUint16(a[2:4], attrMark)
	binary.BigEndian.PutUint32(a[4:8], mark)
	return b
}
