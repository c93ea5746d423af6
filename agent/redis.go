package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"time"

	"github.com/nfsteer/nfsteer/nfq"
	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
)

// This file holds the agent's Redis tasks: following the live map,
// heartbeats, session lookups for packets memory cannot decide, and the
// mirror's callbacks.

// watchMap follows the live map in Redis: every announced, resubscribed or
// polled version newer than the node's is validated, installed and, if it
// took instances away, the flows pinned to them are moved. An announced
// delta from the version the node holds is applied without reading the
// map; anything else, including a delta refused, reads the live map: the
// log of deltas alone if it reaches back to the node's version (a node
// that missed announcements), else the document and the log after it.
func (a *Agent) watchMap(ctx context.Context) error {
	refused := uint64(0)
	return a.store.Watch(ctx, a.cfg.MapPoll, func(ctx context.Context, an store.Announcement) {
		start := time.Now()
		held := a.state.Load().published
		cur := held.Version
		if an.Version != 0 && an.Version <= cur {
			return
		}
		if an.Refused != nil {
			// Its delta was dropped: the live map, checked the same way,
			// decides below.
			a.Counters.MapsRefused.Add(1)
			a.log.Error("refusing an announced map delta; keeping the last good map", "version", an.Version, "current", cur, "err", an.Refused)
		}
		if d := an.Delta; d != nil && d.Base == cur && an.Version != refused {
			since := allocated()
			if p, err := held.Apply(d); err == nil {
				if a.switchMap(p, start, "delta") == nil { // logged and counted
					a.gc.afterSwitch(since)
				}
				return
			}
			// Not a delta this node can apply, or a bad one: the
			// document decides, by the same validation as any map.
		}
		v, err := a.store.LiveVersion(ctx)
		if err == nil && v != 0 && v < cur && v != refused {
			// Redis went back (an old version replayed, a replica promoted
			// before it had the last version, an old backup): never follow
			// it. (0 is no map at all: Redis lost its data, and the
			// controller puts the last map back.)
			a.Counters.MapsRefused.Add(1)
			refused = v
			a.log.Error("the live map version in Redis is older than this node's; keeping this node's", "version", v, "current", cur)
		}
		if err != nil || v <= cur || v == refused {
			return
		}
		p, err := a.store.LiveAfter(ctx, held)
		if err != nil {
			if errors.Is(err, steering.ErrInvalidMap) {
				a.Counters.MapsRefused.Add(1)
				refused = v
				a.log.Error("refusing map version from Redis; keeping the last good one", "version", v, "current", cur, "err", err)
			}
			return
		}
		if p.Version <= cur {
			return
		}
		// "live": from the log of deltas after this node's version, or
		// from the document.
		if a.switchMap(p, start, "live") == nil { // logged and counted
			// As at start: collect a decoded document's garbage now, not
			// while the next versions switch.
			runtime.GC()
			p.Prepare()
		}
	})
}

// switchMap installs p and moves flows off instances it took away. A map
// it refuses is logged and returned; the node keeps the last good one. via
// says where p came from, for the log.
func (a *Agent) switchMap(p *steering.Published, start time.Time, via string) error {
	a.switchMu.Lock()
	defer a.switchMu.Unlock()
	old := a.state.Load()
	if err := a.install(p, true); err != nil {
		a.Counters.MapsRefused.Add(1)
		a.log.Error("refusing map version; keeping the last good one", "version", p.Version, "err", err)
		return err
	}
	a.Counters.Maps.Add(1)
	switched := time.Now()
	a.switchSeconds.Observe(switched.Sub(start).Seconds())
	st := a.state.Load()
	moved := a.repin(old.table, st.table)
	a.invalidateOffload() // after the marks moved: nothing learned before follows them
	let := a.letGo(st)
	a.log.Info("map switched", "version", p.Version, "from", old.table.Version(), "via", via,
		"took", switched.Sub(start).String(), "at", switched.UnixNano(), "repinned", moved, "let_go", let, "down", p.Down)
	a.checkReversePath(false)
	return nil
}

// pruneIndexes forgets, every IndexPruneInterval (and a random part of
// it more, so that a fleet started together does not prune together), the
// names of the session indexes the node's instance shared with instances
// the map no longer has, once they are gone. Instances come and go, and
// each name costs every listing and drain count of this instance a read.
// A failure is tried again at the next round, and logged unless the last
// round failed the same way: nothing else waits for it.
func (a *Agent) pruneIndexes(ctx context.Context) error {
	every := a.cfg.IndexPruneInterval
	t := time.NewTimer(every + rand.N(every/2+1))
	defer t.Stop()
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		t.Reset(every + rand.N(every/2+1))
		st := a.state.Load()
		if !st.role.hostsInstance() || st.service < 0 {
			continue
		}
		n, err := a.sessionsOf(st).PruneIndexNames(ctx)
		switch {
		case err != nil && ctx.Err() == nil && err.Error() != lastErr:
			a.log.Warn("cannot prune the names of this instance's gone session indexes; trying again later", "err", err)
		case err == nil && n > 0:
			a.log.Info("forgot the session indexes shared with instances the map no longer has", "indexes", n)
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
	}
}

