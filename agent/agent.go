package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nfsteer/nfsteer/metrics"
	"github.com/nfsteer/nfsteer/nfq"
	"github.com/nfsteer/nfsteer/offload"
	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// state is one map version as the packet path sees it. It is swapped whole.
type state struct {
	published *steering.Published
	table     *steering.Table
	node      steering.Node
	spec      rules.Spec
	role      Role
	// service is the index of the node's service (-1 unless it hosts an
	// instance).
	service int
	// tagged: the node hosts an instance on an overlay, and takes a flow's
	// tenant from the tag it arrived with (rules.TenantTag), never from
	// its addresses.
	tagged bool
}

// keyOf is the session key of the tracked connection c: on an overlay, a
// tagged node's flows are keyed by their conntrack zone (their tag), a
// gateway's by the tag of the tenant their addresses name.
func (st *state) keyOf(c *rules.Conn) sessions.Key {
	k := sessions.KeyOf(&c.Flow)
	switch {
	case st.tagged || st.spec.Overlay != nil && c.Zone != 0:
		// The zone holds the tag (and, on an instance host, the
		// number of a zoned flow's gateway; on a gateway, ZoneOut on
		// a zoned flow's second entry).
		k.Tag = c.Zone & uint16(rules.TagMask)
	case st.spec.Overlay != nil:
		k.Tag = st.table.TagOf(&c.Flow, false)
	}
	return k
}

// zonesOf returns the conntrack zones the flows of the tenant called name
// may be in here: a tagged node's by their tag (a zoned tenant's with the
// number of any gateway), a gateway's zoned tenant's by both its entries
// (see rules.TenantTag), anyone else's in zone 0.
func (st *state) zonesOf(name string) []uint16 {
	ti := st.table.TenantByName(name)
	if ti < 0 || st.spec.Overlay == nil {
		return []uint16{0}
	}
	tn := st.table.Tenants()[ti]
	switch {
	case st.tagged && tn.Zoned():
		var zones []uint16
		for g := uint16(1); g <= steering.MaxGateways; g++ {
			if st.table.HasGateway(g) {
				zones = append(zones, tn.Tag|g<<rules.GatewayShift)
			}
		}
		return zones
	case st.tagged:
		return []uint16{tn.Tag}
	case tn.Zoned():
		return []uint16{tn.Tag, tn.Tag | rules.ZoneOut}
	}
	return []uint16{0}
}

// decide decides f's packet in one direction for tenant, the index of the
// tenant its tag named (-1: none), on a tagged node or for a zoned
// tenant, and for the tenant its addresses name anywhere else.
func (st *state) decide(f *steering.Flow, reply bool, pins *steering.Pins, tenant int) steering.Decision {
	if st.tagged || tenant >= 0 && st.table.Tenants()[tenant].Zoned() {
		return st.table.DecideTagged(st.node, f, tenant, reply, pins)
	}
	return st.table.Decide(st.node, f, reply, pins)
}

// Counters are the agent's decision counters, updated atomically.
type Counters struct {
	Decisions  [5]atomic.Uint64 // by steering.Kind
	ParseError atomic.Uint64
	Fragments  atomic.Uint64
	// Undecidable counts the unparseable packets and fragments of a
	// tenant, dropped rather than sent around the tenant's chain.
	Undecidable atomic.Uint64
	// Mistagged counts packets a tagged node dropped because their tag
	// named a tenant neither of their addresses belongs to.
	Mistagged   atomic.Uint64
	FlowLogged  atomic.Uint64
	FlowLogLost atomic.Uint64
	// Firewall verdicts.
	Admitted, Denied, TakenOver, Unknown atomic.Uint64
	// LookupErrors counts takeover lookups that failed (Redis down, or a
	// malformed entry); LookupsShed counts packets dropped because too
	// many lookups were pending.
	LookupErrors, LookupsShed atomic.Uint64
	// Joined counts flows a gateway took up mid-stream with the pins
	// another gateway had given them.
	Joined atomic.Uint64
	// Maps counts map switches; MapsRefused, versions that failed
	// validation; Repinned, connections moved off dead instances.
	Maps, MapsRefused, Repinned atomic.Uint64
	// NewFlows counts flows this node recorded first; Reopened, those of
	// them that were new TCP connections on a closed one's 5-tuple.
	NewFlows, Reopened atomic.Uint64
	// Resumed counts the flows an earlier run of the agent decided that
	// this run took back as its instance's when it started (the resume).
	Resumed atomic.Uint64
	// Unsteered is the kernel's count of new flows forwarded without a
	// decision, as last read (see [rules.Kernel.Unsteered]).
	Unsteered atomic.Uint64
	// Spoofed is the kernel's count of packets dropped for entering
	// where their source may not, as last read (see
	// [rules.Kernel.Spoofed]).
	Spoofed atomic.Uint64
	// Untagged is the kernel's count of packets an instance host on an
	// overlay dropped for arriving with no tenant's tag (see
	// [rules.Kernel.Untagged]).
	Untagged atomic.Uint64
	// Steered counts steering decisions by next-hop instance ID.
	Steered [steering.MaxID + 1]atomic.Uint64
}

