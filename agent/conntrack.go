package agent

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"golang.org/x/sys/unix"
)

// This file holds the agent's conntrack tasks: moving established flows
// off instances a map took away, and following live flows.

// repin moves every established flow pinned to an instance that t no
// longer steers to (down, or gone) to the instance holding the primary role
// of the flow's slot on t, which was its secondary: conntrack marks first
// (the kernel steers by them), then the local sessions.
//
// A flow moved off a dead forwarder also changes hands in Redis: the node
// that steers the flow's original direction to that hop rewrites the
// session's primary there (a takeover, conditional on the dead instance
// still holding it), so that listings, drains and nodes that join the
// flow later name the instance that carries it. A firewall's new primary
// writes its own takeover, with the verdict it read.
//
// Those takeovers are one script each, and a node may move many flows at
// once: they are queued with [sessions.Mirror.EnqueueLater], so that they
// cannot overflow the queue the packet path writes into.
func (a *Agent) repin(old, t *steering.Table) int {
	if a.ct == nil {
		return 0
	}
	gone := func(id uint16) (*steering.Instance, bool) {
		if in, ok := t.InstanceByID(id); ok {
			return in, in.Leaving()
		}
		in, ok := old.InstanceByID(id)
		return in, ok
	}
	// Quick exit: nothing pinned can be gone if t lost no instance.
	any := false
	for _, in := range old.Instances() {
		if _, g := gone(in.ID); g {
			any = true
			break
		}
	}
	if !any {
		return 0
	}
	type move struct {
		service  string
		from, to uint16
		reply    bool
	}
	moves := map[sessions.Key][]move{}
	// remark moves the halves of the mark of flow f that name a gone
	// instance, and notes the moves under the flow's key.
	remark := func(f *steering.Flow, mark uint32, key func() sessions.Key) (uint32, bool) {
		changed := false
		for _, reply := range []bool{false, true} {
			h := rules.Half(mark, reply)
			if h <= rules.MarkPass {
				continue
			}
			in, g := gone(uint16(h - 1))
			if !g {
				continue
			}
			svc := t.ServiceByName(old.Services()[in.Service].Name)
			if svc < 0 {
				continue // the whole service is gone: nothing to move to
			}
			to, _ := t.RolesFor(svc, t.SlotOf(steering.AffinityCode(f)))
			if to == nil || to.Down {
				continue
			}
			mark = rules.SetHalf(mark, reply, rules.HalfValue(to.ID))
			k := key()
			moves[k] = append(moves[k], move{old.Services()[in.Service].Name, in.ID, to.ID, reply})
			changed = true
		}
		return mark, changed
	}
	st := a.state.Load()
	a.ctMu.Lock()
	// First the flows this node decided, each by its own entries: a
	// walk of the table costs the kernel a visit to every bucket of the
	// host's conntrack hash, however few flows it holds (about 12 ms of
	// CPU for 262,144 buckets here, three times that on a busy node),
	// and a failover waits for it. Then the walk, for what the node does
	// not track (flows of an earlier run of the agent, a zoned flow's
	// second entry) and past the first repinFirst.
	n := 0
	pinned, _ := a.flows.PinnedTo(func(id uint16) bool { _, g := gone(id); return g }, repinFirst)
	for _, s := range pinned {
		k := s.Key
		if k.Proto != unix.IPPROTO_TCP && k.Proto != unix.IPPROTO_UDP {
			continue // Remark would walk the table for it: the walk below does
		}
		f := steering.Flow{Src: k.A, Dst: k.B, SrcPort: k.PA, DstPort: k.PB, Proto: k.Proto}
		for _, zone := range st.zonesOf(s.Tenant) {
			ok, err := a.ct.Remark(f, zone, func(mark uint32) (uint32, bool) {
				return remark(&f, mark, func() sessions.Key { return k })
			})
			if err != nil {
				a.log.Warn("moving a flow off a dead instance", "flow", k.String(), "err", err)
			}
			if ok {
				n++
			}
		}
	}
	walked, err := a.ct.Walk(func(c rules.Conn) (uint32, bool) {
		return remark(&c.Flow, c.Mark, func() sessions.Key { return st.keyOf(&c) })
	})
	a.ctMu.Unlock()
	n += walked
	if err != nil {
		a.log.Warn("moving flows off dead instances", "err", err)
	}
	var takeovers []sessions.Op
	for k, ms := range moves {
		a.flows.Update(k, func(s *sessions.Session) {
			ti := t.TenantByName(s.Tenant)
			if ti < 0 {
				return
			}
			var taken []sessions.Op // written once the pins are all in s
			for _, m := range ms {
				for i, svc := range t.Tenants()[ti].Chain {
					if t.Services()[svc].Name != m.service {
						continue
					}
					s.Pins[i] = m.to
					if from, ok := t.InstanceByID(m.from); ok && from.Down && !m.reply &&
						t.Services()[svc].Function != steering.FunctionFirewall {
						taken = append(taken, sessions.Op{Kind: sessions.OpTakeover, Hop: int8(i), From: m.from})
					}
				}
			}
			for _, op := range taken {
				op.Session = *s
				takeovers = append(takeovers, op)
			}
		})
	}
	if a.mirror != nil {
		// Off the packet path, and as many as the node had flows on the
		// dead instance: written in the room new flows leave.
		a.mirror.EnqueueLater(takeovers)
	}
	a.Counters.Repinned.Add(uint64(n))
	return n
}