// heartbeat reports the node alive every interval, with its health every
// store.ReportEvery.
func (a *Agent) heartbeat(ctx context.Context) error {
	tick := time.NewTicker(a.cfg.HeartbeatInterval)
	defer tick.Stop()
	failing := false
	var rtt time.Duration // of the last heartbeat
	var reported time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		var r *store.Report
		if time.Since(reported) >= store.ReportEvery-a.cfg.HeartbeatInterval/2 {
			r = a.report(rtt)
		}
		hctx, cancel := context.WithTimeout(ctx, max(a.cfg.HeartbeatInterval, 100*time.Millisecond))
		sent := time.Now()
		err := a.store.Heartbeat(hctx, a.cfg.Node, r)
		rtt = time.Since(sent)
		cancel()
		if err == nil && r != nil {
			reported = sent
		}
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			a.log.Warn("heartbeat failed; steering goes on", "err", err)
			failing = true
		case err == nil && failing:
			a.log.Info("heartbeat reaches Redis again")
			failing = false
			if a.mirror != nil {
				// Redis may be a new, empty server.
				a.mirror.Resync()
			}
		}
	}
}

// report is the node's health for the controller; rtt is the last
// heartbeat's round trip.
func (a *Agent) report(rtt time.Duration) *store.Report {
	r := &store.Report{Node: a.cfg.Node, MapVersion: a.state.Load().table.Version(), Sessions: a.flows.Len(),
		ChecksMaps: a.cfg.Trust != nil}
	r.SetSessionKeys(a.cfg.SessionKeys)
	if a.mirror != nil {
		r.MirrorDepth = a.mirror.Stats.Depth.Load()
		r.MirrorDrops = a.mirror.Stats.Dropped.Load()
	}
	if q, ok := kernelQueues(); ok {
		r.QueueBacklog, r.QueueDrops = q.waiting, q.dropped+q.userDropped
	}
	if a.queue != nil {
		r.LatencyUS = a.queue.MaxLatency.Swap(0) / 1000
	}
	r.RTTUS = rtt.Microseconds()
	r.Unsteered = a.Counters.Unsteered.Load()
	r.Spoofed = a.Counters.Spoofed.Load()
	r.Untagged = a.Counters.Untagged.Load()
	a.offloadReport(r)
	if rp := a.rpReport.Load(); rp != nil {
		r.ReversePathDrops = *rp
	}
	return r
}

// deferToRedis holds a packet memory cannot decide while a lookup worker
// asks Redis about its flow; packets of a flow already being looked up join
// that lookup. It reports false, holding nothing, when nothing can be
// looked up (no mirror) or too many lookups are pending: the caller decides
// without Redis.
func (a *Agent) deferToRedis(key sessions.Key, w waiter) bool {
	if a.mirror == nil {
		// Nothing is mirrored, so nothing can be found.
		a.Counters.Unknown.Add(1)
		return false
	}
	a.lookupMu.Lock()
	if ws, ok := a.pending[key]; ok {
		a.pending[key] = append(ws, w)
		a.lookupMu.Unlock()
		return true
	}
	if len(a.pending) >= maxPendingLookups {
		a.lookupMu.Unlock()
		a.Counters.LookupsShed.Add(1)
		return false
	}
	a.pending[key] = []waiter{w}
	a.lookupMu.Unlock()
	select {
	case a.lookups <- key:
		return true
	default:
		a.lookupMu.Lock()
		delete(a.pending, key)
		a.lookupMu.Unlock()
		a.Counters.LookupsShed.Add(1)
		return false
	}
}

