package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nfsteer/nfsteer/nfq"
	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"golang.org/x/sync/errgroup"
)

// state is one map version as the packet path sees it. It is swapped whole.
type state struct {
	table *steering.Table
	node  steering.Node
}

// Counters are the agent's decision counters, updated atomically.
type Counters struct {
	Decisions   [5]atomic.Uint64 // by steering.Kind
	ParseError  atomic.Uint64
	Fragments   atomic.Uint64
	FlowLogged  atomic.Uint64
	FlowLogLost atomic.Uint64
}

// Agent steers the flows of one node. Create it with [New] and start it
// with [Agent.Run].
type Agent struct {
	cfg      Config
	log      *slog.Logger
	kernel   rules.Kernel
	state    atomic.Pointer[state]
	sessions *sessions.Table
	flows    chan flowEvent // decisions on their way to the log, never blocking
	Counters Counters
}

type flowEvent struct {
	flow     steering.Flow
	reply    bool
	decision steering.Decision
}

// New loads the map and prepares an agent that installs its rules through k.
func New(cfg Config, k rules.Kernel) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 5 * time.Minute
	}
	if cfg.Node == "" {
		return nil, errors.New("a node name is required")
	}
	m, err := steering.LoadFile(cfg.MapFile)
	if err != nil {
		return nil, err
	}
	t, err := steering.Compile(m)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:      cfg,
		log:      cfg.Logger.With("node", cfg.Node),
		kernel:   k,
		sessions: sessions.NewTable(cfg.SessionTTL),
		flows:    make(chan flowEvent, 1024),
	}
	a.state.Store(&state{table: t, node: t.NodeFor(cfg.Node)})
	return a, nil
}

// Spec returns the rules the agent installs for its current map.
func (a *Agent) Spec() (rules.Spec, error) {
	return SpecFor(a.state.Load().table, a.cfg.Node, a.cfg.Rules)
}

// QueueReader is the agent's packet input (an *nfq.Reader in production).
type QueueReader interface {
	Run(ctx context.Context) error
	// Bound is closed when the queues are bound.
	Bound() <-chan struct{}
}

// Run steers until ctx is done. It binds the queues first and installs the
// rules only then, so no flow slips past an agent that is starting; on the
// way out it removes the rules (unless KeepRules). The queue reader, the
// session expiry and the flow log run as tasks of one group: if one fails,
// all stop, and Run waits for all of them.
func (a *Agent) Run(ctx context.Context, newReader func(nfq.Handler, []nfq.Queue) QueueReader) (err error) {
	spec, err := a.Spec()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reader := newReader(a, spec.QueueSet())
	g, gctx := errgroup.WithContext(ctx)
	for _, t := range []Task{reader.Run, a.sessions.Run, a.logFlows} {
		g.Go(func() error { return t(gctx) })
	}
	select {
	case <-reader.Bound():
	case <-gctx.Done():
		return g.Wait()
	}
	defer func() {
		if a.cfg.KeepRules {
			a.log.Info("leaving rules installed")
			return
		}
		if rerr := a.kernel.Remove(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("removing rules: %w", rerr))
			return
		}
		a.log.Info("rules removed")
	}()
	if err := a.kernel.Apply(spec); err != nil {
		cancel()
		return errors.Join(fmt.Errorf("installing rules: %w", err), g.Wait())
	}
	role := "gateway"
	if n := a.state.Load().node; n.Instance >= 0 {
		role = "instance " + a.state.Load().table.Instances()[n.Instance].Name
	}
	a.log.Info("ready", "role", role, "outer", spec.Outer, "queues", spec.WithDefaults().Queues,
		"fail_closed", spec.FailClosed, "hops", len(spec.Hops))
	return g.Wait()
}

// Handle decides the first packet of a flow in one direction. It is the
// packet path: it reads the current map and the session table from memory,
// allocates nothing, and hands logging to another goroutine without
// waiting.
func (a *Agent) Handle(p *nfq.Packet, perr error, mark uint32, reply bool) nfq.Result {
	if perr != nil {
		// Unparseable or a fragment: let it through unsteered and undecided,
		// so the flow's next packet is looked at again. Dropping it is not
		// ours to decide.
		if errors.Is(perr, nfq.ErrFragment) {
			a.Counters.Fragments.Add(1)
		} else {
			a.Counters.ParseError.Add(1)
		}
		return nfq.Result{Verdict: nfq.Accept, Mark: mark}
	}
	st := a.state.Load()
	key := sessions.KeyOf(&p.Flow)
	var pins *steering.Pins
	sess, known := a.sessions.Get(key)
	if known {
		pins = &sess.Pins
	}
	d := st.table.Decide(st.node, &p.Flow, reply, pins)
	if !known && d.Tenant >= 0 {
		a.sessions.Put(sessions.Session{
			Key:     key,
			Tenant:  st.table.Tenants()[d.Tenant].Name,
			Code:    d.Code,
			Pins:    st.table.PinsFor(d.Tenant, d.Slot),
			Created: time.Now().UnixNano(),
		})
	}
	a.Counters.Decisions[d.Kind].Add(1)
	v := rules.MarkPass
	if d.Kind == steering.Steer {
		v = rules.HalfValue(d.Instance.ID)
	}
	if a.cfg.LogFlows {
		ev := flowEvent{flow: p.Flow, reply: reply, decision: d}
		select {
		case a.flows <- ev:
		default:
			a.Counters.FlowLogLost.Add(1)
		}
	}
	return nfq.Result{Verdict: nfq.Accept, Mark: rules.SetHalf(mark, reply, v)}
}

// logFlows writes decisions to the log, away from the packet path.
func (a *Agent) logFlows(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-a.flows:
			t := a.state.Load().table
			d := ev.decision
			attrs := []any{
				"proto", ev.flow.Proto,
				"src", fmt.Sprintf("%s:%d", ev.flow.Src, ev.flow.SrcPort),
				"dst", fmt.Sprintf("%s:%d", ev.flow.Dst, ev.flow.DstPort),
				"reply", ev.reply, "decision", d.Kind.String(),
			}
			if d.Tenant >= 0 && d.Tenant < len(t.Tenants()) {
				attrs = append(attrs, "tenant", t.Tenants()[d.Tenant].Name, "code", fmt.Sprintf("%08x", d.Code), "slot", d.Slot, "reverse", d.Reverse)
			}
			if d.Kind == steering.Steer {
				attrs = append(attrs, "next", d.Instance.Name)
			}
			a.Counters.FlowLogged.Add(1)
			a.log.Info("flow", attrs...)
		}
	}
}

// Sessions returns the number of flows in the local table.
func (a *Agent) Sessions() int { return a.sessions.Len() }
