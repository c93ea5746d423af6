//go:build linux

package rules

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/internal/nlmsg"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// liberalConnOf is the LiberalConn of a connection.
func liberalConnOf(src, dst netip.AddrPort) LiberalConn {
	return LiberalConn{Src: src.Addr(), Dst: dst.Addr(), SrcPort: src.Port(), DstPort: dst.Port()}
}

// liberalUpdate is what appendLiberal's message says, read back.
type liberalUpdate struct {
	Type, Flags     uint16
	Seq             uint32
	Family          uint8
	Src, Dst        string
	Proto           uint8
	SrcPort         uint16
	DstPort         uint16
	OrigFlags, Mask [2]uint8 // struct nf_ct_tcp_flags, both directions
	ReplyFlags      [2]uint8
}

func readLiberal(t *testing.T, b []byte) (liberalUpdate, []byte) {
	t.Helper()
	typ, flags, body, rest, err := nlmsg.Next(b)
	if err != nil {
		t.Fatal(err)
	}
	u := liberalUpdate{Type: typ, Flags: flags, Seq: binary.NativeEndian.Uint32(b[8:12]), Family: body[0]}
	walk := func(b []byte, fn func(typ uint16, v []byte) error) {
		if err := nlmsg.ForEach(b, fn); err != nil {
			t.Fatal(err)
		}
	}
	walk(body[nfgenLen:], func(typ uint16, v []byte) error {
		switch typ {
		case ctaTupleOrig:
			walk(v, func(typ uint16, v []byte) error {
				switch typ {
				case ctaTupleIP:
					walk(v, func(typ uint16, v []byte) error {
						a, _ := netip.AddrFromSlice(v)
						if typ == ctaIPv4Src || typ == ctaIPv6Src {
							u.Src = a.String()
						} else {
							u.Dst = a.String()
						}
						return nil
					})
				case ctaTupleProto:
					walk(v, func(typ uint16, v []byte) error {
						switch typ {
						case ctaProtoNum:
							u.Proto = v[0]
						case ctaProtoSrcPort:
							u.SrcPort = binary.BigEndian.Uint16(v)
						case ctaProtoDstPort:
							u.DstPort = binary.BigEndian.Uint16(v)
						}
						return nil
					})
				}
				return nil
			})
		case ctaProtoinfo:
			walk(v, func(_ uint16, v []byte) error {
				walk(v, func(typ uint16, v []byte) error {
					switch typ {
					case ctaProtoinfoTCPFlagsOrig:
						u.OrigFlags = [2]uint8{v[0], v[1]}
					case ctaProtoinfoTCPFlagsReply:
						u.ReplyFlags = [2]uint8{v[0], v[1]}
					}
					return nil
				})
				return nil
			})
		}
		return nil
	})
	return u, rest
}

// TestAppendLiberal reads back the updates a batch is made of: each names
// its connection by the tuple given, in its family, asks for the liberal
// flag in both directions and nothing else (no state, no status), and only
// the last asks for an ack.
func TestAppendLiberal(t *testing.T) {
	conns := []LiberalConn{
		liberalConnOf(netip.MustParseAddrPort("10.20.1.2:44101"), netip.MustParseAddrPort("10.99.0.2:5203")),
		liberalConnOf(netip.MustParseAddrPort("[fd00:10::2]:44102"), netip.MustParseAddrPort("[fd00:99::2]:5203")),
		liberalConnOf(netip.MustParseAddrPort("192.168.0.1:65535"), netip.MustParseAddrPort("10.0.0.1:1")),
	}
	var b []byte
	for i, c := range conns {
		flags := uint16(nlmsg.FlagRequest)
		if i == len(conns)-1 {
			flags |= nlmFAck
		}
		b = appendLiberal(b, c, flags, uint32(7+i))
	}
	if want := 2*liberalMsgLen4 + liberalMsgLen6; len(b) != want || cap(b) > LiberalBatch*liberalMsgLen6 {
		t.Fatalf("%d bytes for two IPv4 updates and an IPv6 one; want %d", len(b), want)
	}
	liberal := [2]uint8{tcpFlagBeLiberal, tcpFlagBeLiberal}
	want := []liberalUpdate{
		{Type: subsysCtnetlink<<8 | ctMsgNew, Flags: nlmsg.FlagRequest, Seq: 7, Family: unix.AF_INET, Src: "10.20.1.2", Dst: "10.99.0.2", Proto: 6, SrcPort: 44101, DstPort: 5203, OrigFlags: liberal, ReplyFlags: liberal},
		{Type: subsysCtnetlink<<8 | ctMsgNew, Flags: nlmsg.FlagRequest, Seq: 8, Family: unix.AF_INET6, Src: "fd00:10::2", Dst: "fd00:99::2", Proto: 6, SrcPort: 44102, DstPort: 5203, OrigFlags: liberal, ReplyFlags: liberal},
		{Type: subsysCtnetlink<<8 | ctMsgNew, Flags: nlmsg.FlagRequest | nlmFAck, Seq: 9, Family: unix.AF_INET, Src: "192.168.0.1", Dst: "10.0.0.1", Proto: 6, SrcPort: 65535, DstPort: 1, OrigFlags: liberal, ReplyFlags: liberal},
	}
	var got []liberalUpdate
	for len(b) > 0 {
		var u liberalUpdate
		u, b = readLiberal(t, b)
		got = append(got, u)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("updates read back (-want +got):\n%s", diff)
	}
}