// lookupWorker answers deferred packets: a firewall's with a takeover
// decision, a gateway's with the pins another gateway gave the flow.
func (a *Agent) lookupWorker(ctx context.Context) error {
	for {
		var key sessions.Key
		select {
		case <-ctx.Done():
			// Nobody will answer what is still pending: let it go rather
			// than leave it queued. The kernel drops it with the queue.
			return nil
		case key = <-a.lookups:
		}
		lctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		rec, err := a.sessionsOf(a.state.Load()).Get(lctx, key)
		cancel()
		switch {
		case err == nil, errors.Is(err, store.ErrNoSession):
		case errors.Is(err, store.ErrMalformed):
			a.Counters.LookupErrors.Add(1)
			a.log.Warn("ignoring malformed session in Redis", "err", err)
			rec = nil
		default:
			a.Counters.LookupErrors.Add(1)
			a.log.Warn("session lookup failed", "flow", key.String(), "err", err)
			rec = nil
		}
		a.lookupMu.Lock()
		ws := a.pending[key]
		delete(a.pending, key)
		a.lookupMu.Unlock()
		st := a.state.Load()
		if st.role == Firewall {
			a.answerFirewall(st, key, rec, ws)
		} else {
			a.answerGateway(st, key, rec, ws)
		}
	}
}

// answerFirewall admits the waiting packets of a flow if rec lets this
// instance take it over, and drops them otherwise.
func (a *Agent) answerFirewall(st *state, key sessions.Key, rec *sessions.Record, ws []waiter) {
	var sess sessions.Session
	var from uint16
	ok := false
	if rec != nil {
		sess, from, ok = takeover(st, a.cfg.Node, key, rec)
		if !ok {
			a.log.Info("firewall: mirrored session is not this instance's to take", "flow", key.String(), "hops", rec.Hops)
		}
	}
	if ok {
		sess = a.flows.Put(sess)
		a.Counters.TakenOver.Add(1)
		if from != 0 {
			a.mirror.Enqueue(sessions.Op{Kind: sessions.OpTakeover, Hop: int8(st.table.Tenants()[st.table.TenantByName(sess.Tenant)].ChainPos(st.service)), From: from, Session: sess})
		} else {
			a.mirror.Enqueue(sessions.Op{Kind: sessions.OpState, Session: sess})
		}
		a.log.Info("firewall: took over flow", "flow", key.String(), "from_id", from)
	} else {
		a.Counters.Unknown.Add(1)
	}
	for i := range ws {
		w := &ws[i]
		if !ok {
			a.answer(w, nfq.Result{Verdict: nfq.Drop})
			continue
		}
		d := st.decide(&w.flow, w.reply, &sess.Pins, w.tenant)
		a.answer(w, nfq.Result{Verdict: nfq.Accept, Mark: steerBoth(st, w.mark, &w.flow, w.reply, d, &sess.Pins, w.gateway)})
	}
}

// answerGateway steers the waiting packets of a flow that is new to this
// gateway along the pins rec names, or, without a usable record (none yet,
// Redis down, malformed), along the map as for any new flow: a gateway
// never drops what policy did not ask it to.
func (a *Agent) answerGateway(st *state, key sessions.Key, rec *sessions.Record, ws []waiter) {
	var pins steering.Pins
	found := false
	if rec != nil {
		pins, found = rec.Pins(st.table)
	}
	if found {
		a.Counters.Joined.Add(1)
	}
	for i := range ws {
		w := &ws[i]
		var d steering.Decision
		var p *steering.Pins
		if found {
			p = &pins
			d = st.decide(&w.flow, w.reply, p, w.tenant)
			if i == 0 && d.Tenant >= 0 {
				now := time.Now().UnixNano()
				a.flows.Put(sessions.Session{Key: key, Tenant: rec.Tenant, Code: rec.Code, Pins: pins,
					Created: rec.Created * 1e6, Seen: now})
			}
		} else {
			if s, ok := a.flows.Get(key); ok {
				p = &s.Pins
				d = st.decide(&w.flow, w.reply, p, w.tenant)
			} else {
				d = st.decide(&w.flow, w.reply, nil, w.tenant)
				if d.Tenant >= 0 && d.Kind != steering.NotInChain {
					s := a.newSession(st, key, d, -1, false, false)
					p = &s.Pins
				}
			}
		}
		a.count(d)
		a.answer(w, nfq.Result{Verdict: nfq.Accept, Mark: steerBoth(st, w.mark, &w.flow, w.reply, d, p, w.gateway)})
	}
}

// recorded returns the local session of flow key that rec, its record as
// read from Redis, describes at this node's hop, and the hop's position in
// rec. A firewall's session carries the rule its recorded verdict names,
// and there is none without a verdict of this service that admitted the
// flow. ok is false if rec has no hop of this node's service.
func recorded(st *state, key sessions.Key, rec *sessions.Record) (s sessions.Session, pos int, ok bool) {
	t := st.table
	ti := t.TenantByName(rec.Tenant)
	if ti < 0 || st.service < 0 {
		return sessions.Session{}, 0, false
	}
	pos = t.Tenants()[ti].ChainPos(st.service)
	if pos < 0 || pos >= len(rec.Hops) {
		return sessions.Session{}, 0, false
	}
	s = sessions.Session{Key: key, Tenant: rec.Tenant, Code: rec.Code, Created: rec.Created * 1e6, Seen: time.Now().UnixNano(), Rule: -1}
	if st.role == Firewall {
		v, err := sessions.ParseFirewallState(rec.State[t.Services()[st.service].Name])
		if err != nil || !v.Admitted() {
			return sessions.Session{}, 0, false
		}
		s.Rule, s.TakenOver = v.Rule, v.Takeover
	}
	s.Pins, _ = rec.Pins(t) // pos is in both chains: checked above
	return s, pos, true
}

