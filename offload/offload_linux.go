package offload

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/nfsteer/nfsteer/internal/throttle"
	"github.com/nfsteer/nfsteer/rules"
	"golang.org/x/sys/unix"
)

// Path is the flow offload loaded into the kernel. Its methods are safe for
// concurrent use.
type Path struct {
	objs    offloadObjects
	refresh uint64
	hopMask uint32
	ownMark uint32
	log     *slog.Logger

	// liberal is Run's alone: it writes the connections the programs
	// ask for.
	liberal *rules.Liberal
	// made and failed count the connections Run made liberal, and those
	// it could not.
	made, failed atomic.Uint64

	mu sync.Mutex // guards links, gen, again and closed
	// links holds the links of each interface the programs are attached
	// to, by index.
	links  map[int]attached
	gen    uint32
	again  *time.Timer // the second invalidation (see settle)
	closed bool
}

// attached is one interface's links, and whether it is steered (which
// ingress program it has).
type attached struct {
	in, out link.Link
	steered uint32
}

func (a attached) close() error { return errors.Join(a.in.Close(), a.out.Close()) }

// Open loads the programs and their maps, and opens ctnetlink in the
// caller's network namespace; [Path.Sync] attaches the programs, and
// [Path.Run] makes the connections they ask for liberal.
func Open(cfg Config) (*Path, error) {
	cfg.defaults()
	spec, err := loadOffload()
	if err != nil {
		return nil, err
	}
	spec.Maps[offloadMapFlows].MaxEntries = uint32(cfg.Flows)
	spec.Maps[offloadMapConns].MaxEntries = uint32(max(cfg.Flows/4, 1024)) // four directions a connection
	spec.Maps[offloadMapUdpSeen].MaxEntries = uint32(max(cfg.Flows/4, 1024))
	lib, err := rules.NewLiberal()
	if err != nil {
		return nil, err
	}
	p := &Path{refresh: uint64(cfg.Refresh.Nanoseconds()), hopMask: cfg.HopMask, ownMark: cfg.OwnMark, log: cfg.Logger, liberal: lib, links: map[int]attached{}}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		lib.Close()
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("loading the offload's programs needs CAP_BPF and CAP_NET_ADMIN: %w", err)
		}
		return nil, fmt.Errorf("loading the offload's programs: %w", err)
	}
	if err := p.setGen(0); err != nil {
		lib.Close()
		p.objs.Close()
		return nil, err
	}
	return p, nil
}

// askPace is the least time between two batches of Run's updates: the
// connections asked for meanwhile wait for the next batch, so that a burst
// of new connections costs a few wake-ups and system calls, not one each.
// Their packets take the kernel's path until then.
const askPace = 2 * time.Millisecond

// Run makes the connections the programs ask for liberal in conntrack
// (see [rules.Liberal]), in batches, and tells the programs which it did,
// until ctx is done; the programs offload a connection only once it is.
// A connection conntrack does not hold by the addresses on the wire
// (NATed, or in a zone) is marked untracked: the kernel's until it ends.
// Run returns an error only if it cannot read the programs' asks; an
// update that fails is counted ([Stats].Failed) and logged (at most once a
// minute), and the programs ask again a second later.
func (p *Path) Run(ctx context.Context) error {
	rd, err := ringbuf.NewReader(p.objs.Asks)
	if err != nil {
		return fmt.Errorf("reading the offload's asks: %w", err)
	}
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		rd.Close()
		close(closed)
	})
	defer func() {
		if !stop() {
			<-closed
		}
		rd.Close()
	}()
	var rec ringbuf.Record
	asks := make([]ask, 0, rules.LiberalBatch)
	conns := make([]rules.LiberalConn, 0, rules.LiberalBatch)
	held := make([]bool, rules.LiberalBatch)
	pace := time.NewTimer(0)
	defer pace.Stop()
	failures := throttle.Log{Every: failureLogEvery}
	for {
		rd.SetDeadline(time.Time{})
		if err := rd.ReadInto(&rec); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reading the offload's asks: %w", err)
		}
		asks = append(asks[:0], askOf(rec.RawSample))
		rd.SetDeadline(time.Now()) // what else is waiting, without blocking
		for len(asks) < cap(asks) && rd.ReadInto(&rec) == nil {
			asks = append(asks, askOf(rec.RawSample))
		}
		conns = conns[:0]
		for _, a := range asks {
			conns = append(conns, a.conn)
		}
		if err := p.liberal.Set(conns, held); err != nil {
			n := p.failed.Add(uint64(len(asks)))
			if failures.OK(time.Now()) {
				p.log.Warn("cannot make connections liberal in conntrack: they take the kernel's path, and are asked for again a second later", "err", err, "failed_total", n)
			}
		} else {
			for i, a := range asks {
				state := uint32(connUntracked)
				if held[i] {
					state = connLiberal
					p.made.Add(1)
				}
				p.answer(a, state)
			}
		}
		pace.Reset(askPace)
		select {
		case <-ctx.Done():
			return nil
		case <-pace.C:
		}
	}
}

