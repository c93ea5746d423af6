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

// TestSealedSessions: with the fleet's session key, records and states
// are sealed when written, taken over and handed over, and read back
// whole; a record or state that no holder of the key wrote (by hand,
// under another key, copied from another flow, edited) is refused as
// malformed, where a takeover would read it and where a listing would.
func TestSealedSessions(t *testing.T) {
	ctx := context.Background()
	url := redislab.Start(t, redislab.Options{}).URL
	fleet := keytest.SessionKey(t)
	s, other := open(t, url), open(t, url)
	s.SealSessions(signing.SessionKeys{Seal: fleet})
	other.SealSessions(signing.SessionKeys{Seal: keytest.SessionKey(t)})
	c := store.ClientOf(s)
	tab := labTable(t)
	gw, fw := s.NewSessions("", "", time.Minute), s.NewSessions("fw", "fw-1", time.Minute)
	write := func(w *store.Sessions, ops ...sessions.Op) {
		t.Helper()
		out, err := w.Write(ctx, sessions.Name(tab, ops))
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range out {
			if o.Refused != nil {
				t.Fatal(o.Refused)
			}
		}
	}
	admit := func(sport uint16) sessions.Session {
		t.Helper()
		a := acmeSession(tab, sport)
		a.Rule = 0
		write(gw, sessions.Op{Kind: sessions.OpCreate, Session: a})
		write(fw, sessions.Op{Kind: sessions.OpCreateState, Session: a})
		return a
	}

	a := admit(42000)
	rec, err := gw.Get(ctx, a.Key)
	if err != nil {
		t.Fatalf("reading a sealed session: %v", err)
	}
	if !strings.Contains(rec.State["fw"], `"verdict":"allow"`) {
		t.Errorf("state %q, want the firewall's verdict", rec.State["fw"])
	}
	raw, _ := c.Get(ctx, "nfsteer:s:{"+rec.Flow+"}").Result()
	if !strings.HasPrefix(raw, `{"mac":"`) {
		t.Errorf("stored record %s is not sealed", raw)
	}

	// A takeover and a hand-over keep it sealed; the takeover's script
	// is given again to a Redis that forgot it.
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	sec, _ := tab.InstanceByName(rec.Hops[0].Secondary)
	taken := a
	taken.Pins[0] = sec.ID
	write(fw, sessions.Op{Kind: sessions.OpTakeover, Hop: 0, From: a.Pins[0], Session: taken})
	if rec, err := gw.Get(ctx, a.Key); err != nil || rec.Hops[0].Primary != sec.Name {
		t.Fatalf("after a takeover: %+v, %v; want %s primary, sealed", rec, err, sec.Name)
	}
	live, err := steeringLab(t).Drain(sec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if moved, bad, err := s.Handover(ctx, sec.Name, compiled(t, live)); err != nil || len(bad) != 0 || moved != 1 {
		t.Fatalf("Handover = %d, %v, %v; want 1 moved", moved, bad, err)
	}
	if _, err := gw.Get(ctx, a.Key); err != nil {
		t.Fatalf("after a hand-over: %v", err)
	}

	// Forgeries, each on a session of its own.
	for _, tc := range []struct {
		name   string
		forge  func(flow string) error
		reason string
	}{
		{"a record written by hand", func(flow string) error {
			raw, _ := c.Get(ctx, "nfsteer:s:{"+flow+"}").Result()
			_, rest, _ := strings.Cut(raw, `",`)
			return c.Set(ctx, "nfsteer:s:{"+flow+"}", "{"+rest, time.Minute).Err()
		}, "no MAC"},
		{"the roles edited", func(flow string) error {
			raw, _ := c.Get(ctx, "nfsteer:s:{"+flow+"}").Result()
			return c.Set(ctx, "nfsteer:s:{"+flow+"}", strings.Replace(raw, `"primary":"fw-`, `"primary":"fw-9`, 1), time.Minute).Err()
		}, "does not match"},
		{"a record copied from another flow", func(flow string) error {
			raw, _ := c.Get(ctx, "nfsteer:s:{"+acmeSession(tab, 42000).Key.String()+"}").Result()
			return c.Set(ctx, "nfsteer:s:{"+flow+"}", raw, time.Minute).Err()
		}, "does not match"},
		{"a verdict written by hand", func(flow string) error {
			return c.HSet(ctx, "nfsteer:st:{"+flow+"}", "st:fw", `{"verdict":"allow","rule":0}`).Err()
		}, "state of fw"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := admit(uint16(42100 + len(tc.name)))
			if err := tc.forge(b.Key.String()); err != nil {
				t.Fatal(err)
			}
			_, err := gw.Get(ctx, b.Key)
			if !errors.Is(err, store.ErrMalformed) || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("Get of a forged session: %v; want ErrMalformed saying %q", err, tc.reason)
			}
			recs, bad, err := s.List(ctx, "fw-1", store.RolePrimary)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				if r.Flow == b.Key.String() {
					t.Errorf("List returned the forged session")
				}
			}
			if len(bad) == 0 && b.Pins[0] == mustID(t, tab, "fw-1") {
				t.Errorf("List did not report the forged session")
			}
		})
	}

	// A firewall that creates a connection's session keeps its verdict
	// in the record, under the record's seal: edited there, it is refused.
	conn := acmeSession(tab, 42300)
	conn.Rule = 0
	write(fw, sessions.Op{Kind: sessions.OpCreateState, Index: true, Session: conn})
	if rec, err := gw.Get(ctx, conn.Key); err != nil || !strings.Contains(rec.State["fw"], `"verdict":"allow"`) {
		t.Fatalf("a sealed record with its creator's verdict: %+v, %v", rec, err)
	}
	connKey := "nfsteer:s:{" + conn.Key.String() + "}"
	raw, _ = c.Get(ctx, connKey).Result()
	if !strings.Contains(raw, `\"rule\":0`) {
		t.Fatalf("record %s does not carry the verdict", raw)
	}
	if err := c.Set(ctx, connKey, strings.Replace(raw, `\"rule\":0`, `\"rule\":1`, 1), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := gw.Get(ctx, conn.Key); !errors.Is(err, store.ErrMalformed) || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("Get of a record whose verdict was edited: %v; want ErrMalformed", err)
	}

	// Another key's records are no better than unsealed ones.
	if _, err := other.NewSessions("", "", time.Minute).Get(ctx, a.Key); !errors.Is(err, store.ErrMalformed) {
		t.Errorf("Get under another key: %v; want ErrMalformed", err)
	}
}