// repinFirst is how many of its flows on a dead instance a node moves one
// by one, before walking conntrack for the rest: two netlink round trips
// each, against a walk's tens of milliseconds.
const repinFirst = 256

// letGo forgets the sessions of the node's own instance once the map it
// runs takes the instance away with its flows (Leaving: migrating, or
// down), and returns how many. Those sessions were handed over (drain
// --migrate) or are taken over by the instance's secondaries, and the
// records name their new primaries. The node's conntrack still tracks the
// flows, which now cross other instances and never end here: a walk would
// refresh each session, indexing it under this instance again, and once
// the flow ended elsewhere and its new primary deleted the session, the
// refresh would find it gone and write it back (a resync).
func (a *Agent) letGo(st *state) int {
	if !st.role.hostsInstance() {
		return 0
	}
	in := st.table.Instances()[st.node.Instance]
	if !in.Leaving() {
		return 0
	}
	return a.flows.ForgetPinnedTo(in.ID)
}

// letGoOf forgets the session of a refresh that found it no longer the
// node's (sessions.Outcome.Moved): taken over or handed over while this
// node did not learn it from its map (a version it skipped, say). A new
// flow decided on the key since the refresh was queued is kept.
func (a *Agent) letGoOf(op sessions.Op) { a.flows.DeleteCreated(op.Session.Key, op.Session.Created) }

// refresh walks conntrack every RefreshInterval: live flows are marked
// seen and, where this node holds an instance of their chain, refreshed in
// Redis when their life there runs low (refreshDue); sessions whose
// connection is gone or closed (TCP in TIME_WAIT or CLOSE) are forgotten,
// and deleted from Redis by the instance that ends them (state.deletes).
func (a *Agent) refresh(ctx context.Context) error {
	// Until it succeeds, at each walk: Redis may be down at the start.
	earlierRunResumed := false
	resume := func() {
		n, left, err := a.resume(ctx)
		if err != nil {
			a.log.Warn("resuming the flows of the agent's earlier run; trying again at the next walk", "err", err)
			return
		}
		earlierRunResumed = true
		if n+left > 0 {
			a.log.Info("resumed the flows of the agent's earlier run", "flows", n, "not_this_instances", left)
		}
	}
	resume()
	// Nodes started together (a host's agents, a fleet after an upgrade)
	// would all walk conntrack at the same moment, every interval: start
	// at a random point of the first one.
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(rand.N(a.cfg.RefreshInterval)):
	}
	tick := time.NewTicker(a.cfg.RefreshInterval)
	defer tick.Stop()
	// Kept from round to round: a gateway's live set is as big as its
	// flow table.
	var live sessions.KeySet
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if !earlierRunResumed {
			resume()
		}
		a.checkReversePath(true)
		live.Clear()
		st := a.state.Load()
		a.ctMu.Lock()
		_, err := a.ct.Walk(func(c rules.Conn) (uint32, bool) {
			// A closed connection waits out late segments in conntrack
			// (TIME_WAIT: two minutes) but carries no more data: its
			// session is over, not refreshed for those minutes.
			if !c.Closed {
				live.Add(st.keyOf(&c))
			}
			return c.Mark, false
		})
		a.ctMu.Unlock()
		if err != nil {
			a.log.Warn("reading conntrack", "err", err)
			continue
		}
		now := time.Now()
		grace := now.Add(-2 * a.cfg.RefreshInterval).UnixNano()
		// Mirror writes are queued without blocking, as Sweep asks. A node
		// that writes neither (a gateway, a node without Redis) passes no
		// functions: the pass then only marks and forgets.
		var refresh func(sessions.Session) bool
		var gone func(sessions.Session)
		if a.mirror != nil && st.role.refreshes() {
			refresh = func(s sessions.Session) bool {
				return a.mirror.Enqueue(sessions.Op{Kind: sessions.OpRefresh, Session: s})
			}
		}
		if a.mirror != nil && st.role.hostsInstance() {
			gone = func(s sessions.Session) {
				if st.deletes(s.Tenant) {
					a.mirror.Enqueue(sessions.Op{Kind: sessions.OpDelete, Session: s})
				}
			}
		}
		a.flows.Sweep(&live, now.UnixNano(), grace, a.refreshDue(now), refresh, gone)
	}
}