// The states of a connection in the programs' map conns (CONN_*).
const (
	connAsked = iota
	connLiberal
	connUntracked
)

// ask is one of the programs' asks (struct ask): the connection, as the
// programs' map conns keys it and as ctnetlink takes it, and when it was
// asked for.
type ask struct {
	key     offloadConnKey
	conn    rules.LiberalConn
	askedNs uint64
}

// askLen is the length of struct ask: the addresses (IPv6, an IPv4 one
// mapped) and ports as the packet carries them, padding, the time.
const askLen = 48

// askOf decodes an ask as the program wrote it. A record too short for one
// decodes to the zero ask, which no connection has.
func askOf(b []byte) ask {
	var a ask
	if len(b) < askLen {
		return a
	}
	for i := range 4 {
		a.key.Saddr[i] = binary.NativeEndian.Uint32(b[4*i:])
		a.key.Daddr[i] = binary.NativeEndian.Uint32(b[16+4*i:])
	}
	a.key.Sport = binary.NativeEndian.Uint16(b[32:34])
	a.key.Dport = binary.NativeEndian.Uint16(b[34:36])
	a.conn.Src = netip.AddrFrom16([16]byte(b[0:16])).Unmap()
	a.conn.Dst = netip.AddrFrom16([16]byte(b[16:32])).Unmap()
	a.conn.SrcPort = binary.BigEndian.Uint16(b[32:34])
	a.conn.DstPort = binary.BigEndian.Uint16(b[34:36])
	a.askedNs = binary.NativeEndian.Uint64(b[40:48])
	return a
}

// answer tells the programs what became of ask a, if the connection is
// still the one asked about: one that ended and opened again on the same
// addresses since (its SYN cleared the entry, its first packet asked
// anew) is another entry in conntrack, and waits for its own answer.
func (p *Path) answer(a ask, state uint32) {
	var st offloadConnState
	if err := p.objs.Conns.Lookup(&a.key, &st); err != nil || st.AskedNs != a.askedNs || st.State != connAsked {
		return
	}
	st.State = state
	p.objs.Conns.Update(&a.key, &st, ebpf.UpdateExist) // gone meanwhile: nothing to tell
}

// setGen writes the settings with generation gen.
func (p *Path) setGen(gen uint32) error {
	s := offloadSettings{Gen: gen, HopMask: p.hopMask, RefreshNs: p.refresh, OwnMark: p.ownMark}
	if err := p.objs.Config.Update(uint32(0), &s, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("writing the offload's settings: %w", err)
	}
	return nil
}