// TestSessionKeyRotation: a fleet starts sealing, and changes its key,
// one node at a time. At every step of the procedures README gives, any
// two nodes of adjacent steps read each other's records and firewall
// states, so that a failover between them keeps the flow; nodes a step
// apart or more may not, and the table says which.
func TestSessionKeyRotation(t *testing.T) {
	ctx := context.Background()
	url := redislab.Start(t, redislab.Options{}).URL
	tab := labTable(t)
	k1, k2 := keytest.SessionKey(t), keytest.SessionKey(t)
	keys := map[string]signing.SessionKeys{
		// Starting to seal: accept the key, then seal with it while
		// still accepting unsealed records, then seal only.
		"none":                {},
		"accept k1":           {Accept: []*signing.SessionKey{k1}},
		"seal k1 + unsealed":  {Seal: k1, Unsealed: true},
		"seal k1":             {Seal: k1},
		"seal k1 + accept k2": {Seal: k1, Accept: []*signing.SessionKey{k2}},
		"seal k2 + accept k1": {Seal: k2, Accept: []*signing.SessionKey{k1}},
		"seal k2":             {Seal: k2},
	}
	for i, tc := range []struct {
		writer, reader string
		ok             bool
	}{
		// Adjacent steps, both ways.
		{"none", "accept k1", true},
		{"accept k1", "none", true},
		{"accept k1", "seal k1 + unsealed", true},
		{"seal k1 + unsealed", "accept k1", true},
		{"seal k1 + unsealed", "seal k1", true},
		{"seal k1", "seal k1 + unsealed", true},
		{"seal k1", "seal k1 + accept k2", true},
		{"seal k1 + accept k2", "seal k2 + accept k1", true},
		{"seal k2 + accept k1", "seal k1 + accept k2", true},
		{"seal k2 + accept k1", "seal k2", true},
		{"seal k2", "seal k2 + accept k1", true},
		// A step skipped.
		{"seal k1 + unsealed", "none", false}, // cannot read a sealed state
		{"none", "seal k1", false},
		{"accept k1", "seal k1", false},
		{"seal k1", "seal k2 + accept k1", true},
		{"seal k2 + accept k1", "seal k1", false},
		{"seal k1", "seal k2", false},
	} {
		t.Run(tc.writer+" to "+tc.reader, func(t *testing.T) {
			w, r := open(t, url), open(t, url)
			w.SealSessions(keys[tc.writer])
			r.SealSessions(keys[tc.reader])
			a := admitted(t, w, tab, uint16(43000+i))
			rec, err := r.NewSessions("", "", time.Minute).Get(ctx, a.Key)
			if err == nil {
				_, err = sessions.ParseFirewallState(rec.State["fw"])
			}
			if (err == nil) != tc.ok {
				t.Errorf("reading a session written by %q with %q: %v; want readable %v", tc.writer, tc.reader, err, tc.ok)
			}
		})
	}
}