// refreshDue is the time before which a session's life in Redis must have
// been extended last for the walk at now to extend it again. A refresh
// is two PEXPIREs and an index entry per role: refreshing every live
// session at every walk would cost Redis, for long flows, several times
// what their creates do. A session is refreshed once its remaining life
// is three intervals or less: the walk after next could still refresh it
// in time, should one walk fail or its write wait in the queue. With the
// defaults (a 2-minute TTL, a walk every 10 s) that is one refresh every
// 90 s instead of every 10 s. A TTL of three intervals or less refreshes
// at every walk.
func (a *Agent) refreshDue(now time.Time) int64 {
	life := a.cfg.RedisSessionTTL - 3*a.cfg.RefreshInterval
	if life <= 0 {
		return math.MaxInt64
	}
	return now.Add(-life).UnixNano()
}

// resume puts back in the local table the live flows that an earlier run
// of the agent decided here: the kernel still steers them by their
// connmarks, so their packets no longer reach this run. Without them an
// instance would refresh none of their sessions, which would expire from
// Redis while the flows live on (a failover would then find none), and
// delete none when they end. Each is read from Redis and resumed only
// where its record names this instance the primary at its service's hop,
// as its session (roles, creation, a firewall's verdict), its life in
// Redis unknown: the next walk refreshes it. It reports how many it
// resumed and how many were left (no record, or another instance's).
// It runs once, as the walks start, on an instance: a gateway neither
// refreshes nor deletes.
func (a *Agent) resume(ctx context.Context) (n, left int, err error) {
	st := a.state.Load()
	if a.ct == nil || a.mirror == nil || !st.role.hostsInstance() || st.service < 0 {
		return 0, 0, nil
	}
	if self, ok := st.table.InstanceByName(a.cfg.Node); !ok || self.Leaving() {
		return 0, 0, nil // its flows are another instance's now (letGo)
	}
	var keys []sessions.Key
	a.ctMu.Lock()
	_, err = a.ct.Walk(func(c rules.Conn) (uint32, bool) {
		// Decided: a half names a hop or passes (the chain's last
		// instance passes both ways). A flow of no tenant passes too.
		if c.Closed || rules.Half(c.Mark, false) == 0 && rules.Half(c.Mark, true) == 0 {
			return c.Mark, false
		}
		k := st.keyOf(&c)
		if k.Tag == 0 && !tenantOf(st.table, c.Flow.Src) && !tenantOf(st.table, c.Flow.Dst) {
			return c.Mark, false
		}
		if _, known := a.flows.Get(k); !known {
			keys = append(keys, k)
		}
		return c.Mark, false
	})
	a.ctMu.Unlock()
	if err != nil {
		return 0, 0, fmt.Errorf("reading conntrack: %w", err)
	}
	redis := a.sessionsOf(st)
	for len(keys) > 0 {
		batch := keys[:min(len(keys), resumeBatch)]
		keys = keys[len(batch):]
		recs, errs, err := redis.GetAll(ctx, batch)
		switch {
		case ctx.Err() != nil:
			return n, left, nil
		case err != nil:
			// Redis did not answer: the next walk tries again, for the
			// flows not resumed yet.
			return n, left, fmt.Errorf("reading sessions: %w", err)
		}
		for i, k := range batch {
			s, ok := resumed(st, a.cfg.Node, k, recs[i], errs[i])
			if !ok {
				left++
				continue
			}
			a.flows.Put(s)
			a.Counters.Resumed.Add(1)
			n++
		}
	}
	return n, left, nil
}

// resumeBatch is how many sessions resume reads a round trip.
const resumeBatch = 512

// resumed returns the local session of flow k that rec, its record as
// read from Redis (err, if it could not be), describes, if rec names node
// the primary at this node's hop.
func resumed(st *state, node string, k sessions.Key, rec *sessions.Record, err error) (sessions.Session, bool) {
	if err != nil || rec == nil {
		return sessions.Session{}, false
	}
	s, pos, ok := recorded(st, k, rec)
	if !ok || rec.Hops[pos].Primary != node {
		return sessions.Session{}, false
	}
	return s, true
}