// Agent steers the flows of one node. Create it with [New] and start it
// with [Agent.Run].
type Agent struct {
	cfg     Config
	log     *slog.Logger
	kernel  rules.Kernel
	state   atomic.Pointer[state]
	flows   *sessions.Flows
	flowLog chan flowEvent // decisions on their way to the log, never blocking
	// queue is the queue reader's counters; Run sets it before it starts
	// the tasks that read it.
	queue *nfq.Stats

	// Redis side; all nil without Redis. mirror is nil with NoMirror.
	store  Store
	mirror *sessions.Mirror
	// sessionsMu guards nodeSessions, the session store of the node as
	// it last was (sessionsOf).
	sessionsMu   sync.Mutex
	nodeSessions *nodeSessions

	ctMu sync.Mutex // guards ct, which is not safe for concurrent use
	ct   rules.Conntrack

	switchMu sync.Mutex // serialises map switches
	gc       *switchCollector
	// rpMu guards rpChecked and rpDrops: the zoned tenants' prefixes the
	// last check of the reverse-path filter read, and those it found
	// dropped (checkReversePath).
	rpMu      sync.Mutex
	rpChecked []netip.Prefix
	rpDrops   []netip.Prefix
	// rpReport is rpDrops as heartbeats report them, "tenant prefix".
	rpReport atomic.Pointer[[]string]
	// logging says decisions are logged: Config.LogFlows, until Reload.
	logging atomic.Bool

	// offload is a gateway's flow offload, or nil; Run sets it before it
	// starts the tasks that read it.
	offload Offload
	// offloadUnavailable says the gateway's offload could not open or
	// attach, and the gateway steers without it; Run sets it with
	// offload.
	offloadUnavailable bool
	// offloadHeld is what the offload's flow table held when
	// watchOffload last counted it, nil before.
	offloadHeld atomic.Pointer[offload.Occupancy]

	lookupMu sync.Mutex // guards pending
	pending  map[sessions.Key][]waiter
	lookups  chan sessions.Key
	// answer answers a deferred packet: through its queue in production
	// (nfq.Later), to the test in unit tests.
	answer func(w *waiter, r nfq.Result)

	// ready is set once the rules are in place (the metrics' /readyz).
	ready atomic.Bool
	// switchSeconds and mirrorSeconds time map switches and the mirror's
	// batch writes; they are safe for concurrent use.
	switchSeconds, mirrorSeconds prometheus.Histogram

	Counters Counters
}

type flowEvent struct {
	flow     steering.Flow
	reply    bool
	decision steering.Decision
}

// waiter is a packet held in its queue while Redis is asked about its flow.
type waiter struct {
	later nfq.Later
	flow  steering.Flow
	mark  uint32
	reply bool
	// gateway is the number of a zoned flow's gateway, on an instance
	// host (see steerBoth).
	gateway uint16
	// tenant is the tenant the packet's tag named, on a tagged node.
	tenant int
}

const maxPendingLookups = 4096

// New prepares an agent that installs its rules through k and, if ct is
// not nil, moves established flows off dead instances through ct. With
// Redis it takes the live map from there, falling back to the map file
// when Redis is unreachable or holds none.
func New(cfg Config, k rules.Kernel, ct rules.Conntrack) (*Agent, error) {
	return newAgent(cfg, k, ct, func(url string) (Store, error) { return dialRedis(url, cfg.RedisTLS, cfg.Trust, cfg.SessionKeys) })
}