// admitted writes, through s, acme's session from source port sport as
// the lab's gateway and firewall do (the create, then the create with
// the firewall's verdict), and returns it.
func admitted(t testing.TB, s *store.Store, tab *steering.Table, sport uint16) sessions.Session {
	t.Helper()
	a := acmeSession(tab, sport)
	a.Rule = 0
	for _, w := range []struct {
		s    *store.Sessions
		kind sessions.OpKind
	}{{s.NewSessions("", "", time.Minute), sessions.OpCreate}, {s.NewSessions("fw", "fw-1", time.Minute), sessions.OpCreateState}} {
		if _, err := w.s.Write(context.Background(), sessions.Name(tab, []sessions.Op{{Kind: w.kind, Session: a}})); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// steeringLab is the lab map as a local version.
func steeringLab(t testing.TB) *steering.Published {
	t.Helper()
	p, err := steering.Local(labmap.Map(t))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func compiled(t testing.TB, p *steering.Published) *steering.Table {
	t.Helper()
	tab, err := steering.CompilePublished(p)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func mustID(t testing.TB, tab *steering.Table, name string) uint16 {
	t.Helper()
	in, ok := tab.InstanceByName(name)
	if !ok {
		t.Fatalf("no instance %s", name)
	}
	return in.ID
}

// TestReseal: after a fleet changes keys, resealing rewrites the records
// and states of an instance's sessions that the old key sealed, or none,
// so that a node that trusts only the new key reads them; their life in
// Redis is kept; a second pass has nothing to do; an entry no trusted key
// sealed is left alone and reported.
func TestReseal(t *testing.T) {
	ctx := context.Background()
	url := redislab.Start(t, redislab.Options{}).URL
	tab := labTable(t)
	k1, k2 := keytest.SessionKey(t), keytest.SessionKey(t)
	old, unsealed, rotated, next, other := open(t, url), open(t, url), open(t, url), open(t, url), open(t, url)
	old.SealSessions(signing.SessionKeys{Seal: k1})
	rotated.SealSessions(signing.SessionKeys{Seal: k2, Accept: []*signing.SessionKey{k1}, Unsealed: true})
	next.SealSessions(signing.SessionKeys{Seal: k2})
	other.SealSessions(signing.SessionKeys{Seal: keytest.SessionKey(t)})
	instance := func(a sessions.Session) string {
		in, _ := tab.InstanceByID(a.Pins[0])
		return in.Name
	}
	// Three sessions whose firewall primary is one instance: one sealed
	// with the old key, one unsealed, one under a key nobody trusts.
	var ports []uint16
	for sport := uint16(44000); len(ports) < 3; sport++ {
		if len(ports) == 0 || instance(acmeSession(tab, sport)) == instance(acmeSession(tab, ports[0])) {
			ports = append(ports, sport)
		}
	}
	sealedOld, plain, forged := admitted(t, old, tab, ports[0]), admitted(t, unsealed, tab, ports[1]), admitted(t, other, tab, ports[2])
	c := store.ClientOf(old)
	ttl0 := c.PTTL(ctx, "nfsteer:s:{"+sealedOld.Key.String()+"}").Val()
	if _, err := next.NewSessions("", "", time.Minute).Get(ctx, sealedOld.Key); err == nil {
		t.Fatal("a node with only the new key read a record sealed with the old one before the reseal")
	}
	if _, _, err := (open(t, url)).Reseal(ctx, instance(sealedOld)); err == nil || !strings.Contains(err.Error(), "--session-key") {
		t.Errorf("Reseal without a sealing key: %v; want it refused, naming --session-key", err)
	}
	n, bad, err := rotated.Reseal(ctx, instance(sealedOld))
	if err != nil {
		t.Fatal(err)
	}
	// Two records and two firewall states; the forged session is
	// reported and left.
	if n != 4 {
		t.Errorf("resealed %d records and states; want 4", n)
	}
	if len(bad) == 0 || !strings.Contains(bad[0].Error(), forged.Key.String()) {
		t.Errorf("reported %v; want the session sealed with an untrusted key, %s", bad, forged.Key)
	}
	if _, err := other.NewSessions("", "", time.Minute).Get(ctx, forged.Key); err != nil {
		t.Errorf("the untrusted session was changed: its own key no longer reads it (%v)", err)
	}
	for _, a := range []sessions.Session{sealedOld, plain} {
		rec, err := next.NewSessions("", "", time.Minute).Get(ctx, a.Key)
		if err == nil {
			_, err = sessions.ParseFirewallState(rec.State["fw"])
		}
		if err != nil {
			t.Errorf("after the reseal, a node with only the new key reads %s: %v", a.Key, err)
		}
	}
	if ttl := c.PTTL(ctx, "nfsteer:s:{"+sealedOld.Key.String()+"}").Val(); ttl <= 0 || ttl > ttl0 {
		t.Errorf("the resealed record's life: %v, before %v; want it kept", ttl, ttl0)
	}
	if n, _, err := rotated.Reseal(ctx, instance(sealedOld)); err != nil || n != 0 {
		t.Errorf("a second reseal rewrote %d (%v); want nothing", n, err)
	}
}
