package nfq

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/internal/nlmsg"
)

// packetMsg builds an NFQNL_MSG_PACKET message as the kernel sends it.
func packetMsg(id, mark uint32, payload []byte, capLen uint32) []byte {
	attr := func(typ uint16, v []byte) []byte {
		a := make([]byte, nlmsg.AttrLen, nlmsg.Align(nlmsg.AttrLen+len(v)))
		binary.NativeEndian.PutUint16(a[0:2], uint16(nlmsg.AttrLen+len(v)))
		binary.NativeEndian.PutUint16(a[2:4], typ)
		a = append(a, v...)
		return a[:nlmsg.Align(len(a))]
	}
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	body := []byte{2, 0, 0x10, 0x68} // nfgenmsg: AF_INET, v0, queue 4200
	body = append(body, attr(attrPacketHdr, append(be32(id), 0x08, 0x00, 1))...)
	if mark != 0 {
		body = append(body, attr(attrMark, be32(mark))...)
	}
	body = append(body, attr(attrPayload, payload)...)
	if capLen != 0 {
		body = append(body, attr(attrCapLen, be32(capLen))...)
	}
	m := make([]byte, nlmsg.HeaderLen, nlmsg.HeaderLen+len(body))
	binary.NativeEndian.PutUint32(m[0:4], uint32(nlmsg.HeaderLen+len(body)))
	binary.NativeEndian.PutUint16(m[4:6], subsysQueue<<8|msgPacket)
	return append(m, body...)
}

// TestParseQueued reads packet messages, several to a datagram, as the
// worker does.
func TestParseQueued(t *testing.T) {
	syn := ip4(6, "10.10.1.2", "10.99.0.2", tcp(40000, 5201, 0x02))
	dgram := append(packetMsg(7, 0x1000000, syn, 0), packetMsg(8, 0, syn[:30], 1500)...)
	var got []queued
	for b := dgram; len(b) > 0; {
		typ, _, body, rest, err := nlmsg.Next(b)
		if err != nil || typ != subsysQueue<<8|msgPacket {
			t.Fatalf("nextMessage = %d, %v", typ, err)
		}
		var q queued
		if err := parseQueued(body, &q); err != nil {
			t.Fatal(err)
		}
		got = append(got, q)
		b = rest
	}
	want := []queued{
		{id: 7, mark: 0x1000000, length: len(syn), payload: syn},
		{id: 8, length: 1500, payload: syn[:30]},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(queued{})); diff != "" {
		t.Errorf("queued packets (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name string
		msg  []byte
		want error
	}{
		{"no packet header", func() []byte {
			m := packetMsg(1, 0, nil, 0)
			return append(m[:nlmsg.HeaderLen+4], m[nlmsg.HeaderLen+4+12:]...)
		}(), errNoPacketID},
		{"an attribute longer than the message", func() []byte {
			m := packetMsg(1, 0, syn, 0)
			binary.NativeEndian.PutUint16(m[nlmsg.HeaderLen+4:], 200)
			return m
		}(), nlmsg.ErrShortAttr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			binary.NativeEndian.PutUint32(tc.msg[0:4], uint32(len(tc.msg)))
			_, _, body, _, err := nlmsg.Next(tc.msg)
			if err == nil {
				err = parseQueued(body, new(queued))
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	_, _, body, _, _ := nlmsg.Next(dgram)
	var q queued
	if n := testing.AllocsPerRun(100, func() { parseQueued(body, &q) }); n != 0 {
		t.Errorf("parseQueued allocates %v times", n)
	}
	if _, _, _, _, err := nlmsg.Next(make([]byte, 10)); !errors.Is(err, nlmsg.ErrShortMessage) {
		t.Errorf("nextMessage of 10 bytes = %v", err)
	}
}

// TestAppendVerdict pins the verdict messages' bytes: several append into
// one buffer, each a whole message the kernel reads on its own.
func TestAppendVerdict(t *testing.T) {
	b := appendVerdict(nil, 4200, 7, true, 0x2003005)
	b = appendVerdict(b, 4200, 8, false, 0)
	type verdict struct {
		Len, Type, Flags uint32
		Queue            uint16
		Verdict, ID      uint32
		Mark             uint32
		HasMark          bool
	}
	var got []verdict
	for len(b) > 0 {
		typ, _, body, rest, err := nlmsg.Next(b)
		if err != nil {
			t.Fatal(err)
		}
		v := verdict{Len: uint32(len(body) + nlmsg.HeaderLen), Type: uint32(typ), Flags: uint32(binary.NativeEndian.Uint16(b[6:8])),
			Queue: binary.BigEndian.Uint16(body[2:4])}
		a := body[nfgenHdrLen:]
		v.Verdict, v.ID = binary.BigEndian.Uint32(a[4:8]), binary.BigEndian.Uint32(a[8:12])
		if len(a) > 12 {
			v.HasMark, v.Mark = true, binary.BigEndian.Uint32(a[16:20])
		}
		got = append(got, v)
		b = rest
	}
	want := []verdict{
		{Len: verdictLen, Type: 3<<8 | 1, Flags: 1, Queue: 4200, Verdict: 1, ID: 7, Mark: 0x2003005, HasMark: true},
		{Len: verdictLen - 8, Type: 3<<8 | 1, Flags: 1, Queue: 4200, Verdict: 0, ID: 8},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	if n := testing.AllocsPerRun(100, func() { b = appendVerdict(b[:0], 1, 1, true, 1) }); n != 0 {
		t.Errorf("appendVerdict allocates %v times into a buffer with room", n)
	}
}

// FuzzParseQueued: whatever a datagram holds, reading it never panics,
// and a packet read from it lies inside it.
func FuzzParseQueued(f *testing.F) {
	syn := ip4(6, "10.10.1.2", "10.99.0.2", tcp(40000, 5201, 0x02))
	f.Add(packetMsg(7, 1, syn, 0))
	f.Add(append(packetMsg(7, 0, syn[:20], 100), packetMsg(9, 3, nil, 0)...))
	f.Add(appendVerdict(nil, 1, 2, true, 3))
	f.Fuzz(func(t *testing.T, b []byte) {
		for len(b) > 0 {
			_, _, body, rest, err := nlmsg.Next(b)
			if err != nil {
				return
			}
			if len(rest) >= len(b) {
				t.Fatalf("no progress: %d bytes left of %d", len(rest), len(b))
			}
			var q queued
			if parseQueued(body, &q) == nil && q.length < len(q.payload) {
				t.Fatalf("length %d below the payload's %d", q.length, len(q.payload))
			}
			b = rest
		}
	})
}