// newAgent is New with the store that dial returns for cfg.RedisURL.
func newAgent(cfg Config, k rules.Kernel, ct rules.Conntrack, dial func(url string) (Store, error)) (*Agent, error) {
	cfg.defaults()
	if cfg.Node == "" {
		return nil, errors.New("a node name is required")
	}
	if cfg.MapFile == "" && cfg.RedisURL == "" {
		return nil, errors.New("a map file or a Redis URL is required")
	}
	a := &Agent{
		cfg:     cfg,
		log:     cfg.Logger.With("node", cfg.Node),
		kernel:  k,
		ct:      ct,
		flows:   sessions.NewFlows(cfg.SessionTTL),
		flowLog: make(chan flowEvent, 1024),
		pending: map[sessions.Key][]waiter{},
		lookups: make(chan sessions.Key, maxPendingLookups),
		answer:  func(w *waiter, r nfq.Result) { w.later.Set(r) },
	}
	a.gc = newSwitchCollector(func() { a.state.Load().published.Prepare() })
	a.newHistograms()
	a.logging.Store(cfg.LogFlows)
	p, err := a.initialMap(dial)
	if err != nil {
		if a.store != nil {
			a.store.Close()
		}
		return nil, err
	}
	if err := a.install(p, false); err != nil {
		if a.store != nil {
			a.store.Close()
		}
		return nil, err
	}
	if a.store != nil {
		if !cfg.NoMirror {
			a.mirror = sessions.NewMirror(recordWriter{a}, sessions.MirrorConfig{
				Linger: cfg.MirrorLinger, Resync: a.resyncOps, Existing: a.adopt, Moved: a.letGoOf, Logger: a.log,
				Written: func(d time.Duration) { a.mirrorSeconds.Observe(d.Seconds()) },
			})
		}
	}
	return a, nil
}

// nodeSessions is a session store and the service and instance it
// writes as.
type nodeSessions struct {
	service, instance string
	SessionStore
}

// sessionsOf returns the session store of the node as st has it: it
// writes function state under the node's service and deletes the
// sessions its instance holds; a gateway's or a spare's has neither. A
// spare becomes an instance when a version adds it, and its store then
// changes with it. It is safe for concurrent use.
func (a *Agent) sessionsOf(st *state) SessionStore {
	svc, inst := "", ""
	if st.service >= 0 {
		svc, inst = st.table.Services()[st.service].Name, a.cfg.Node
	}
	a.sessionsMu.Lock()
	defer a.sessionsMu.Unlock()
	if n := a.nodeSessions; n == nil || n.service != svc || n.instance != inst {
		a.nodeSessions = &nodeSessions{svc, inst, a.store.Sessions(svc, inst, a.known, a.cfg.RedisSessionTTL)}
	}
	return a.nodeSessions.SessionStore
}

// known reports whether the map the node runs has an instance called
// name: a session whose record names one it no longer has (removed
// while it carried flows) is taken over, and deleted, by the instance
// the node's own roles name.
func (a *Agent) known(name string) bool {
	_, ok := a.state.Load().table.InstanceByName(name)
	return ok
}

func (a *Agent) initialMap(dial func(string) (Store, error)) (*steering.Published, error) {
	fromFile := func() (*steering.Published, error) {
		m, err := steering.LoadFile(a.cfg.MapFile)
		if err != nil {
			return nil, err
		}
		return steering.Local(m)
	}
	if a.cfg.RedisURL == "" {
		return fromFile()
	}
	s, err := dial(a.cfg.RedisURL)
	if err != nil {
		return nil, err
	}
	a.store = s
	switch ks := a.cfg.SessionKeys; {
	case a.cfg.NoMirror:
	case ks.Seal == nil:
		a.log.Warn("session records in Redis are not sealed: whoever can write to Redis can forge one a takeover follows (give --session-key)")
	case ks.Unsealed:
		a.log.Warn("unsealed session records are trusted (--session-accept-unsealed): only while the fleet starts sealing", "seal", ks.Seal.ID(), "trusted", ks.IDs())
	default:
		a.log.Info("session records are sealed", "seal", ks.Seal.ID(), "trusted", ks.IDs())
	}
	if a.cfg.Trust == nil {
		a.log.Warn("maps from Redis are not authenticated: whoever can write to Redis can steer this node's traffic (give --trust-key)", "redis", s.Addr())
	} else {
		a.log.Info("maps from Redis must be signed by a trusted key", "keys", a.cfg.Trust.KeyIDs())
	}
	ctx := context.Background()
	if err := s.Check(ctx); err != nil {
		if errors.Is(err, store.ErrOldRedis) {
			return nil, err // it will not get newer by retrying
		}
		if a.cfg.MapFile == "" {
			return nil, fmt.Errorf("%w (and no --map to start on)", err)
		}
		a.log.Warn("Redis unreachable; starting on the map file and retrying", "err", err, "map", a.cfg.MapFile)
		return fromFile()
	}
	p, err := s.Live(ctx)
	switch {
	case err == nil:
		return p, nil
	case a.cfg.MapFile != "":
		a.log.Warn("no usable map in Redis; starting on the map file", "err", err, "map", a.cfg.MapFile)
		return fromFile()
	default:
		return nil, fmt.Errorf("%w at %s (apply one with `nfsteer apply`, or give --map)", err, s.Addr())
	}
}

