package agent

import (
	"context"
	"time"

	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
)

// This file holds the agent's conntrack tasks: moving established flows
// off instances a map took away, and following live flows.

// repin moves every established flow pinned to an instance that t no
// longer steers to (down, or gone) to the instance holding the primary role
// of the flow's slot on t, which was its secondary: conntrack marks first
// (the kernel steers by them), then the local sessions.
func (a *Agent) repin(old, t *steering.Table) int {
	if a.ct == nil {
		return 0
	}
	gone := func(id uint16) (*steering.Instance, bool) {
		if in, ok := t.InstanceByID(id); ok {
			return in, in.Down || in.Migrating
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
		service string
		to      uint16
	}
	moves := map[sessions.Key][]move{}
	a.ctMu.Lock()
	n, err := a.ct.Walk(func(c rules.Conn) (uint32, bool) {
		f, mark := c.Flow, c.Mark
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
			code := steering.AffinityCode(&f)
			to, _ := t.RolesFor(svc, t.SlotOf(code))
			if to == nil || to.Down {
				continue
			}
			mark = rules.SetHalf(mark, reply, rules.HalfValue(to.ID))
			k := sessions.KeyOf(&f)
			moves[k] = append(moves[k], move{old.Services()[in.Service].Name, to.ID})
			changed = true
		}
		return mark, changed
	})
	a.ctMu.Unlock()
	if err != nil {
		a.log.Warn("moving flows off dead instances", "err", err)
	}
	for k, ms := range moves {
		a.flows.Update(k, func(s *sessions.Session) {
			ti := t.TenantByName(s.Tenant)
			if ti < 0 {
				return
			}
			for _, m := range ms {
				for i, svc := range t.Tenants()[ti].Chain {
					if t.Services()[svc].Name == m.service {
						s.Pins[i] = m.to
					}
				}
			}
		})
	}
	a.Counters.Repinned.Add(uint64(n))
	return n
}

// refresh walks conntrack every RefreshInterval: live flows are marked
// seen and, where this node holds an instance of their chain, refreshed in
// Redis; sessions whose connection is gone or closed (TCP in TIME_WAIT or
// CLOSE) are forgotten, and deleted from Redis by the instance that held
// them.
func (a *Agent) refresh(ctx context.Context) error {
	tick := time.NewTicker(a.cfg.RefreshInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		live := map[sessions.Key]bool{}
		a.ctMu.Lock()
		_, err := a.ct.Walk(func(c rules.Conn) (uint32, bool) {
			// A closed connection waits out late segments in conntrack
			// (TIME_WAIT: two minutes) but carries no more data: its
			// session is over, not refreshed for those minutes.
			if !c.Closed {
				live[sessions.KeyOf(&c.Flow)] = true
			}
			return c.Mark, false
		})
		a.ctMu.Unlock()
		if err != nil {
			a.log.Warn("reading conntrack", "err", err)
			continue
		}
		st := a.state.Load()
		now := time.Now()
		grace := now.Add(-2 * a.cfg.RefreshInterval).UnixNano()
		for _, s := range a.flows.All() {
			switch {
			case live[s.Key]:
				a.flows.Update(s.Key, func(s *sessions.Session) { s.Seen = now.UnixNano() })
				if st.role.refreshes() && a.mirror != nil {
					a.mirror.Enqueue(sessions.Op{Kind: sessions.OpRefresh, Session: s})
				}
			case max(s.Created, s.Seen) < grace:
				a.flows.Delete(s.Key)
				if st.role.deletes() && a.mirror != nil {
					a.mirror.Enqueue(sessions.Op{Kind: sessions.OpDelete, Session: s})
				}
			}
		}
	}
}
