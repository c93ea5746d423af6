package nfq

import (
	"encoding/binary"
	"errors"

	"github.com/nfsteer/nfsteer/internal/nlmsg"
)

// This file reads and writes nfnetlink_queue's messages
// (linux/netfilter/nfnetlink_queue.h) on byte slices, allocating nothing:
// the packet path's half of the protocol. Binding a queue, which happens
// once, goes through the netlink library.

// Message layout.
const (
	nfgenHdrLen = 4 // struct nfgenmsg

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
	verdictLen = nlmsg.HeaderLen + nfgenHdrLen + nlmsg.AttrLen + 8 + nlmsg.AttrLen + 4
)

// errNoPacketID: a packet message without the packet's ID, which cannot
// be answered.
var errNoPacketID = errors.New("queued packet message without a packet header")

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
		return nlmsg.ErrShortMessage
	}
	haveID, haveLen := false, false
	err := nlmsg.ForEach(body[nfgenHdrLen:], func(typ uint16, v []byte) error {
		if typ != attrPayload && len(v) < 4 {
			// Too short for its value: a packet header missing leaves the
			// message without an ID, refused below; a mark or length
			// missing reads as none.
			return nil
		}
		switch typ {
		case attrPacketHdr:
			q.id, haveID = binary.BigEndian.Uint32(v[0:4]), true
		case attrMark:
			q.mark = binary.BigEndian.Uint32(v[0:4])
		case attrPayload:
			q.payload = v
		case attrCapLen:
			q.length, haveLen = int(binary.BigEndian.Uint32(v[0:4])), true
		}
		return nil
	})
	if err != nil {
		return err
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
	nlmsg.PutHeader(m, verdictLen, subsysQueue<<8|msgVerdict, nlmsg.FlagRequest, 0)
	// nfgenmsg: AF_UNSPEC, NFNETLINK_V0, the queue.
	binary.BigEndian.PutUint16(m[18:20], queue)
	a := m[nlmsg.HeaderLen+nfgenHdrLen:]
	nlmsg.PutAttrHeader(a, attrVerdictHdr, 8)
	verdict := uint32(verdictDrop)
	if accept {
		verdict = verdictAccept
	}
	binary.BigEndian.PutUint32(a[4:8], verdict)
	binary.BigEndian.PutUint32(a[8:12], id)
	a = a[nlmsg.AttrLen+8:]
	if !accept {
		// A drop needs no mark: one attribute less.
		binary.NativeEndian.PutUint32(m[0:4], verdictLen-nlmsg.AttrLen-4)
		return b[:len(b)-nlmsg.AttrLen-4]
	}
	nlmsg.PutAttrHeader(a, attrMark, 4)
	binary.BigEndian.PutUint32(a[4:8], mark)
	return b
}