// takeover decides whether node, a firewall instance, may carry the flow
// Redis describes in rec: the firewall of rec must have admitted it, and
// node must hold one of its roles at the node's position, or the recorded
// primary must be one this node's map no longer steers to while node now
// holds the slot's primary role. It returns the local session to record
// and, if node takes the primary role from another instance, that
// instance's ID.
func takeover(st *state, node string, key sessions.Key, rec *sessions.Record) (sessions.Session, uint16, bool) {
	s, pos, ok := recorded(st, key, rec)
	if !ok {
		return sessions.Session{}, 0, false
	}
	t := st.table
	h := rec.Hops[pos]
	mine := h.Primary == node || h.Secondary == node
	if !mine {
		pr, _ := t.RolesFor(st.service, t.SlotOf(rec.Code))
		cur, ok := t.InstanceByName(h.Primary)
		mine = pr != nil && pr.Name == node && (!ok || cur.Out())
	}
	if !mine {
		return sessions.Session{}, 0, false
	}
	s.TakenOver = true
	self, _ := t.InstanceByName(node)
	var from uint16
	if h.Primary != node {
		from = s.Pins[pos]
	}
	s.Pins[pos] = self.ID
	return s, from, true
}

// resyncOps rewrites everything this node knows to Redis after Redis lost
// data or operations were dropped.
func (a *Agent) resyncOps() []sessions.Op {
	st := a.state.Load()
	var ops []sessions.Op
	for _, s := range a.flows.All() {
		kind, index := st.resyncOp(st.table.TenantByName(s.Tenant))
		ops = append(ops, sessions.Op{Kind: kind, Index: index, Session: s})
	}
	return ops
}

// recordWriter is the mirror's writer: it names each batch of operations
// on the map the node runs when the batch is written, and writes them
// through the store.
type recordWriter struct{ a *Agent }

var _ sessions.Writer = recordWriter{}

func (w recordWriter) Write(ctx context.Context, ops []sessions.Op) ([]sessions.Outcome, error) {
	st := w.a.state.Load()
	return w.a.sessionsOf(st).Write(ctx, sessions.Name(st.table, ops))
}

// adopt is told that another node created a session first: the flow takes
// that node's pins, here too, except a pin on an instance the node's map
// has taken away (down, migrating, gone). Such a record is older than the
// failover that moved the flow off that instance: a create rewritten after
// a Redis failover (the mirror's resync) finds the record written before
// it, and adopting its pins would steer the flow back to the dead
// instance until its secondary rewrote the record.
func (a *Agent) adopt(op sessions.Op, o sessions.Outcome) {
	if o.First == nil {
		return
	}
	t := a.state.Load().table
	first, _ := o.First.Pins(t)
	if first == op.Session.Pins {
		return
	}
	var changes [][2]uint16
	a.flows.Update(op.Session.Key, func(s *sessions.Session) {
		for i := range s.Pins {
			if in, ok := t.InstanceByID(first[i]); !ok || in.Leaving() {
				continue
			}
			if first[i] != s.Pins[i] {
				changes = append(changes, [2]uint16{s.Pins[i], first[i]})
				s.Pins[i] = first[i]
			}
		}
	})
	if a.ct == nil || len(changes) == 0 {
		return
	}
	k := op.Session.Key
	f := steering.Flow{Src: k.A, Dst: k.B, SrcPort: k.PA, DstPort: k.PB, Proto: k.Proto}
	a.ctMu.Lock()
	defer a.ctMu.Unlock()
	for _, zone := range a.state.Load().zonesOf(op.Session.Tenant) {
		_, err := a.ct.Remark(f, zone, func(mark uint32) (uint32, bool) {
			for _, reply := range []bool{false, true} {
				for _, c := range changes {
					if rules.Half(mark, reply) == rules.HalfValue(c[0]) {
						mark = rules.SetHalf(mark, reply, rules.HalfValue(c[1]))
					}
				}
			}
			return mark, true
		})
		if err != nil {
			a.log.Warn("adopting the first writer's pins", "flow", op.Session.Key.String(), "err", err)
		}
	}
}
