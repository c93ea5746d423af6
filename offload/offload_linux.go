package offload

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Path is the flow offload loaded into the kernel. Its methods are safe for
// concurrent use.
type Path struct {
	objs    offloadObjects
	refresh uint64
	hopMask uint32
	ownMark uint32

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

// Open loads the programs and their maps; [Path.Sync] attaches them. It
// checks that the namespace's conntrack is liberal (ErrNotLiberal).
func Open(cfg Config) (*Path, error) {
	cfg.defaults()
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
	if err != nil {
		return nil, fmt.Errorf("reading nf_conntrack_tcp_be_liberal (is conntrack loaded?): %w", err)
	}
	if strings.TrimSpace(string(b)) != "1" {
		return nil, ErrNotLiberal
	}
	spec, err := loadOffload()
	if err != nil {
		return nil, err
	}
	spec.Maps[offloadMapFlows].MaxEntries = uint32(cfg.Flows)
	p := &Path{refresh: uint64(cfg.Refresh.Nanoseconds()), hopMask: cfg.HopMask, ownMark: cfg.OwnMark, links: map[int]attached{}}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("loading the offload's programs needs CAP_BPF and CAP_NET_ADMIN: %w", err)
		}
		return nil, fmt.Errorf("loading the offload's programs: %w", err)
	}
	if err := p.setGen(0); err != nil {
		p.objs.Close()
		return nil, err
	}
	return p, nil
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
	for i, to := range []*uint64{&s.Offloaded, &s.Learned, &s.Refreshed} {
		var per []uint64
		if err := p.objs.Stats.Lookup(uint32(i), &per); err != nil {
			return Stats{}, fmt.Errorf("reading the offload's counters: %w", err)
		}
		for _, n := range per {
			*to += n
		}
	}
	return s, nil
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
	errs = append(errs, p.objs.Close())
	return errors.Join(errs...)
}
