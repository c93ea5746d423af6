//go:build linux

package rules

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/mdlayher/netlink"
	"github.com/nfsteer/nfsteer/internal/nlmsg"
	"golang.org/x/sys/unix"
)

// Netlink's flags, and conntrack's liberal flag.
const (
	nlaFNested = 0x8000 // NLA_F_NESTED
	nlmFAck    = 0x4    // NLM_F_ACK

	tcpFlagBeLiberal = 0x08 // IP_CT_TCP_FLAG_BE_LIBERAL
)

// liberalMsgLen is one update's length: the header, nfgenmsg, the tuple
// (addresses and ports) and the protocol info (both directions' flags).
const liberalMsgLen = nlmsg.HeaderLen + nfgenLen + 52 + 24

// LiberalBatch bounds how many connections [Liberal.Set] updates in one
// system call.
const LiberalBatch = 64

// Liberal makes tracked TCP connections liberal about sequence numbers in
// both directions (conntrack's IP_CT_TCP_FLAG_BE_LIBERAL), as the kernel's
// flowtable does to the connections it offloads: conntrack then accepts
// and follows their packets, their FIN included, though it saw few of
// those before. It changes those connections only; the namespace's
// nf_conntrack_tcp_be_liberal is left alone. It needs CAP_NET_ADMIN in the
// namespace it is opened in, and is not safe for concurrent use.
type Liberal struct {
	c   *netlink.Conn
	raw syscall.RawConn
	out []byte // a batch of updates
	in  []byte // the kernel's answers
	seq uint32
}

// NewLiberal opens ctnetlink in the caller's network namespace.
func NewLiberal() (*Liberal, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("opening ctnetlink: %w", err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("opening ctnetlink: %w", err)
	}
	return &Liberal{c: c, raw: raw, out: make([]byte, 0, LiberalBatch*liberalMsgLen), in: make([]byte, 8192)}, nil
}

// LiberalConn is a TCP connection [Liberal.Set] takes, by the addresses
// and ports of either of its directions (IPv4; conntrack finds the
// connection by either).
type LiberalConn struct {
	Src, Dst         [4]byte
	SrcPort, DstPort uint16
}

// Set makes conns liberal, LiberalBatch at a time, each batch in one
// system call. held[i], for each conns[i] (held is at least as long),
// reports whether conntrack held that connection and made it liberal: one
// it does not hold (gone already, or not by these addresses: NATed, or in
// another zone) is not an error.
func (l *Liberal) Set(conns []LiberalConn, held []bool) error {
	for len(conns) > 0 {
		n := min(len(conns), LiberalBatch)
		if err := l.set(conns[:n], held[:n]); err != nil {
			return err
		}
		conns, held = conns[n:], held[n:]
	}
	return nil
}

// set sends one batch, the last message asking for an ack, and reads the
// answers up to it: ctnetlink handles a batch within the send, so every
// error of the batch is queued before the ack.
func (l *Liberal) set(conns []LiberalConn, held []bool) error {
	b := l.out[:0]
	first := l.seq + 1
	for i, c := range conns {
		l.seq++
		held[i] = true // until conntrack answers otherwise
		var flags uint16 = nlmsg.FlagRequest
		if i == len(conns)-1 {
			flags |= nlmFAck
		}
		b = appendLiberal(b, c, flags, l.seq)
	}
	l.out = b
	last := l.seq
	if err := writeMsgs(l.raw, b); err != nil {
		return fmt.Errorf("updating conntrack: %w", err)
	}
	var errs []error
	if err := readMsgs(l.raw, l.in, func(typ uint16, body []byte) (bool, error) {
		if typ != nlmsg.Error || len(body) < 4+nlmsg.HeaderLen {
			return false, nil
		}
		code := int32(binary.NativeEndian.Uint32(body))
		seq := binary.NativeEndian.Uint32(body[4+8 : 4+12]) // the request's header
		if seq < first || seq > last {
			return false, nil // an earlier batch's, read late
		}
		if code != 0 {
			held[seq-first] = false
			if e := unix.Errno(-code); e != unix.ENOENT {
				errs = append(errs, e)
			}
		}
		return seq == last, nil
	}); err != nil {
		return fmt.Errorf("reading conntrack's answer: %w", err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("making %d connections liberal in conntrack: %w", len(errs), errors.Join(errs...))
	}
	return nil
}

// appendLiberal appends the update that makes c liberal both ways.
func appendLiberal(b []byte, c LiberalConn, flags uint16, seq uint32) []byte {
	start := len(b)
	b = append(b, make([]byte, liberalMsgLen)...)
	m := b[start:]
	nlmsg.PutHeader(m, liberalMsgLen, subsysCtnetlink<<8|ctMsgNew, flags, seq)
	m[16] = unix.AF_INET // nfgenmsg: family, version 0, res_id 0
	a := m[nlmsg.HeaderLen+nfgenLen:]
	nlmsg.PutAttrHeader(a, ctaTupleOrig|nlaFNested, 48)
	nlmsg.PutAttrHeader(a[4:], ctaTupleIP|nlaFNested, 16)
	nlmsg.PutAttrHeader(a[8:], ctaIPv4Src, 4)
	copy(a[12:16], c.Src[:])
	nlmsg.PutAttrHeader(a[16:], ctaIPv4Dst, 4)
	copy(a[20:24], c.Dst[:])
	nlmsg.PutAttrHeader(a[24:], ctaTupleProto|nlaFNested, 24)
	nlmsg.PutAttrHeader(a[28:], ctaProtoNum, 1)
	a[32] = unix.IPPROTO_TCP
	nlmsg.PutAttrHeader(a[36:], ctaProtoSrcPort, 2)
	binary.BigEndian.PutUint16(a[40:], c.SrcPort)
	nlmsg.PutAttrHeader(a[44:], ctaProtoDstPort, 2)
	binary.BigEndian.PutUint16(a[48:], c.DstPort)
	p := a[52:]
	nlmsg.PutAttrHeader(p, ctaProtoinfo|nlaFNested, 20)
	nlmsg.PutAttrHeader(p[4:], ctaProtoinfoTCP|nlaFNested, 16)
	nlmsg.PutAttrHeader(p[8:], ctaProtoinfoTCPFlagsOrig, 2)
	p[12], p[13] = tcpFlagBeLiberal, tcpFlagBeLiberal // struct nf_ct_tcp_flags: flags, mask
	nlmsg.PutAttrHeader(p[16:], ctaProtoinfoTCPFlagsReply, 2)
	p[20], p[21] = tcpFlagBeLiberal, tcpFlagBeLiberal
	return b
}

// Close closes the socket. It is safe to call twice.
func (l *Liberal) Close() error {
	if l.c == nil {
		return nil
	}
	err := l.c.Close()
	l.c = nil
	return err
}
