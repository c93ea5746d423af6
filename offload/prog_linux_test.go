//go:build linux

package offload

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// What the programs return: tc's verdicts.
const (
	tcActOK       = 0
	tcActRedirect = 7
)

// skbCtx is the head of struct __sk_buff, as far as BPF_PROG_TEST_RUN
// takes it in: the mark, and the interface a packet came in by.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

// Ethernet addresses of the test's packets, and of the hop it learned.
var (
	macIn   = [6]byte{2, 0, 0, 0, 0, 1}
	macGW   = [6]byte{2, 0, 0, 0, 0, 2}
	hopSrc  = [6]byte{2, 0, 0, 0, 0, 3}
	hopDst  = [6]byte{2, 0, 0, 0, 0, 4}
	payload = []byte("nfsteer offload test payload")
)

// packet returns an Ethernet frame of a TCP segment from src to dst with
// flags and a payload, its TTL (hop limit) 64. An IPv4 header has a
// valid checksum.
func packet(src, dst netip.AddrPort, flags byte) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	tcp[12] = 5 << 4
	tcp[13] = flags
	return frame(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, append(tcp, payload...))
}

// datagram is packet for a UDP datagram.
func datagram(src, dst netip.AddrPort) []byte {
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	return frame(src.Addr(), dst.Addr(), unix.IPPROTO_UDP, append(udp, payload...))
}

// frame returns an Ethernet frame of an IP packet from src to dst with
// protocol proto and payload l4.
func frame(src, dst netip.Addr, proto byte, l4 []byte) []byte {
	b := append(append([]byte{}, macGW[:]...), macIn[:]...)
	if src.Is4() {
		b = binary.BigEndian.AppendUint16(b, unix.ETH_P_IP)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		ip[6] = 0x40 // DF
		ip[8] = 64
		ip[9] = proto
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], ^ipSum(ip))
		return append(append(b, ip...), l4...)
	}
	b = binary.BigEndian.AppendUint16(b, unix.ETH_P_IPV6)
	ip := make([]byte, 40)
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
	ip[6] = proto
	ip[7] = 64
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(append(b, ip...), l4...)
}

// ipSum is the ones' complement sum of an IPv4 header, folded: 0xffff
// for a header whose checksum is right.
func ipSum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// keyOf is the programs' key of the flow from src to dst: addresses as
// IPv6 (an IPv4 one mapped) and ports in the packet's bytes, read as the
// machine reads them.
func keyOf(src, dst netip.AddrPort, proto, steered uint8) offloadFlowKey {
	k := offloadFlowKey{Proto: proto, Steered: steered}
	s, d := src.Addr().As16(), dst.Addr().As16()
	for i := range 4 {
		k.Saddr[i] = binary.NativeEndian.Uint32(s[4*i:])
		k.Daddr[i] = binary.NativeEndian.Uint32(d[4*i:])
	}
	var p [4]byte
	binary.BigEndian.PutUint16(p[0:], src.Port())
	binary.BigEndian.PutUint16(p[2:], dst.Port())
	k.Sport, k.Dport = binary.NativeEndian.Uint16(p[0:]), binary.NativeEndian.Uint16(p[2:])
	return k
}

// The test programs' settings: the offload's own mark, and the mask of
// the hop in a packet's mark.
const testOwnMark, testHopMask = 1 << 27, 0xffffff

// openPath loads the programs with the test settings, to run them with
// BPF_PROG_TEST_RUN, and closes them when tb ends; it skips tb unless it
// runs as root (CAP_BPF). It also returns the monotonic clock's time, the
// programs' own, to date a learned hop with.
func openPath(tb testing.TB) (*Path, uint64) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: loads BPF programs")
	}
	p, err := Open(Config{HopMask: testHopMask, OwnMark: testOwnMark})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	now, err := monotonic()
	if err != nil {
		tb.Fatal(err)
	}
	return p, now
}