// install compiles p and makes it the node's map. With apply, the kernel
// gets the new routes first, so the packet path never steers to an
// instance it cannot reach yet.
func (a *Agent) install(p *steering.Published, apply bool) error {
	var prev *steering.Table
	if old := a.state.Load(); old != nil {
		prev = old.table
	}
	t, err := steering.CompileNext(prev, p)
	if err != nil {
		return err
	}
	old := a.state.Load()
	if old != nil && t.SameInstances(old.table) {
		// Same instances, IDs and addresses: the same routes, already
		// installed. A tenant change or a failover skips building and
		// comparing a hop per instance; only the rules that follow from
		// the tenants (a gateway's ingress bindings, the overlay's tags)
		// may change, and only if the tenants did: a failover or a drain
		// also skips walking every tenant (about 1 ms a version for a
		// gateway with 10,000).
		st := *old
		st.published, st.table = p, t
		if old.role != Spare && !t.SameTenants(old.table) {
			ingress, tags := tenantRules(t, old.role == Gateway, old.spec.Overlay != nil)
			if !reflect.DeepEqual(ingress, old.spec.Ingress) || !reflect.DeepEqual(tags, old.spec.Tags) {
				st.spec.Ingress, st.spec.Tags = ingress, tags
				if apply {
					if err := a.kernel.Apply(st.spec); err != nil {
						return fmt.Errorf("installing rules of version %d: %w", p.Version, err)
					}
				}
			}
		}
		a.state.Store(&st)
		return nil
	}
	spec, err := SpecFor(t, a.cfg.Node, a.cfg.Rules)
	spare := errors.Is(err, ErrNotInMap) && a.cfg.Spare
	if spare {
		// Queue new flows like an instance host, and let them all pass.
		spec, err = a.cfg.Rules, nil
	}
	if err != nil {
		return err
	}
	st := stateOf(p, t, a.cfg.Node, spec, spare)
	if old != nil && old.role != Spare && old.role.hostsInstance() != st.role.hostsInstance() {
		return fmt.Errorf("version %d would turn node %s from a %s into a %s; restart the agent to change roles", p.Version, a.cfg.Node, old.role, st.role)
	}
	if apply {
		if err := a.kernel.Apply(spec); err != nil {
			return fmt.Errorf("installing rules of version %d: %w", p.Version, err)
		}
	}
	a.state.Store(st)
	return nil
}

// stateOf is what node runs on version p, compiled as t, with spec its
// rules; spare says the node is not in t and was started as a spare.
func stateOf(p *steering.Published, t *steering.Table, node string, spec rules.Spec, spare bool) *state {
	st := &state{published: p, table: t, node: t.NodeFor(node), spec: spec, service: -1}
	st.role = roleOf(t, st.node, spare)
	st.tagged = spec.Overlay != nil && st.role.hostsInstance()
	if st.role.hostsInstance() {
		st.service = t.Instances()[st.node.Instance].Service
	}
	return st
}

// checkReversePath warns of the zoned tenants' prefixes whose flows the
// kernel's reverse-path filter drops when the chain hands them back to
// this gateway (rules.Kernel.ReversePathDrops), each time they change,
// and has heartbeats report them: the filter only counts them
// (TcpExtIPReversePathFilter), and nothing else would say why those
// tenants' connections hang. Without always, it checks only when the
// zoned tenants' prefixes changed since the last check: a map switch
// calls it so, and the refresh walk, every interval, with always (the
// routes change without the map). It costs a route lookup per prefix.
func (a *Agent) checkReversePath(always bool) {
	st := a.state.Load()
	var srcs []netip.Prefix
	for _, tt := range st.spec.Tags {
		// A gateway's: an instance host routes no zoned tenant's
		// flows by its own tables.
		if tt.Zoned() && st.role == Gateway {
			srcs = append(srcs, tt.Prefixes...)
		}
	}
	a.rpMu.Lock()
	defer a.rpMu.Unlock()
	if !always && slices.Equal(srcs, a.rpChecked) {
		return
	}
	a.rpChecked = srcs
	if len(srcs) == 0 {
		a.rpDrops = nil
		a.rpReport.Store(nil)
		return
	}
	drops, err := a.kernel.ReversePathDrops(srcs)
	if err != nil {
		a.log.Warn("cannot check the reverse-path filter for the zoned tenants", "err", err)
		return
	}
	if slices.Equal(drops, a.rpDrops) {
		return
	}
	a.rpDrops = drops
	var report []string
	defer func() { a.rpReport.Store(&report) }()
	for _, tt := range st.spec.Tags {
		for _, p := range tt.Prefixes {
			if !slices.Contains(drops, p) {
				continue
			}
			tenant := ""
			if i := st.table.TenantByTag(tt.Tag); i >= 0 {
				tenant = st.table.Tenants()[i].Name
			}
			a.log.Warn("the kernel's reverse-path filter drops this zoned tenant's flows when the chain hands them back: this gateway routes none of its addresses in its main table (add a route there, a default route is enough, or turn rp_filter off host-wide and on "+rules.OverlayDevice+")",
				"tenant", tenant, "prefix", p)
			report = append(report, tenant+" "+p.String())
		}
	}
}