// inNewNetns runs fn on a thread of its own in a new network namespace;
// the thread ends with it. It skips t without the privilege to.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes with the namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		defer close(done)
		fn()
	}()
	if err := <-done; err != nil {
		t.Fatalf("creating a network namespace: %v", err)
	}
}

// TestLiberalSetsTheFlag makes a connection it created in a namespace of
// its own liberal, and reads the flag back from conntrack, in both
// directions, with the connection's state unchanged; a connection
// conntrack does not hold is reported as not held, not as an error. It
// does so for an IPv4 connection and an IPv6 one.
func TestLiberalSetsTheFlag(t *testing.T) {
	for _, tc := range []struct {
		name          string
		src, dst, not string
	}{
		{"IPv4", "10.20.1.2:44101", "10.99.0.2:5203", "10.99.0.3:5203"},
		{"IPv6", "[fd00:10::2]:44101", "[fd00:99::2]:5203", "[fd00:99::3]:5203"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inNewNetns(t, func() {
				src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
				liberalSetsTheFlag(t, src, dst, netip.MustParseAddrPort(tc.not))
			})
		})
	}
}

// liberalSetsTheFlag is TestLiberalSetsTheFlag in the namespace, for the
// connection from src to dst; the one from src to not is never created.
func liberalSetsTheFlag(t *testing.T, src, dst, not netip.AddrPort) {
	c, err := conntrack.Dial(nil)
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	f := conntrack.NewFlow(unix.IPPROTO_TCP, 0, src.Addr(), dst.Addr(), src.Port(), dst.Port(), 120, 0)
	f.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: 3} // ESTABLISHED
	if err := c.Create(f); err != nil {
		t.Errorf("creating a conntrack entry: %v", err)
		return
	}
	l, err := NewLiberal()
	if err != nil {
		t.Error(err)
		return
	}
	defer l.Close()
	// The reply direction's tuple names the same connection.
	held := make([]bool, 2)
	err = l.Set([]LiberalConn{liberalConnOf(dst, src), liberalConnOf(src, not)}, held)
	if diff := cmp.Diff([]bool{true, false}, held); diff != "" || err != nil {
		t.Errorf("Set = %v; held (-want +got):\n%s\nwant nil, and the connection conntrack does not hold not held", err, diff)
	}
	got, err := c.Get(f)
	if err != nil {
		t.Errorf("reading the entry back: %v", err)
		return
	}
	if got.ProtoInfo.TCP == nil {
		t.Error("the entry read back has no TCP protocol info")
		return
	}
	tcp := got.ProtoInfo.TCP
	// struct nf_ct_tcp_flags, big-endian in ti-mo's uint16: flags, then the mask.
	if tcp.OriginalFlags>>8&tcpFlagBeLiberal == 0 || tcp.ReplyFlags>>8&tcpFlagBeLiberal == 0 || tcp.State != 3 {
		t.Errorf("entry after Set: flags %#04x / %#04x, state %d; want the liberal flag (%#x) both ways, state 3", tcp.OriginalFlags, tcp.ReplyFlags, tcp.State, tcpFlagBeLiberal)
	}
	if err := l.Set(nil, nil); err != nil {
		t.Errorf("Set(nil) = %v", err)
	}
	if err := errors.Join(l.Close(), l.Close()); err != nil {
		t.Errorf("Close twice = %v", err)
	}
}