// Sync attaches the programs to every Ethernet interface of the namespace
// that is up, with steered (by name) those the gateway steers, and
// detaches them from interfaces that are gone or down. With no steered
// interface there is nothing to learn, and it detaches from all. It is
// idempotent, and when everything is in place it only reads: the agent
// calls it periodically, so that an interface created after the start is
// taken too.
func (p *Path) Sync(steered []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return net.ErrClosed
	}
	want := map[int]uint32{}
	if len(steered) > 0 {
		ifs, err := net.Interfaces()
		if err != nil {
			return fmt.Errorf("listing interfaces: %w", err)
		}
		for _, i := range ifs {
			if i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 || len(i.HardwareAddr) != 6 {
				continue
			}
			var s uint32
			if slices.Contains(steered, i.Name) {
				s = 1
			}
			want[i.Index] = s
		}
	}
	var errs []error
	for idx, at := range p.links {
		if s, ok := want[idx]; ok && s == at.steered {
			continue
		}
		// Gone, down, or steered no more (or newly): its learned flows
		// are the LRU's to evict, and fail the ingress check anyway.
		errs = append(errs, at.close())
		delete(p.links, idx)
		if err := p.objs.Ifaces.Delete(uint32(idx)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("forgetting interface %d: %w", idx, err))
		}
	}
	for idx, s := range want {
		if _, ok := p.links[idx]; ok {
			continue // attached as it should be: nothing to write
		}
		// The flag first: a program attached to an interface it does
		// not know leaves its packets alone.
		if err := p.objs.Ifaces.Update(uint32(idx), s, ebpf.UpdateAny); err != nil {
			errs = append(errs, fmt.Errorf("noting interface %d: %w", idx, err))
			continue
		}
		prog := p.objs.OffloadIngress
		if s == 1 {
			prog = p.objs.OffloadIngressSteered
		}
		in, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: prog, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			errs = append(errs, attachError(idx, err))
			continue
		}
		out, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: p.objs.OffloadEgress, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			in.Close()
			errs = append(errs, attachError(idx, err))
			continue
		}
		p.links[idx] = attached{in: in, out: out, steered: s}
	}
	return errors.Join(errs...)
}

func attachError(idx int, err error) error {
	if errors.Is(err, ebpf.ErrNotSupported) {
		err = ErrUnsupported
	}
	return fmt.Errorf("attaching the offload to interface %d: %w", idx, err)
}

// Invalidate sends every offloaded flow back to the kernel's path until it
// is learned again, at its next packet; once more after settle.
func (p *Path) Invalidate() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return net.ErrClosed
	}
	if p.again == nil {
		p.again = time.AfterFunc(settle, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if !p.closed {
				p.gen++
				p.setGen(p.gen) // an error here leaves the first invalidation's
			}
		})
	} else {
		p.again.Reset(settle)
	}
	p.gen++
	return p.setGen(p.gen)
}

// Stats sums the programs' counters over the CPUs.
func (p *Path) Stats() (Stats, error) {
	var s Stats
	for i, to := range []*uint64{&s.Offloaded, &s.Learned, &s.Refreshed, &s.Asked} {
		var per []uint64
		if err := p.objs.Stats.Lookup(uint32(i), &per); err != nil {
			return Stats{}, fmt.Errorf("reading the offload's counters: %w", err)
		}
		for _, n := range per {
			*to += n
		}
	}
	s.Made, s.Failed = p.made.Load(), p.failed.Load()
	return s, nil
}

// monotonic is the time on the programs' clock (bpf_ktime_get_ns), in ns.
func monotonic() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("reading the clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// occupancyBatch is how many flow directions Occupancy reads a system
// call.
const occupancyBatch = 4096

// Occupancy counts what the flow table holds (see [Occupancy]). It reads
// the whole table, occupancyBatch entries a system call, while the
// programs go on changing it, so the counts are close, not exact. The
// kernel's walk of the table is most of its cost: about 40 ms for a full
// table of the default size on the lab's machine (BenchmarkOccupancy). It
// is for a periodic check, not for every scrape.
func (p *Path) Occupancy() (Occupancy, error) {
	p.mu.Lock()
	gen := p.gen
	p.mu.Unlock()
	now, err := monotonic()
	if err != nil {
		return Occupancy{}, err
	}
	o := Occupancy{Capacity: int(p.objs.Flows.MaxEntries())}
	keys := make([]offloadFlowKey, occupancyBatch)
	hops := make([]offloadFlowHop, occupancyBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := p.objs.Flows.BatchLookup(&cursor, keys, hops, nil)
		o.Held += n
		for _, h := range hops[:n] {
			if h.Gen == gen && h.Slow+2*p.refresh >= now {
				o.Live++
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return o, nil // the end of the table
		}
		if err != nil {
			return Occupancy{}, fmt.Errorf("reading the offload's flow table: %w", err)
		}
	}
}

// Close detaches the programs and frees them and their maps; every flow
// takes the kernel's path from then on. It is safe to call twice.
func (p *Path) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.again != nil {
		p.again.Stop()
	}
	var errs []error
	for idx, at := range p.links {
		errs = append(errs, at.close())
		delete(p.links, idx)
	}
	errs = append(errs, p.objs.Close(), p.liberal.Close())
	return errors.Join(errs...)
}