// Spec returns the rules the agent installs for its current map.
func (a *Agent) Spec() rules.Spec { return a.state.Load().spec }

// QueueReader is the agent's packet input (an *nfq.Reader in production).
type QueueReader interface {
	Run(ctx context.Context) error
	// Bound is closed when the queues are bound.
	Bound() <-chan struct{}
	// Counters returns the reader's counters.
	Counters() *nfq.Stats
}

// Run steers until ctx is done. It binds the queues first and installs the
// rules only then, so no flow slips past an agent that is starting; on the
// way out it removes the rules, or keeps them and announces its restart
// (KeepRules). The queue reader and every background task (session
// expiry, flow log, and with Redis the map watch, heartbeats, mirror,
// takeover lookups and the pruning of session index names) run in one
// group: if one fails, all stop, and Run waits for all of them. On the way
// out the mirror stops only once everything that queues session
// operations has (the packet path, the walks, the map watch's re-pins,
// the takeover lookups), and writes what they queued; the heartbeat stops
// only once the mirror has, so that the controller hears the node until
// the restart is announced.
func (a *Agent) Run(ctx context.Context, newReader func(nfq.Handler, []nfq.Queue) QueueReader) (err error) {
	defer func() {
		if a.store != nil {
			a.store.Close()
		}
	}()
	spec := a.Spec()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := a.openOffload(); err != nil {
		return err
	}
	if a.offload != nil {
		defer a.offload.Close()
	}
	reader := newReader(a, spec.QueueSet())
	a.queue = reader.Counters()
	g, gctx := errgroup.WithContext(ctx)
	var producers, mirroring sync.WaitGroup // see outlasting
	producer := func(t Task) Task {
		producers.Add(1)
		return func(ctx context.Context) error {
			defer producers.Done()
			return t(ctx)
		}
	}
	tasks := []Task{producer(reader.Run), a.flows.Run, a.logFlows, a.readKernelCounters}
	if a.cfg.MetricsAddr != "" {
		ms, err := metrics.Listen(a.cfg.MetricsAddr, a.ready.Load, collector{a: a, reader: reader.Counters})
		if err != nil {
			return err
		}
		tasks = append(tasks, ms.Run)
		a.log.Info("serving metrics", "addr", ms.Addr().String())
	}
	if a.ct != nil {
		tasks = append(tasks, producer(a.refresh))
	}
	if a.offload != nil {
		tasks = append(tasks, a.runOffload, a.watchOffload, a.offload.Run)
	}
	if a.mirror != nil {
		mirroring.Add(1)
		tasks = append(tasks, a.pruneIndexes, outlasting(&producers, func(ctx context.Context) error {
			defer mirroring.Done()
			return a.mirror.Run(ctx)
		}))
	}
	if a.store != nil {
		tasks = append(tasks, producer(a.watchMap), a.gc.run, producer(a.lookupWorker), producer(a.lookupWorker),
			outlasting(&mirroring, a.heartbeat))
	}
	for _, t := range tasks {
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
			a.announceRestart()
			return
		}
		if rerr := a.kernel.Remove(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("removing rules: %w", rerr))
			return
		}
		a.log.Info("rules removed")
	}()
	a.switchMu.Lock()
	err = a.kernel.Apply(a.Spec())
	if err == nil {
		a.checkReversePath(true)
	}
	a.switchMu.Unlock()
	if err != nil {
		cancel()
		return errors.Join(fmt.Errorf("installing rules: %w", err), g.Wait())
	}
	a.ready.Store(true)
	defer a.ready.Store(false)
	st := a.state.Load()
	role := st.role.String()
	switch st.role {
	case Forwarder, Firewall:
		role += " instance " + st.table.Instances()[st.node.Instance].Name
	case Spare:
		role += " (not in the map yet: becomes an instance when a version adds it)"
	}
	redis := "none"
	if a.store != nil {
		redis = a.store.Addr()
	}
	// Decoding and compiling a big map at start leaves garbage that the
	// first map versions to arrive would otherwise pay for, collecting
	// it while they switch.
	runtime.GC()
	st.published.Prepare()
	a.log.Info("ready", "role", role, "outer", spec.Outer, "queues", spec.WithDefaults().Queues,
		"fail_closed", spec.FailClosed, "overload_bypass", spec.OverloadBypass, "hops", len(spec.Hops), "map_version", st.table.Version(),
		"redis", redis, "mirror", a.mirror != nil, "offload", a.offload != nil)
	return g.Wait()
}

