package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/keytest"
	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/signing"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/nfsteer/nfsteer/tests/redislab"
)

// TestACLRoles runs every store operation of each role as a Redis 7 user
// with exactly the grant ACLRules gives it, on a real server: each works.
// What a role must not do is refused, with ErrNoPermission and Redis's
// message naming the refused command or key: an agent cannot publish a
// map, nor write the health scores or the lease; the controller cannot
// write sessions.
func TestACLRoles(t *testing.T) {
	ctx := context.Background()
	srv := redislab.Start(t, redislab.Options{})
	as := func(role store.ACLRole) *store.Store {
		t.Helper()
		rules, err := store.ACLRules(role)
		if err != nil {
			t.Fatal(err)
		}
		return open(t, srv.SetUser(t, "nfsteer-"+string(role), "pw-"+string(role), rules...))
	}
	op, ctl, agent := as(store.ACLOperator), as(store.ACLController), as(store.ACLAgent)
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	refused := func(what string, err error, names string) {
		t.Helper()
		if !errors.Is(err, store.ErrNoPermission) || !strings.Contains(err.Error(), names) {
			t.Errorf("%s: %v; want ErrNoPermission naming %q", what, err, names)
		}
	}
	drain := func(name string) store.Change {
		return func(p *steering.Published) (*steering.Published, error) { return p.Drain(name) }
	}

	// The operator publishes.
	_, err := op.Publish(ctx, replace(labmap.Map(t)))
	must("operator: publish", err)

	// An agent follows the map, beats, writes and reads sessions.
	watched := make(chan store.Announcement, 16)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() {
		done <- agent.Watch(wctx, time.Hour, func(_ context.Context, a store.Announcement) { watched <- a })
	}()
	defer func() { cancel(); <-done }()
	<-watched // subscribed
	held, err := agent.Live(ctx)
	must("agent: live map", err)
	must("agent: heartbeat", agent.Heartbeat(ctx, "fw-1", &store.Report{}))
	must("agent: restarting", agent.Restarting(ctx, "fw-2", time.Second))
	tab := labTable(t)
	gw, fw := agent.NewSessions("", "", time.Minute), agent.NewSessions("fw", "fw-1", time.Minute)
	a := acmeSession(tab, 41000)
	write := func(who string, w *store.Sessions, ops ...sessions.Op) {
		t.Helper()
		out, err := w.Write(ctx, sessions.Name(tab, ops))
		must(who+": writing sessions", err)
		for _, o := range out {
			must(who+": a session write", o.Refused)
		}
	}
	write("gateway", gw, sessions.Op{Kind: sessions.OpCreate, Session: a})
	write("firewall", fw, sessions.Op{Kind: sessions.OpCreateState, Session: a},
		sessions.Op{Kind: sessions.OpState, Session: a}, sessions.Op{Kind: sessions.OpRefresh, Session: a})
	rec, err := gw.Get(ctx, a.Key)
	must("agent: reading a session", err)
	sec, _ := tab.InstanceByName(rec.Hops[0].Secondary)
	taken := a
	taken.Pins[0] = sec.ID
	write("firewall", fw, sessions.Op{Kind: sessions.OpTakeover, Hop: 0, From: a.Pins[0], Session: taken})
	// fw-1 once shared an index with fw-9, which the map no longer has.
	must("operator: registering an index", store.ClientOf(op).SAdd(ctx, "nfsteer:i:{fw-1}:pairs", "p:fw-9").Err())
	fw.Known = func(in string) bool { _, ok := tab.InstanceByName(in); return ok }
	if n, err := fw.PruneIndexNames(ctx); err != nil || n != 1 {
		t.Errorf("agent: pruning the names of gone indexes = %d, %v; want 1", n, err)
	}

	// The controller holds the lease, reads the heartbeats, scores and
	// publishes.
	ok, err := ctl.Lease(ctx, "ctl-1", time.Second)
	must("controller: lease", err)
	if !ok {
		t.Fatal("controller: lease not taken")
	}
	_, err = ctl.Pulse(ctx)
	must("controller: pulse", err)
	_, _, err = ctl.Beats(ctx)
	must("controller: beats", err)
	must("controller: scores", ctl.SetScores(ctx, map[string]int{"fw-1": 90}))
	_, err = ctl.LiveAfter(ctx, held)
	must("controller: live map", err)
	_, err = ctl.Publish(ctx, drain("fw-2"))
	must("controller: publish", err)
	_, err = ctl.Health(ctx)
	must("controller: Redis health", err)
	must("controller: release", ctl.ReleaseLease(ctx, "ctl-1"))

	// The agent sees the controller's version.
	if _, err := agent.LiveAfter(ctx, held); err != nil {
		t.Errorf("agent: catching up: %v", err)
	}

	// The operator reads everything status and sessions show, and drains
	// with a hand-over.
	_, err = op.Session(ctx, rec.Flow)
	must("operator: session", err)
	_, _, err = op.List(ctx, sec.Name, store.RolePrimary)
	must("operator: list", err)
	_, err = op.Count(ctx, sec.Name, store.RolePrimary)
	must("operator: count", err)
	_, _, err = op.Beats(ctx)
	must("operator: beats", err)
	_, err = op.Controllers(ctx)
	must("operator: controllers", err)
	_, err = op.Scores(ctx)
	must("operator: scores", err)
	_, err = op.LeaseHolder(ctx)
	must("operator: lease holder", err)
	_, err = op.Health(ctx)
	must("operator: Redis health", err)
	live, err := op.Live(ctx)
	must("operator: live map", err)
	next, err := live.Drain(sec.Name)
	must("drain", err)
	nt, err := steering.CompilePublished(next)
	must("compile", err)
	_, _, err = op.Handover(ctx, sec.Name, nt)
	must("operator: hand-over", err)
	// And reseals them, with a key, trusting the unsealed records of
	// this test's agents.
	sealer := as(store.ACLOperator)
	sealer.SealSessions(signing.SessionKeys{Seal: keytest.SessionKey(t), Unsealed: true})
	resealed := 0
	for _, in := range nt.Instances() {
		n, _, err := sealer.Reseal(ctx, in.Name)
		must("operator: reseal", err)
		resealed += n
	}
	if resealed == 0 {
		t.Errorf("operator: resealed nothing; the test proves nothing")
	}

	// What a role must not do.
	_, err = agent.Publish(ctx, drain("dlp-1"))
	refused("agent: publish", err, "NOPERM")
	refused("agent: scores", agent.SetScores(ctx, map[string]int{"fw-1": 0}), "NOPERM")
	_, err = agent.Lease(ctx, "agent", time.Second)
	refused("agent: lease", err, "NOPERM")
	_, err = ctl.NewSessions("fw", "fw-1", time.Minute).Write(ctx, sessions.Name(tab, []sessions.Op{{Kind: sessions.OpCreate, Session: acmeSession(tab, 41001)}}))
	refused("controller: sessions", err, "NOPERM")
}