// TestIngress runs the ingress program of a steered interface on packets
// (BPF_PROG_TEST_RUN) with a learned hop for an IPv4 flow and an IPv6
// one: a packet of either is sent to the hop with its TTL (hop limit) one
// less, a valid IPv4 checksum, the hop's Ethernet addresses and the
// offload's own mark; any other, or one the offload must leave to the
// kernel, is passed on untouched; and after an invalidation, every
// packet is. It needs CAP_BPF (root).
func TestIngress(t *testing.T) {
	p, now := openPath(t)
	const in, out = 1, 1 // lo: an interface of every namespace, for the MTU
	ap := netip.MustParseAddrPort
	v4src, v4dst := ap("10.20.1.2:44101"), ap("10.99.0.2:5203")
	v6src, v6dst := ap("[fd00:10::2]:44101"), ap("[fd00:99::2]:5203")
	hop := offloadFlowHop{InIfindex: in, OutIfindex: out, Src: hopSrc, Dst: hopDst, Slow: now}
	for _, k := range []offloadFlowKey{keyOf(v4src, v4dst, unix.IPPROTO_TCP, 1), keyOf(v6src, v6dst, unix.IPPROTO_TCP, 1), keyOf(v4src, v4dst, unix.IPPROTO_UDP, 1)} {
		if err := p.objs.Flows.Put(&k, &hop); err != nil {
			t.Fatal(err)
		}
	}
	const ack, syn = 0x10, 0x02
	for _, tc := range []struct {
		name     string
		pkt      []byte
		want     uint32 // the verdict
		ttlAfter byte   // of a packet sent on
		before   func() error
	}{
		{"IPv4", packet(v4src, v4dst, ack), tcActRedirect, 63, nil},
		{"IPv6", packet(v6src, v6dst, ack), tcActRedirect, 63, nil},
		{"IPv4, the other way", packet(v4dst, v4src, ack), tcActOK, 0, nil},
		{"UDP over IPv4", datagram(v4src, v4dst), tcActRedirect, 63, nil},
		{"UDP over IPv6: the TCP flow's addresses and ports", datagram(v6src, v6dst), tcActOK, 0, nil},
		{"IPv6 with IPv4-mapped addresses", packet(ap("[::ffff:10.20.1.2]:44101"), ap("[::ffff:10.99.0.2]:5203"), ack), tcActOK, 0, nil},
		{"IPv6, an unknown flow", packet(ap("[fd00:10::3]:44101"), v6dst, ack), tcActOK, 0, nil},
		{"IPv6 SYN", packet(v6src, v6dst, syn), tcActOK, 0, nil},
		{"IPv6 after its SYN: forgotten", packet(v6src, v6dst, ack), tcActOK, 0, nil},
		{"IPv4 still", packet(v4src, v4dst, ack), tcActRedirect, 63, nil},
		{"IPv4 after an invalidation", packet(v4src, v4dst, ack), tcActOK, 0, p.Invalidate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				if err := tc.before(); err != nil {
					t.Fatal(err)
				}
			}
			out := make([]byte, len(tc.pkt)+256)
			var ctxOut [256]byte // struct __sk_buff, whole
			ret, err := p.objs.OffloadIngressSteered.Run(&ebpf.RunOptions{
				Data: tc.pkt, DataOut: out,
				Context: skbCtx{IngressIfindex: in}, ContextOut: &ctxOut,
			})
			if err != nil {
				t.Fatal(err)
			}
			out = out[:len(tc.pkt)]
			if ret != tc.want {
				t.Fatalf("verdict %d; want %d", ret, tc.want)
			}
			want := tc.pkt
			if ret == tcActRedirect {
				want = append([]byte{}, tc.pkt...)
				copy(want[0:6], hopDst[:])
				copy(want[6:12], hopSrc[:])
				if want[12] == 0x08 { // IPv4: the TTL and checksum
					want[14+8] = tc.ttlAfter
					if s := ipSum(out[14:34]); s != 0xffff {
						t.Errorf("the IPv4 header's checksum is wrong after the TTL: sum %#04x", s)
					}
					copy(want[14+10:14+12], out[14+10:14+12])
				} else {
					want[14+7] = tc.ttlAfter
				}
				if mark := binary.NativeEndian.Uint32(ctxOut[8:]); mark&testOwnMark == 0 {
					t.Errorf("mark %#x; want the offload's own bit %#x", mark, testOwnMark)
				}
			}
			if diff := cmp.Diff(want, out); diff != "" {
				t.Errorf("packet (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEgressLearnsUDPAfterSome runs the egress program (BPF_PROG_TEST_RUN)
// on the packets of a UDP flow the agent decided, as the kernel forwards
// them: the offload learns the flow direction only at its
// UDP_LEARN_AFTER-th packet (8), so that a flow of a datagram or two never
// takes a place in the flow table; a TCP connection's, for comparison, is
// learned once conntrack is liberal about it (the agent's answer), and
// not before.
func TestEgressLearnsUDPAfterSome(t *testing.T) {
	p, _ := openPath(t)
	const hop = 0x5
	const in = 1 // lo, steered here
	if err := p.objs.Ifaces.Put(uint32(in), uint32(1)); err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	src, dst := ap("10.20.1.2:40000"), ap("10.99.0.2:53")
	learned := func(proto uint8) bool {
		var h offloadFlowHop
		k := keyOf(src, dst, proto, 1)
		return p.objs.Flows.Lookup(&k, &h) == nil
	}
	egress := func(pkt []byte) {
		t.Helper()
		var ctxOut [256]byte
		if _, err := p.objs.OffloadEgress.Run(&ebpf.RunOptions{
			Data: pkt, Context: skbCtx{Mark: hop, IngressIfindex: in}, ContextOut: &ctxOut,
		}); err != nil {
			t.Fatal(err)
		}
	}
	var got []bool
	for range 9 {
		egress(datagram(src, dst))
		got = append(got, learned(unix.IPPROTO_UDP))
	}
	want := []bool{false, false, false, false, false, false, false, true, true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("UDP flow learned after each of its packets (-want +got):\n%s", diff)
	}
	for range 9 {
		egress(packet(src, dst, 0x10))
	}
	if learned(unix.IPPROTO_TCP) {
		t.Error("a TCP connection on the same addresses and ports was learned without conntrack's liberal answer")
	}
}

// BenchmarkIngress measures what the ingress program costs a packet it
// forwards: a learned flow's, IPv4 and IPv6, the whole program (parse,
// lookup, the out interface's MTU, the header rewrite, the redirect) run
// by BPF_PROG_TEST_RUN, 200 times a call. The packets start with a TTL
// (hop limit) of 255, so that every run takes the forwarding path.
func BenchmarkIngress(b *testing.B) {
	p, now := openPath(b)
	const lo, repeat = 1, 200
	ap := netip.MustParseAddrPort
	hop := offloadFlowHop{InIfindex: lo, OutIfindex: lo, Src: hopSrc, Dst: hopDst, Slow: now}
	for _, f := range []struct {
		name     string
		src, dst netip.AddrPort
	}{
		{"IPv4", ap("10.20.1.2:44101"), ap("10.99.0.2:5203")},
		{"IPv6", ap("[fd00:10::2]:44101"), ap("[fd00:99::2]:5203")},
	} {
		b.Run(f.name, func(b *testing.B) {
			k := keyOf(f.src, f.dst, unix.IPPROTO_TCP, 1)
			if err := p.objs.Flows.Put(&k, &hop); err != nil {
				b.Fatal(err)
			}
			pkt := packet(f.src, f.dst, 0x10)
			if f.src.Addr().Is4() {
				pkt[14+8] = 255
				pkt[14+10], pkt[14+11] = 0, 0
				binary.BigEndian.PutUint16(pkt[14+10:], ^ipSum(pkt[14:34]))
			} else {
				pkt[14+7] = 255
			}
			opts := &ebpf.RunOptions{Data: pkt, Context: skbCtx{IngressIfindex: lo}, Repeat: repeat}
			b.ResetTimer()
			for b.Loop() {
				ret, err := p.objs.OffloadIngressSteered.Run(opts)
				if err != nil {
					b.Fatal(err)
				}
				if ret != tcActRedirect {
					b.Fatalf("verdict %d; want %d: the packet was not forwarded", ret, tcActRedirect)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*repeat), "ns/packet")
		})
	}
}

// TestOccupancy counts a flow table holding live flows (a packet the
// kernel's way just now), idle ones (none for ten refresh intervals) and
// stale ones (learned before an invalidation): all are held, only the
// live ones are live, and after an invalidation none is.
func TestOccupancy(t *testing.T) {
	p, now := openPath(t)
	refresh := uint64(time.Second.Nanoseconds()) // Config's default
	put := func(i int, gen uint32, slow uint64) {
		t.Helper()
		k := keyOf(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 20, 1, byte(i)}), 44101), netip.MustParseAddrPort("10.99.0.2:5203"), unix.IPPROTO_TCP, 1)
		h := offloadFlowHop{InIfindex: 1, OutIfindex: 1, Gen: gen, Slow: slow}
		if err := p.objs.Flows.Put(&k, &h); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		put(i, 0, now)
	}
	for i := 3; i < 5; i++ {
		put(i, 0, now-10*refresh)
	}
	put(5, 7, now) // of another generation
	got, err := p.Occupancy()
	if err != nil {
		t.Fatal(err)
	}
	want := Occupancy{Live: 3, Held: 6, Capacity: 131072}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("occupancy (-want +got):\n%s", diff)
	}
	if err := p.Invalidate(); err != nil {
		t.Fatal(err)
	}
	got, err = p.Occupancy()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Occupancy{Live: 0, Held: 6, Capacity: 131072}); got != want {
		t.Errorf("after an invalidation: occupancy %+v; want %+v", got, want)
	}
}

// BenchmarkOccupancy counts a full flow table of the default size, as the
// agent does every 30 s.
func BenchmarkOccupancy(b *testing.B) {
	p, now := openPath(b)
	n := int(p.objs.Flows.MaxEntries())
	keys := make([]offloadFlowKey, n)
	hops := make([]offloadFlowHop, n)
	for i := range keys {
		keys[i] = keyOf(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 44101), netip.MustParseAddrPort("10.99.0.2:5203"), unix.IPPROTO_TCP, 1)
		hops[i] = offloadFlowHop{InIfindex: 1, OutIfindex: 1, Slow: now}
	}
	if _, err := p.objs.Flows.BatchUpdate(keys, hops, nil); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		o, err := p.Occupancy()
		if err != nil {
			b.Fatal(err)
		}
		if o.Held < n*9/10 {
			b.Fatalf("counted %d of %d", o.Held, n)
		}
	}
}