// outlasting returns t as a task whose context ends only once the group's
// has and every task of first is done (first.Wait): the mirror outlasts
// what queues its operations, and the heartbeat the mirror. It waits for
// t, which it runs on a goroutine of its own, in every case.
func outlasting(first *sync.WaitGroup, t Task) Task {
	return func(ctx context.Context) error {
		tctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		defer cancel()
		errc := make(chan error, 1)
		go func() { errc <- t(tctx) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
		}
		first.Wait() // the group's context is done: they are stopping
		cancel()
		return <-errc
	}
}

// announceRestart tells the controller that this node stopped with its
// rules in place and will be back within the restart grace, so its silence
// until then is no failure. Run calls it on the way out.
func (a *Agent) announceRestart() {
	if a.store == nil || a.cfg.RestartGrace < 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := a.store.Restarting(ctx, a.cfg.Node, a.cfg.RestartGrace); err != nil {
		a.log.Warn("could not announce the restart; the controller will fail this node over", "err", err)
		return
	}
	a.log.Info("restart announced: no failover unless the agent is not back in time", "within", a.cfg.RestartGrace.String())
}

// Handle decides the first packet of a flow in one direction. It is the
// packet path: it reads the current map and the session table from memory,
// allocates nothing, and hands logging, mirroring and Redis lookups to
// other goroutines without waiting.
func (a *Agent) Handle(p *nfq.Packet, perr error, mark uint32, reply bool) nfq.Result {
	st := a.state.Load()
	if perr != nil {
		// Unparseable (headers past the copy range, a hostile extension
		// header chain) or a fragment: no decision can be made. A tenant's
		// packet is dropped, since letting it through would send it
		// around its chain; anything else passes undecided, and the
		// flow's next packet is looked at again.
		if errors.Is(perr, nfq.ErrFragment) {
			a.Counters.Fragments.Add(1)
		} else {
			a.Counters.ParseError.Add(1)
		}
		if st.role != Spare && (st.spec.Overlay != nil && mark&rules.MarkTag != 0 || !st.tagged && (tenantOf(st.table, p.Flow.Src) || tenantOf(st.table, p.Flow.Dst))) {
			a.Counters.Undecidable.Add(1)
			return nfq.Result{Verdict: nfq.Drop}
		}
		return nfq.Result{Verdict: nfq.Accept, Mark: mark}
	}
	if st.role == Spare {
		// Not in the map yet (a spare, started with --spare): a spare
		// only takes the instance role when a version adds it, and until
		// then has no business with the flows crossing it.
		return nfq.Result{Verdict: nfq.Accept, Mark: mark}
	}
	key := sessions.KeyOf(&p.Flow)
	// A tagged packet: on an instance host, or from a zoned tenant's
	// ingress on a gateway.
	tenant, tagged := -1, st.spec.Overlay != nil && mark&rules.MarkTag != 0
	var gateway uint16 // a zoned flow's, on an instance host
	switch {
	case tagged:
		key.Tag = uint16(mark & rules.TagMask)
		tenant = st.table.TenantByTag(key.Tag)
		gateway = uint16(mark & rules.GatewayMask >> rules.GatewayShift)
		mark &^= rules.MarkTag | rules.OrigMask | rules.GatewayMask
		if gateway != 0 && (!st.tagged || !st.table.HasGateway(gateway)) {
			// A gateway the map does not have: the chain could not
			// hand the flow back.
			a.Counters.Mistagged.Add(1)
			return nfq.Result{Verdict: nfq.Drop}
		}
	case st.spec.Overlay != nil:
		// A gateway on an overlay: its flows are keyed by the tag of the
		// tenant their addresses name, as the instances' are by theirs.
		key.Tag = st.table.TagOf(&p.Flow, reply)
	}
	var pins *steering.Pins
	sess, known := a.flows.Get(key)
	if st.tagged && !tagged && known {
		tenant = st.table.TenantByName(sess.Tenant)
	}
	// A TCP opening (SYN without ACK) that reaches the queue for a flow
	// this node knows is a new connection on the 5-tuple of a closed one:
	// a retransmitted SYN of the same connection finds its connmark and
	// stays in the kernel, while conntrack gives a reopened connection a
	// new entry, without one. It is decided afresh, as any new flow (on
	// the live map; a firewall checks its rules again), and its session
	// replaces the closed connection's.
	reopened := known && !reply && p.Proto == nfq.ProtoTCP && p.Opening()
	if reopened {
		known = false
		a.Counters.Reopened.Add(1)
	} else if known {
		pins = &sess.Pins
	}
	d := st.decide(&p.Flow, reply, pins, tenant)
	if tagged && d.Tenant < 0 {
		// The kernel let in only tags that name a tenant: this one names
		// a tenant the packet's addresses do not belong to. (An untagged
		// packet here is not forwarded from outside the overlay, which
		// the kernel drops, but one of the node's own, such as neighbour
		// discovery to a link-local address: it passes as no tenant's.)
		a.Counters.Mistagged.Add(1)
		return nfq.Result{Verdict: nfq.Drop}
	}
	if !known && d.Tenant >= 0 && d.Kind != steering.NotInChain {
		if st.role == Firewall {
			if reply || d.Reverse || !p.Opening() {
				// Mid-stream, or opened from outside: only a mirrored
				// session naming this instance can let it through.
				if a.deferToRedis(key, waiter{later: p.Later(), flow: p.Flow, mark: mark, reply: reply, tenant: tenant, gateway: gateway}) {
					return nfq.Result{Verdict: nfq.Defer}
				}
				return nfq.Result{Verdict: nfq.Drop}
			}
			rule := st.table.Permit(d.Tenant, &p.Flow)
			if rule < 0 {
				a.Counters.Denied.Add(1)
				if reopened {
					// The closed connection's session must not admit what
					// follows on its tuple.
					a.forget(st, sess)
				}
				a.logFlow(p, reply, d)
				return nfq.Result{Verdict: nfq.Drop}
			}
			a.Counters.Admitted.Add(1)
			sess = a.newSession(st, key, d, int16(rule), reopened, synOpens(p))
			pins = &sess.Pins
		} else if st.role == Gateway && a.mirror != nil && !p.Opening() &&
			a.deferToRedis(key, waiter{later: p.Later(), flow: p.Flow, mark: mark, reply: reply, tenant: tenant, gateway: gateway}) {
			// Mid-stream at this gateway: the flow opened through another
			// gateway (ECMP upstream moved it), perhaps on an older map.
			// Its pins are in Redis; the map decides only if they are not,
			// or if too many lookups are pending.
			return nfq.Result{Verdict: nfq.Defer}
		} else {
			sess = a.newSession(st, key, d, -1, reopened, synOpens(p))
			pins = &sess.Pins
		}
	}
	a.count(d)
	a.logFlow(p, reply, d)
	return nfq.Result{Verdict: nfq.Accept, Mark: steerBoth(st, mark, &p.Flow, reply, d, pins, gateway)}
}