// TestACLRulesUnknownRole: a role nfsteer does not have is named.
func TestACLRulesUnknownRole(t *testing.T) {
	if _, err := store.ACLRules("admin"); err == nil || !strings.Contains(err.Error(), `"admin"`) {
		t.Errorf("ACLRules(admin) = %v, want an error naming it", err)
	}
}

// TestSessionsUnderAnOlderGrant: an agent whose user has the grant of a
// version that did not trim the indexes (no ZREMRANGEBYSCORE) or did not
// register them (no SADD) still writes its sessions whole, index entries
// included: the trim and the registration are best-effort.
func TestSessionsUnderAnOlderGrant(t *testing.T) {
	ctx := context.Background()
	srv := redislab.Start(t, redislab.Options{})
	admin := store.ClientOf(open(t, srv.URL))
	rules, err := store.ACLRules(store.ACLAgent)
	if err != nil {
		t.Fatal(err)
	}
	agent := open(t, srv.SetUser(t, "old-agent", "pw", append(rules, "-zremrangebyscore", "-sadd")...))
	tab := labTable(t)
	gw := agent.NewSessions("", "", time.Minute)
	a := acmeSession(tab, 41100)
	out, err := gw.Write(ctx, sessions.Name(tab, []sessions.Op{{Kind: sessions.OpCreate, Session: a}}))
	if err != nil || len(out) != 1 || out[0].Refused != nil {
		t.Fatalf("Write = %+v, %v; want written", out, err)
	}
	rec, err := gw.Get(ctx, a.Key)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if n, err := admin.ZScore(ctx, store.RolesKey(rec.Hops), rec.Flow).Result(); err != nil || n <= 0 {
		t.Errorf("index entry of %s: %v, %v; want it indexed", rec.Flow, n, err)
	}
}
