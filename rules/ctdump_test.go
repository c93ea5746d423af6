package rules

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/internal/nlmsg"
	"github.com/nfsteer/nfsteer/steering"
)

// attr builds one netlink attribute; nested ones carry NLA_F_NESTED, as
// the kernel sends them.
func attr(typ uint16, v ...[]byte) []byte {
	var val []byte
	for _, p := range v {
		val = append(val, p...)
	}
	b := make([]byte, nlmsg.AttrLen, nlmsg.Align(nlmsg.AttrLen+len(val)))
	nlmsg.PutAttrHeader(b, typ, len(val))
	b = append(b, val...)
	return b[:nlmsg.Align(len(b))]
}

func nested(typ uint16, v ...[]byte) []byte { return attr(typ|0x8000, v...) }
func be16(v uint16) []byte                  { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte                  { return binary.BigEndian.AppendUint32(nil, v) }

// ctMessage builds a conntrack dump message (IPCTNL_MSG_CT_NEW) of attrs.
func ctMessage(attrs ...[]byte) []byte {
	body := []byte{2, 0, 0, 0}
	for _, a := range attrs {
		body = append(body, a...)
	}
	m := make([]byte, nlmsg.HeaderLen, nlmsg.HeaderLen+len(body))
	nlmsg.PutHeader(m, nlmsg.HeaderLen+len(body), subsysCtnetlink<<8|ctMsgNew, 2, 1)
	return append(m, body...)
}

func tcpEntry(state uint8, mark uint32, extra ...[]byte) []byte {
	src, dst := netip.MustParseAddr("10.10.1.2").As4(), netip.MustParseAddr("10.99.0.2").As4()
	return ctMessage(
		nested(ctaTupleOrig,
			nested(ctaTupleIP, attr(ctaIPv4Src, src[:]), attr(ctaIPv4Dst, dst[:])),
			nested(ctaTupleProto, attr(ctaProtoNum, []byte{6}), attr(ctaProtoSrcPort, be16(40000)), attr(ctaProtoDstPort, be16(5201)))),
		nested(2, // CTA_TUPLE_REPLY, skipped
			nested(ctaTupleIP, attr(ctaIPv4Src, dst[:]), attr(ctaIPv4Dst, src[:]))),
		attr(3, be32(0x8)), // CTA_STATUS, skipped
		nested(ctaProtoinfo, nested(ctaProtoinfoTCP, attr(ctaProtoinfoTCPState, []byte{state}))),
		slices.Concat(append([][]byte{attr(ctaMark, be32(mark))}, extra...)...),
	)
}

func TestParseCT(t *testing.T) {
	icmp6 := func() []byte {
		src, dst := netip.MustParseAddr("fd00:10::2").As16(), netip.MustParseAddr("fd00:99::2").As16()
		return ctMessage(nested(ctaTupleOrig,
			nested(ctaTupleIP, attr(ctaIPv6Src, src[:]), attr(ctaIPv6Dst, dst[:])),
			nested(ctaTupleProto, attr(ctaProtoNum, []byte{58}), attr(ctaProtoICMPv6ID, be16(77)),
				attr(ctaProtoICMPv6Type, []byte{128}), attr(ctaProtoICMPv6Code, []byte{0}))))
	}
	for _, tc := range []struct {
		name string
		msg  []byte
		want ctEntry
		conn Conn
	}{
		{
			name: "TCP established, marked",
			msg:  tcpEntry(3, 0x2003005),
			want: ctEntry{flow: steering.Flow{Src: netip.MustParseAddr("10.10.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 40000, DstPort: 5201, Proto: 6},
				mark: 0x2003005, tcp: true, tcpState: 3},
		},
		{
			name: "TCP in TIME_WAIT: closed",
			msg:  tcpEntry(tcpTimeWait, 0),
			want: ctEntry{flow: steering.Flow{Src: netip.MustParseAddr("10.10.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 40000, DstPort: 5201, Proto: 6},
				tcp: true, tcpState: tcpTimeWait},
		},
		{
			name: "TCP in a conntrack zone (an overlay's tag)",
			msg:  tcpEntry(3, 0x2003005, attr(ctaZone, be16(7))),
			want: ctEntry{flow: steering.Flow{Src: netip.MustParseAddr("10.10.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 40000, DstPort: 5201, Proto: 6},
				mark: 0x2003005, zone: 7, tcp: true, tcpState: 3},
		},
		{
			name: "ICMPv6 echo: the identifier in both ports",
			msg:  icmp6(),
			want: ctEntry{flow: steering.Flow{Src: netip.MustParseAddr("fd00:10::2"), Dst: netip.MustParseAddr("fd00:99::2"), SrcPort: 77, DstPort: 77, Proto: 58},
				icmp: true, icmpType: 128},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, body, _, err := nlmsg.Next(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			var got ctEntry
			if err := parseCT(body, &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(ctEntry{}), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("entry (-want +got):\n%s", diff)
			}
			if c := got.conn(); c.Closed != (tc.want.tcpState == tcpTimeWait) || c.Mark != tc.want.mark || c.Zone != tc.want.zone {
				t.Errorf("conn %+v", c)
			}
		})
	}
	if err := parseCT(ctMessage(attr(ctaMark, be32(1)))[nlmsg.HeaderLen:], new(ctEntry)); err != errNoTuple {
		t.Errorf("an entry without a tuple: %v, want errNoTuple", err)
	}
	msg := tcpEntry(3, 1)
	_, _, body, _, _ := nlmsg.Next(msg)
	var e ctEntry
	if n := testing.AllocsPerRun(100, func() { parseCT(body, &e) }); n != 0 {
		t.Errorf("parseCT allocates %v times", n)
	}
}

// FuzzParseCT: whatever a dump message holds, reading it never panics.
func FuzzParseCT(f *testing.F) {
	f.Add(tcpEntry(3, 0x2003005)[nlmsg.HeaderLen:])
	f.Add(ctMessage(nested(ctaTupleOrig, nested(ctaTupleIP, attr(ctaIPv4Src, []byte{1, 2})))))
	f.Fuzz(func(t *testing.T, body []byte) {
		var e ctEntry
		_ = parseCT(body, &e)
	})
}