// steerBoth returns the mark that steers a flow from this node in both
// directions: d's hop for the packet's direction and, decided now on the
// same pins, the hop the other direction takes here. The flow's first
// packet the other way then stays in the kernel: a node crosses to
// userspace once per flow, not once per direction. The save bit has the
// kernel keep both halves in the connmark. Where the flow has no pins (a
// flow of no tenant, or one this node is not in the chain of), the other
// direction is decided as its first packet would be: on the map. gateway
// is a zoned flow's gateway's number on an instance host (0: none): where
// its chain ends, in either direction, the flow goes back to it.
func steerBoth(st *state, mark uint32, f *steering.Flow, reply bool, d steering.Decision, pins *steering.Pins, gateway uint16) uint32 {
	back := f.Reversed()
	other := st.decide(&back, !reply, pins, d.Tenant)
	mark = rules.SetHalf(mark, reply, markValue(d, gateway))
	return rules.SetHalf(mark, !reply, markValue(other, gateway)) | rules.MarkSave
}

// kernelCountersEvery is how often the kernel's counts of unsteered flows
// and spoofed packets are read: a netlink dump of a chain with
// iptables-nft (a run of iptables, tens of milliseconds, with legacy
// iptables), and one of nftables' counters.
const kernelCountersEvery = time.Second

// readKernelCounters reads the kernel's count of new flows forwarded
// without a decision into Counters.Unsteered, and of spoofed packets
// dropped into Counters.Spoofed, off the packet path, and logs when they
// grow.
func (a *Agent) readKernelCounters(ctx context.Context) error {
	tick := time.NewTicker(kernelCountersEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		n, err := a.kernel.Unsteered()
		if err != nil {
			continue // the rules are being replaced, or iptables is busy: next time
		}
		if old := a.Counters.Unsteered.Swap(n); n > old {
			a.log.Warn("new flows left without a steering decision", "flows", n-old, "total", n,
				"overload_bypass", a.Spec().OverloadBypass)
		}
		if n, err := a.kernel.Spoofed(); err == nil {
			if old := a.Counters.Spoofed.Swap(n); n > old {
				a.log.Warn("dropped packets entering where their source may not (spoofed)", "packets", n-old, "total", n)
			}
		}
		if n, err := a.kernel.Untagged(); err == nil {
			if old := a.Counters.Untagged.Swap(n); n > old {
				a.log.Warn("dropped packets arriving with no tenant's tag", "packets", n-old, "total", n)
			}
		}
	}
}

