package lab

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Flooder sends one-packet UDP flows from a lab host through one raw
// socket: every datagram from src to dst with its own source port and, past
// 64,512 of them, the next of ports destination ports from dport, so each
// is a new 5-tuple. Its flows continue across calls to Send. It is not
// safe for concurrent use.
type Flooder struct {
	fd    int
	to    unix.SockaddrInet4
	pkt   []byte
	dport uint16
	ports int
	next  int
}

// NewFlooder opens the raw socket in host's namespace. Close it when done.
func (l *Lab) NewFlooder(host string, src, dst netip.Addr, dport uint16, ports int) (*Flooder, error) {
	f := &Flooder{to: unix.SockaddrInet4{Addr: dst.As4()}, pkt: make([]byte, 20+8+8), dport: dport, ports: max(ports, 1)}
	err := l.InNS(host, func() (err error) {
		f.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW) // IP_HDRINCL
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("raw socket in %s: %w", host, err)
	}
	// IPv4: version 4, header 5 words, TTL 64, UDP. The kernel fills in
	// the total length, the ID and the checksum.
	f.pkt[0], f.pkt[8], f.pkt[9] = 0x45, 64, unix.IPPROTO_UDP
	copy(f.pkt[12:16], src.AsSlice())
	copy(f.pkt[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(f.pkt[24:26], 8+8) // UDP length; checksum 0: none
	copy(f.pkt[28:], "nfsteer!")
	return f, nil
}

// Edit replaces the datagram every flow is sent from with what edit makes
// of it, to send malformed flows (a header cut short, fragments). Each
// flow still writes its ports at bytes 20-23, which edit must keep.
func (f *Flooder) Edit(edit func(pkt []byte) []byte) { f.pkt = edit(f.pkt) }

// Send sends n flows at up to rate a second (0: as fast as it goes) and
// returns how many the socket took. A datagram the host's own queue
// refused (ENOBUFS) is not a flow the chain saw, and is not counted.
func (f *Flooder) Send(n, rate int) (int, error) {
	const perPort = 65536 - 1024
	start := time.Now()
	sent := 0
	for i := 0; i < n; i++ {
		if rate > 0 && i%64 == 0 {
			// Paced in bursts of 64: wait for the time the next burst is due.
			if due := start.Add(time.Duration(i) * time.Second / time.Duration(rate)); time.Until(due) > 0 {
				time.Sleep(time.Until(due))
			}
		}
		k := f.next
		f.next++
		binary.BigEndian.PutUint16(f.pkt[20:22], uint16(1024+k%perPort))
		binary.BigEndian.PutUint16(f.pkt[22:24], f.dport+uint16(k/perPort%f.ports))
		if err := unix.Sendto(f.fd, f.pkt, 0, &f.to); err != nil {
			if err == unix.ENOBUFS || err == unix.EAGAIN {
				continue
			}
			return sent, fmt.Errorf("sending flow %d: %w", k, err)
		}
		sent++
	}
	return sent, nil
}

// Close closes the socket. It is safe to call twice.
func (f *Flooder) Close() error {
	if f.fd < 0 {
		return nil
	}
	err := unix.Close(f.fd)
	f.fd = -1
	return err
}
