package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nfsteer/nfsteer/internal/throttle"
	"github.com/nfsteer/nfsteer/offload"
	"github.com/nfsteer/nfsteer/store"
)

// Offload is a gateway's flow offload (package offload) as the agent drives
// it: *offload.Path in production, a fake in unit tests.
type Offload interface {
	// Sync attaches the offload to the node's interfaces, with steered
	// those the gateway steers; with none it detaches.
	Sync(steered []string) error
	// Invalidate sends every offloaded flow back to the kernel's path
	// until the offload learns it again.
	Invalidate() error
	// Run does the offload's own work while ctx lasts: making the
	// connections it is about to offload liberal in conntrack.
	Run(ctx context.Context) error
	// Stats reads its counters.
	Stats() (offload.Stats, error)
	// Occupancy counts what its flow table holds: a read of the whole
	// table.
	Occupancy() (offload.Occupancy, error)
	// Close detaches it for good, after Run returned.
	Close() error
}

var _ Offload = (*offload.Path)(nil)

// offloadSync is how often the agent attaches the offload to interfaces
// created since it last looked.
const offloadSync = 2 * time.Second

// openOffload opens a gateway's offload if the configuration asks for
// one, and attaches it. If it cannot open, or the kernel cannot attach it
// (offload.ErrUnsupported), a gateway that requires it
// (Config.OffloadRequired) does not start, and one that does not logs why
// and steers without it, every packet on the kernel's path. An instance
// host never runs it, whatever it is configured with: its packets must
// cross the service it hosts.
func (a *Agent) openOffload() error {
	if a.cfg.OpenOffload == nil {
		return nil
	}
	if st := a.state.Load(); st.role != Gateway {
		a.log.Info("no offload: it is for gateways", "role", st.role.String())
		return nil
	}
	without := func(err error) error {
		if a.cfg.OffloadRequired {
			return err
		}
		a.log.Warn("steering without the offload: every packet takes the kernel's path", "err", err)
		a.offloadUnavailable = true
		return nil
	}
	o, err := a.cfg.OpenOffload(a.log)
	if err != nil {
		return without(fmt.Errorf("opening the offload: %w", err))
	}
	if err := o.Sync(a.offloadInterfaces()); errors.Is(err, offload.ErrUnsupported) {
		return without(errors.Join(fmt.Errorf("attaching the offload: %w", err), o.Close()))
	}
	a.offload = o
	return nil
}

// runOffload keeps the offload attached to a gateway's interfaces while
// ctx lasts, and detaches it on the way out. A gateway on an overlay does
// not attach it (the offload knows no tags).
func (a *Agent) runOffload(ctx context.Context) error {
	o := a.offload
	t := time.NewTicker(offloadSync)
	defer t.Stop()
	var last string
	for {
		err := o.Sync(a.offloadInterfaces())
		if msg := errString(err); msg != last {
			if err != nil {
				a.log.Warn("attaching the offload", "err", err)
			}
			last = msg
		}
		select {
		case <-ctx.Done():
			return o.Sync(nil)
		case <-t.C:
		}
	}
}

// offloadWatch is how often the agent counts what a gateway's offload
// holds at the default size (a read of its whole flow table: about 40 ms
// of a CPU when it is full, 0.15% of one every 30 s), and
// offloadWarnEvery how often at most it warns of each kind of trouble
// with the table (checkOffload).
const (
	offloadWatch     = 30 * time.Second
	offloadWarnEvery = 10 * time.Minute
)

// offloadWatchEvery is how often the agent counts a flow table of
// capacity places: every offloadWatch up to the default size, and as much
// less often as the table is larger, so that counting costs about the
// same share of a CPU whatever the size (a table of 4 million, the
// largest, every 16 minutes).
func offloadWatchEvery(capacity int) time.Duration {
	return offloadWatch * time.Duration(max(1, capacity/offload.DefaultFlows))
}

// watchOffload counts what the gateway's offload holds while ctx lasts
// (checkOffload), every offloadWatchEvery.
func (a *Agent) watchOffload(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	warned := newOffloadWarned()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		a.checkOffload(&warned, time.Now())
		every := offloadWatch
		if held := a.offloadHeld.Load(); held != nil {
			every = offloadWatchEvery(held.Capacity)
		}
		t.Reset(every)
	}
}

// offloadWarned throttles the agent's warnings of each kind of trouble
// with the offload's flow table apart, so that a warning of one kind does
// not hide the other: a count that fails now and then, and a table full
// of live flows, are different problems for the operator.
type offloadWarned struct{ count, full throttle.Log }

// newOffloadWarned returns the throttles of a watch that has warned of
// nothing yet.
func newOffloadWarned() offloadWarned {
	return offloadWarned{count: throttle.Log{Every: offloadWarnEvery}, full: throttle.Log{Every: offloadWarnEvery}}
}

// checkOffload counts what the offload's flow table holds, for the
// metrics, and warns, at most once every offloadWarnEvery for each
// kind, when it cannot count or when live flows fill the table: flows it
// has no room for then evict passing ones, and take the kernel's path,
// which costs throughput, not the chain.
func (a *Agent) checkOffload(warned *offloadWarned, now time.Time) {
	o, err := a.offload.Occupancy()
	if err != nil {
		if warned.count.OK(now) {
			a.log.Warn("counting the offload's flows", "err", err)
		}
		return
	}
	a.offloadHeld.Store(&o)
	if o.Full() && warned.full.OK(now) {
		a.log.Warn("the offload's flow table is nearly full of live flows: flows it has no room for take the kernel's path; raise --offload-flows",
			"live", o.Live, "held", o.Held, "capacity", o.Capacity)
	}
}

// offloadInterfaces returns the interfaces the gateway steers, as the
// offload wants them: none on an overlay.
func (a *Agent) offloadInterfaces() []string {
	spec := a.Spec()
	if spec.Overlay != nil {
		return nil
	}
	st, ok := spec.Steer()
	if !ok {
		return nil
	}
	out := append([]string(nil), st.Outer...)
	for _, b := range st.Bound {
		out = append(out, b.Ifaces...)
	}
	return out
}

// invalidateOffload makes a gateway's offload forget every learned hop
// after a map switch, which may have moved flows or routes, and follows
// the steered interfaces it may have changed (or an overlay it added).
func (a *Agent) invalidateOffload() {
	if a.offload == nil {
		return
	}
	if err := a.offload.Sync(a.offloadInterfaces()); err != nil {
		a.log.Warn("attaching the offload", "err", err)
	}
	if err := a.offload.Invalidate(); err != nil {
		a.log.Warn("invalidating the offload", "err", err)
	}
}

// offloadReport fills in what a node's heartbeat says of its offload
// (see store.Report.Offload): on a gateway its state, the packets it
// forwarded and its flow table's last count; nothing on an instance host.
func (a *Agent) offloadReport(r *store.Report) {
	if a.state.Load().role != Gateway {
		return
	}
	switch {
	case a.offload == nil && a.offloadUnavailable:
		r.Offload = "unavailable"
		return
	case a.offload == nil:
		r.Offload = "off"
		return
	}
	if fs, err := a.offload.Stats(); err == nil {
		r.Offloaded = fs.Offloaded
	}
	if held := a.offloadHeld.Load(); held != nil {
		r.OffloadLive, r.OffloadCapacity = held.Live, held.Capacity
	}
	r.Offload = "on"
	if a.Spec().Overlay != nil {
		r.Offload = "overlay"
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