// count counts a decision, by kind and next hop.
func (a *Agent) count(d steering.Decision) {
	a.Counters.Decisions[d.Kind].Add(1)
	if d.Kind == steering.Steer {
		a.Counters.Steered[d.Instance.ID].Add(1)
	}
}

func markValue(d steering.Decision, gateway uint16) uint32 {
	switch {
	case d.Kind == steering.Steer:
		return rules.HalfValue(d.Instance.ID)
	case d.Kind == steering.EndOfChain && gateway != 0 && d.Reverse:
		return rules.HalfValue(steering.ReturnID(steering.GatewayIDFor(gateway)))
	case d.Kind == steering.EndOfChain && gateway != 0:
		return rules.HalfValue(steering.GatewayIDFor(gateway))
	}
	return rules.MarkPass
}

// newSession records a flow decided here and queues its mirror writes, as
// the node's role says (state.createOp). It returns
// the session the table holds: another packet of the flow may have been
// decided first. A reopened flow (a new TCP connection on a closed one's
// 5-tuple) replaces the closed one's session here. In Redis, every
// connection that opens here replaces what its 5-tuple held
// (sessions.Op.Replace), whether or not this node knew it: an agent
// restarted since, or another instance, carried it.
//
// A TCP SYN (synOpens) starts the session's life in Redis now: the node
// that creates it does so as the SYN passes. Of any other first packet this
// node cannot tell whether it opens the flow or meets it mid-stream (the
// flow came from a dead instance, or another gateway): the session's life
// in Redis is unknown, and the next walk refreshes it.
func (a *Agent) newSession(st *state, key sessions.Key, d steering.Decision, rule int16, reopened, synOpens bool) sessions.Session {
	now := time.Now().UnixNano()
	a.Counters.NewFlows.Add(1)
	s := sessions.Session{
		Key:     key,
		Tenant:  st.table.Tenants()[d.Tenant].Name,
		Code:    d.Code,
		Pins:    st.table.PinsFor(d.Tenant, d.Slot),
		Created: now,
		Seen:    now,
		Rule:    rule,
	}
	if synOpens {
		s.Extended = now
	}
	if reopened {
		a.flows.Replace(s)
	} else {
		s = a.flows.Put(s)
	}
	if kind, index, ok := st.createOp(d.Tenant, synOpens); ok && a.mirror != nil {
		a.mirror.Enqueue(sessions.Op{Kind: kind, Replace: synOpens, Index: index, Session: s})
	}
	return s
}

// synOpens reports whether p is the SYN that opens a TCP connection.
func synOpens(p *nfq.Packet) bool { return p.Proto == nfq.ProtoTCP && p.Opening() }

// tenantOf reports whether a (the zero Addr when the packet did not
// parse that far) belongs to one of t's tenants.
func tenantOf(t *steering.Table, a netip.Addr) bool { return a.IsValid() && t.TenantOf(a) >= 0 }

// forget removes a finished session from the local table and, on a node
// that deletes its sessions from Redis, from Redis too.
func (a *Agent) forget(st *state, s sessions.Session) {
	a.flows.Delete(s.Key)
	if a.mirror != nil && st.deletes(s.Tenant) {
		a.mirror.Enqueue(sessions.Op{Kind: sessions.OpDelete, Session: s})
	}
}

func (a *Agent) logFlow(p *nfq.Packet, reply bool, d steering.Decision) {
	if !a.logging.Load() {
		return
	}
	select {
	case a.flowLog <- flowEvent{flow: p.Flow, reply: reply, decision: d}:
	default:
		a.Counters.FlowLogLost.Add(1)
	}
}

// logFlows writes decisions to the log, away from the packet path.
func (a *Agent) logFlows(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-a.flowLog:
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
func (a *Agent) Sessions() int { return a.flows.Len() }

// Reload applies what can change without a restart (SIGHUP): whether
// decisions are logged, and, on a node without Redis, the map file, which
// is validated and installed like a new version (instances keep their
// IDs). A bad file is refused and the running map kept. With Redis the map
// comes from Redis, not the file.
func (a *Agent) Reload(logFlows bool) error {
	a.logging.Store(logFlows)
	if a.store != nil || a.cfg.MapFile == "" {
		return nil
	}
	start := time.Now()
	m, err := steering.LoadFile(a.cfg.MapFile)
	if err != nil {
		return fmt.Errorf("reloading the map: %w", err)
	}
	cur := a.state.Load().published
	ids, err := steering.AssignIDs(m, cur.IDs)
	if err != nil {
		return fmt.Errorf("reloading the map: %w", err)
	}
	p := &steering.Published{Map: m, IDs: ids}
	if err := a.switchMap(p, start, "file"); err != nil {
		return fmt.Errorf("reloading the map: %w", err)
	}
	return nil
}
