package store_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/nfsteer/nfsteer/tests/redislab"
	"github.com/redis/go-redis/v9"
)

// backends runs fn against a single server and a three-master Redis
// Cluster, both real redis-server processes.
func backends(t *testing.T, fn func(t *testing.T, url string)) {
	t.Run("single", func(t *testing.T) { fn(t, redislab.Start(t, redislab.Options{}).URL) })
	t.Run("cluster", func(t *testing.T) { fn(t, redislab.StartCluster(t, 3).URL) })
}

func open(t testing.TB, url string) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// labTable is the lab map compiled, as a node holds it.
func labTable(t testing.TB) *steering.Table {
	t.Helper()
	p, err := steering.Local(labmap.Map(t))
	if err != nil {
		t.Fatal(err)
	}
	tab, err := steering.CompilePublished(p)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func replace(m *steering.Map) store.Change {
	return func(live *steering.Published) (*steering.Published, error) {
		p := &steering.Published{Map: m}
		if live != nil {
			p.Down, p.Drained = live.Down, live.Drained
		}
		return p, nil
	}
}

// publishedLab opens the store at url with the lab map published as its
// first version.
func publishedLab(t testing.TB, url string) *store.Store {
	t.Helper()
	s := open(t, url)
	if _, err := s.Publish(context.Background(), replace(labmap.Map(t))); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMapVersions(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		ctx := context.Background()
		s := open(t, url)
		if _, err := s.Live(ctx); !errors.Is(err, store.ErrNoMap) {
			t.Fatalf("Live on empty Redis = %v, want ErrNoMap", err)
		}
		m := labmap.Map(t)
		p1, err := s.Publish(ctx, replace(m))
		if err != nil {
			t.Fatal(err)
		}
		m2 := labmap.Map(t)
		delete(m2.Services["fw"].Instances, "fw-1")
		m2.Services["fw"].Instances["fw-4"] = steering.Addresses{"10.200.0.14", "fd00:200::14"}
		p2, err := s.Publish(ctx, replace(m2))
		if err != nil {
			t.Fatal(err)
		}
		if p1.Version != 1 || p2.Version != 2 {
			t.Fatalf("versions %d, %d; want 1, 2", p1.Version, p2.Version)
		}
		if p2.IDs["fw-2"] != p1.IDs["fw-2"] || p2.IDs["fw-4"] != p1.IDs["fw-1"] {
			t.Errorf("IDs not kept: v1 %v, v2 %v", p1.IDs, p2.IDs)
		}
		live, err := s.Live(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p2.At.IsZero() || p2.At.After(time.Now()) {
			t.Errorf("published at %v, want when the write was sent", p2.At)
		}
		if diff := cmp.Diff(p2.Published, live, cmpopts.IgnoreUnexported(steering.Published{})); diff != "" {
			t.Errorf("live map (-published +live):\n%s", diff)
		}

		// An explicit version that is not newer is refused, and nothing
		// changes.
		_, err = s.Publish(ctx, func(*steering.Published) (*steering.Published, error) {
			return &steering.Published{Version: 2, Map: m}, nil
		})
		if !errors.Is(err, store.ErrStaleVersion) || !strings.Contains(err.Error(), "live version 2") {
			t.Fatalf("publishing version 2 over 2: %v, want ErrStaleVersion naming the live version", err)
		}
		// An invalid change is refused before anything is written.
		bad := labmap.Map(t)
		bad.Tenants["acme"].Chain = []string{"fw", "nope"}
		if _, err := s.Publish(ctx, replace(bad)); !errors.Is(err, steering.ErrInvalidMap) {
			t.Fatalf("publishing an invalid map: %v, want ErrInvalidMap", err)
		}
		if v, _ := s.LiveVersion(ctx); v != 2 {
			t.Fatalf("live version %d after refused changes, want 2", v)
		}

		// Concurrent publishers: every change lands, each on its own
		// version.
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.Publish(ctx, func(live *steering.Published) (*steering.Published, error) {
					m, err := live.Map.AddTenant(fmt.Sprintf("t%d", i), steering.Tenant{Prefixes: []string{fmt.Sprintf("10.%d.0.0/16", 150+i)}, Chain: []string{"fw"}})
					if err != nil {
						return nil, err
					}
					return live.WithMap(m), nil
				})
				if err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if v, _ := s.LiveVersion(ctx); v != 10 {
			t.Fatalf("live version %d after 8 concurrent publishes over 2, want 10", v)
		}
		// A change that changes nothing publishes nothing.
		p, err := s.Publish(ctx, func(live *steering.Published) (*steering.Published, error) { return live.Clone(), nil })
		if !errors.Is(err, store.ErrUnchanged) || p.Published == nil || p.Version != 10 {
			t.Fatalf("publishing the live map again: %+v, %v; want ErrUnchanged and version 10", p, err)
		}
		if v, _ := s.LiveVersion(ctx); v != 10 {
			t.Fatalf("live version %d after an unchanged publish, want 10", v)
		}
	})
}

// Watch passes on every announcement in order; a version that changes
// only tenants and lists carries the delta from the version before, which
// turns that version, as read from Redis, into the new live one.
func TestWatch(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		ctx, cancel := context.WithCancel(context.Background())
		s := open(t, url)
		got := make(chan store.Announcement, 100)
		done := make(chan error)
		go func() {
			done <- s.Watch(ctx, time.Hour, func(_ context.Context, a store.Announcement) { got <- a })
		}()
		defer func() { cancel(); <-done }()
		next := func() store.Announcement {
			t.Helper()
			select {
			case a := <-got:
				return a
			case <-time.After(5 * time.Second):
				t.Fatal("nothing announced")
			}
			return store.Announcement{}
		}
		// The first call comes with the subscription.
		if a := next(); a.Version != 0 {
			t.Fatalf("first check announced %d, want 0 (subscribed)", a.Version)
		}
		steps := []struct {
			name   string
			change store.Change
			delta  bool
		}{
			{"first map", replace(labmap.Map(t)), false},
			{"drain", func(p *steering.Published) (*steering.Published, error) { return p.Drain("fw-2") }, true},
			{"tenant added", func(p *steering.Published) (*steering.Published, error) {
				m, err := p.Map.AddTenant("initech", steering.Tenant{Prefixes: []string{"10.30.0.0/16"}, Chain: []string{"dlp"}})
				return p.WithMap(m), err
			}, true},
			{"instance added", func(p *steering.Published) (*steering.Published, error) {
				m, err := p.Map.AddInstance("dlp", "dlp-3", steering.Addresses{"10.200.0.23", "fd00:200::23"})
				return p.WithMap(m), err
			}, false},
		}
		var before *steering.Published
		for i, st := range steps {
			if _, err := s.Publish(ctx, st.change); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			a := next()
			if a.Version != uint64(i+1) || (a.Delta != nil) != st.delta {
				t.Fatalf("%s: announced version %d with delta %t, want %d with delta %t", st.name, a.Version, a.Delta != nil, i+1, st.delta)
			}
			live, err := s.Live(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if a.Delta != nil {
				applied, err := before.Apply(a.Delta)
				if err != nil {
					t.Fatalf("%s: applying the announced delta: %v", st.name, err)
				}
				if diff := cmp.Diff(live, applied, cmpopts.IgnoreUnexported(steering.Published{})); diff != "" {
					t.Errorf("%s: delta applied (-live +applied):\n%s", st.name, diff)
				}
			}
			before = live
		}
	})
}

func flowKey(sport uint16) sessions.Key {
	f := steering.Flow{Src: netip.MustParseAddr("10.10.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: sport, DstPort: 5201, Proto: 6}
	return sessions.KeyOf(&f)
}

// acmeSession is the session a node on tab records for acme's flow from
// source port sport (flowKey), pinned as the map decides.
func acmeSession(tab *steering.Table, sport uint16) sessions.Session {
	k := flowKey(sport)
	f := steering.Flow{Src: k.A, Dst: k.B, SrcPort: k.PA, DstPort: k.PB, Proto: 6}
	code := steering.AffinityCode(&f)
	pins := tab.PinsFor(tab.TenantOf(k.A), tab.SlotOf(code))
	return sessions.Session{Key: k, Tenant: "acme", Code: code, Pins: pins, Created: time.Now().UnixNano(), Rule: -1}
}

// firstPins is what a node on tab pins a flow to after its create found
// the session o reports.
func firstPins(tab *steering.Table, o sessions.Outcome) steering.Pins {
	if o.First == nil {
		return steering.Pins{}
	}
	p, _ := o.First.Pins(tab)
	return p
}

// TestSessions writes and reads sessions as the nodes do, one step a
// subtest on one server; each step uses flows of its own, so a failing
// step hides none of the others.
func TestSessions(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		ctx := context.Background()
		s := open(t, url)
		tab := labTable(t)
		gw := s.NewSessions("", "", time.Minute)
		fwSide := s.NewSessions("fw", "fw-1", time.Minute)
		write := func(t *testing.T, w *store.Sessions, ops ...sessions.Op) []sessions.Outcome {
			t.Helper()
			out, err := w.Write(ctx, sessions.Name(tab, ops))
			if err != nil || len(out) != len(ops) {
				t.Fatalf("Write(%d ops) = %+v, %v", len(ops), out, err)
			}
			return out
		}
		op := func(kind sessions.OpKind, s sessions.Session) sessions.Op { return sessions.Op{Kind: kind, Session: s} }
		get := func(t *testing.T, k sessions.Key) *sessions.Record {
			t.Helper()
			rec, err := gw.Get(ctx, k)
			if err != nil {
				t.Fatalf("Get(%s): %v", k, err)
			}
			return rec
		}
		// otherFirewall returns s pinned at the firewall hop to the
		// firewall it was not pinned to, and that firewall.
		otherFirewall := func(s sessions.Session) (sessions.Session, *steering.Instance) {
			fw, _ := tab.InstanceByName("fw-1")
			if s.Pins[0] == fw.ID {
				fw, _ = tab.InstanceByName("fw-2")
			}
			s.Pins[0] = fw.ID
			return s, fw
		}
		// expires checks that an entry expires unless refreshed, from its
		// create on: a flow that ends before its first refresh, on a node
		// that dies, must not stay in Redis for good.
		expires := func(t *testing.T, k sessions.Key) {
			t.Helper()
			if rec := get(t, k); rec.TTL <= 0 || rec.TTL > time.Minute {
				t.Errorf("session %s after its create has TTL %v; want (0, 1m]", k, rec.TTL)
			}
		}
		// indexed reports whether one of inst's indexes of role, as
		// readers find them, holds an entry for flow, expired or not.
		indexed := func(t *testing.T, inst, role, flow string) bool {
			t.Helper()
			keys, err := store.IndexKeys(s, inst, role)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range keys {
				err := store.ClientOf(s).ZScore(ctx, k, flow).Err()
				if err == nil {
					return true
				}
				if !errors.Is(err, redis.Nil) {
					t.Fatal(err)
				}
			}
			return false
		}

		t.Run("a refresh of a session Redis does not hold says it was lost", func(t *testing.T) {
			if out := write(t, gw, op(sessions.OpRefresh, acmeSession(tab, 39999))); !out[0].Lost {
				t.Errorf("outcome %+v; want Lost", out[0])
			}
		})

		t.Run("first writer wins", func(t *testing.T) {
			a := acmeSession(tab, 40000)
			if out := write(t, gw, op(sessions.OpCreate, a)); out[0].Existed {
				t.Fatalf("first create found a session: %+v", out[0])
			}
			expires(t, a.Key)
			b, fw := otherFirewall(a)
			out := write(t, gw, op(sessions.OpCreate, b))
			if !out[0].Existed || firstPins(tab, out[0]) != a.Pins {
				t.Errorf("second create: %+v; want Existed with pins %v", out[0], a.Pins)
			}
			// It indexed its own roles before it knew it lost; those the
			// first writer's lack are gone again.
			if indexed(t, fw.Name, store.RolePrimary, b.Key.String()) {
				t.Errorf("%s still indexed as primary of %s after its create lost", fw.Name, b.Key)
			}
		})

		t.Run("a firewall's create carries its verdict into an existing session", func(t *testing.T) {
			a := acmeSession(tab, 40010)
			write(t, gw, op(sessions.OpCreate, a))
			b, _ := otherFirewall(a)
			b.Rule = 1
			out := write(t, fwSide, op(sessions.OpCreateState, b))
			if !out[0].Existed || firstPins(tab, out[0]) != a.Pins {
				t.Errorf("create with state: %+v; want Existed with pins %v", out[0], a.Pins)
			}
			if rec := get(t, a.Key); !strings.Contains(rec.State["fw"], `"rule":1`) {
				t.Errorf("state %v; want rule 1", rec.State)
			}
		})

		t.Run("a batch of creates indexes every session under its roles", func(t *testing.T) {
			var batch []sessions.Op
			for sport := uint16(40100); sport < 40110; sport++ {
				batch = append(batch, op(sessions.OpCreate, acmeSession(tab, sport)))
			}
			out := write(t, gw, batch...)
			for i, o := range batch {
				if out[i].Existed {
					t.Errorf("batch create %d found a session", i)
				}
				rec := get(t, o.Session.Key)
				for _, h := range rec.Hops {
					if !indexed(t, h.Primary, store.RolePrimary, rec.Flow) || !indexed(t, h.Secondary, store.RoleSecondary, rec.Flow) {
						t.Errorf("batch session %s not indexed under %+v", rec.Flow, h)
					}
				}
			}
		})

		t.Run("a writer trims the expired entries of the indexes it adds to", func(t *testing.T) {
			// A chain without a firewall: nobody deletes its sessions,
			// which expire in Redis and must not stay in the indexes.
			short := s.NewSessions("", "", 200*time.Millisecond)
			store.TrimEvery(short, 0)
			gone, kept := acmeSession(tab, 40200), acmeSession(tab, 40201)
			// The same slot, so the same indexes.
			kept.Code, kept.Pins = gone.Code, gone.Pins
			write(t, short, op(sessions.OpCreate, gone))
			rec := get(t, gone.Key)
			time.Sleep(300 * time.Millisecond)
			write(t, short, op(sessions.OpCreate, kept))
			for _, h := range rec.Hops {
				for _, e := range []struct{ inst, role string }{{h.Primary, store.RolePrimary}, {h.Secondary, store.RoleSecondary}} {
					if indexed(t, e.inst, e.role, rec.Flow) {
						t.Errorf("expired session %s still in the %s index of %s", rec.Flow, e.role, e.inst)
					}
					if !indexed(t, e.inst, e.role, kept.Key.String()) {
						t.Errorf("new session %s not in the %s index of %s", kept.Key, e.role, e.inst)
					}
				}
			}
		})
		t.Run("a firewall that creates first leaves the indexing to the gateway", func(t *testing.T) {
			first := acmeSession(tab, 40200)
			first.Rule = 0
			if out := write(t, fwSide, op(sessions.OpCreateState, first)); out[0].Existed {
				t.Fatalf("firewall's create found a session: %+v", out[0])
			}
			expires(t, first.Key)
			// The gateway's losing create indexes the firewall's roles,
			// not its own.
			late, other := otherFirewall(first)
			if out := write(t, gw, op(sessions.OpCreate, late)); !out[0].Existed || firstPins(tab, out[0]) != first.Pins {
				t.Fatalf("gateway's late create: %+v; want Existed with pins %v", out[0], first.Pins)
			}
			winner, _ := tab.InstanceByID(first.Pins[0])
			flow := first.Key.String()
			if !indexed(t, winner.Name, store.RolePrimary, flow) || indexed(t, other.Name, store.RolePrimary, flow) {
				t.Errorf("after a lost create, %s primary: %v, %s primary: %v; want the first writer's only",
					winner.Name, indexed(t, winner.Name, store.RolePrimary, flow), other.Name, indexed(t, other.Name, store.RolePrimary, flow))
			}
		})

		t.Run("a firewall's create that says so indexes, and a lost one indexes the first writer's roles", func(t *testing.T) {
			a := acmeSession(tab, 40310)
			a.Rule = 0
			if out := write(t, fwSide, sessions.Op{Kind: sessions.OpCreateState, Index: true, Session: a}); out[0].Existed {
				t.Fatalf("firewall's create found a session: %+v", out[0])
			}
			rec := get(t, a.Key)
			for _, h := range rec.Hops {
				if !indexed(t, h.Primary, store.RolePrimary, rec.Flow) || !indexed(t, h.Secondary, store.RoleSecondary, rec.Flow) {
					t.Errorf("session %s not indexed under %+v", rec.Flow, h)
				}
			}
			expires(t, a.Key)
			// Its verdict is in the record: the session has no state hash.
			if diff := cmp.Diff(map[string]string{"fw": a.FirewallState()}, rec.State); diff != "" {
				t.Errorf("state (-want +got):\n%s", diff)
			}
			if n := store.ClientOf(s).Exists(ctx, "nfsteer:st:{"+rec.Flow+"}").Val(); n != 0 {
				t.Errorf("a state hash exists for a session whose creator kept its state in the record")
			}
			// Another firewall's indexing create of the same flow, on other
			// pins, loses: its roles' entries go, the first writer's stay,
			// and its state is written to the hash, which overrides the
			// record's.
			b, other := otherFirewall(a)
			b.Rule = 1
			if out := write(t, fwSide, sessions.Op{Kind: sessions.OpCreateState, Index: true, Session: b}); !out[0].Existed || firstPins(tab, out[0]) != a.Pins {
				t.Fatalf("second create: %+v; want Existed with pins %v", out[0], a.Pins)
			}
			if got := get(t, a.Key).State["fw"]; got != b.FirewallState() {
				t.Errorf("state after a lost create %q, want its writer's %q", got, b.FirewallState())
			}
			winner, _ := tab.InstanceByID(a.Pins[0])
			if !indexed(t, winner.Name, store.RolePrimary, rec.Flow) || indexed(t, other.Name, store.RolePrimary, rec.Flow) {
				t.Errorf("after a lost create, %s primary: %v, %s primary: %v; want the first writer's only",
					winner.Name, indexed(t, winner.Name, store.RolePrimary, rec.Flow), other.Name, indexed(t, other.Name, store.RolePrimary, rec.Flow))
			}
		})

		// admitted creates acme's session from sport as a gateway does
		// and writes the firewall primary's verdict into it, as the
		// primary does; it returns the session, its record and the
		// primary.
		admitted := func(t *testing.T, sport uint16) (sessions.Session, *sessions.Record, *steering.Instance) {
			t.Helper()
			a := acmeSession(tab, sport)
			a.Rule = 0
			write(t, gw, op(sessions.OpCreate, a))
			write(t, fwSide, op(sessions.OpState, a))
			primary, _ := tab.InstanceByID(a.Pins[0])
			return a, get(t, a.Key), primary
		}

		t.Run("the primary writes its state; the record and indexes show it", func(t *testing.T) {
			_, rec, primary := admitted(t, 40300)
			if rec.Hops[0].Primary != primary.Name || rec.Hops[0].Service != "fw" || rec.Hops[0].Secondary == "" ||
				!strings.Contains(rec.State["fw"], `"verdict":"allow"`) || rec.TTL <= 0 {
				t.Fatalf("record %+v", rec)
			}
			for _, c := range []struct{ inst, role string }{{primary.Name, store.RolePrimary}, {rec.Hops[0].Secondary, store.RoleSecondary}} {
				recs, bad, err := s.List(ctx, c.inst, c.role)
				if err != nil || len(bad) > 0 || !slices.ContainsFunc(recs, func(r *sessions.Record) bool { return r.Flow == rec.Flow }) {
					t.Errorf("List(%s, %s) = %v, %v, %v; want the session among them", c.inst, c.role, recs, bad, err)
				}
			}
		})

		t.Run("the secondary takes over; the old primary's delete leaves the session, the new one's removes all", func(t *testing.T) {
			a, rec, primary := admitted(t, 40400)
			secondary := rec.Hops[0].Secondary
			sec, _ := tab.InstanceByName(secondary)
			taken := a
			taken.Pins[0] = sec.ID
			write(t, fwSide, sessions.Op{Kind: sessions.OpTakeover, Hop: 0, From: primary.ID, Session: taken})
			// The script rewrote the record through Lua's cjson: nothing
			// but the roles at the hop taken over (and the times) may
			// change.
			want := *rec
			want.Hops = slices.Clone(rec.Hops)
			want.Hops[0].Primary, want.Hops[0].Secondary = secondary, primary.Name
			if diff := cmp.Diff(&want, get(t, a.Key), cmpopts.IgnoreFields(sessions.Record{}, "Updated", "TTL", "State")); diff != "" {
				t.Errorf("record after takeover (-want +got):\n%s", diff)
			}
			// The takeover took the hop's old entry (the dead primary's,
			// with this node its secondary) away; List trusts each
			// record's roles in any case.
			listed := func(inst string) bool {
				recs, _, err := s.List(ctx, inst, store.RolePrimary)
				if err != nil {
					t.Fatal(err)
				}
				return slices.ContainsFunc(recs, func(r *sessions.Record) bool { return r.Flow == rec.Flow })
			}
			if !listed(secondary) || listed(primary.Name) {
				t.Errorf("after takeover, List(primary): %s %v, %s %v; want the new primary only",
					secondary, listed(secondary), primary.Name, listed(primary.Name))
			}
			// The old primary's conntrack forgets the flow (a UDP entry
			// times out there while the flow lives on its secondary).
			write(t, s.NewSessions("fw", primary.Name, time.Minute), op(sessions.OpDelete, a))
			if diff := cmp.Diff(&want, get(t, a.Key), cmpopts.IgnoreFields(sessions.Record{}, "Updated", "TTL", "State")); diff != "" {
				t.Errorf("record after the old primary's delete (-want +got):\n%s", diff)
			}
			if !listed(secondary) || !indexed(t, primary.Name, store.RoleSecondary, rec.Flow) {
				t.Errorf("the old primary's delete took the session's index entries: listed under %s %v, under %s as secondary %v",
					secondary, listed(secondary), primary.Name, indexed(t, primary.Name, store.RoleSecondary, rec.Flow))
			}
			write(t, s.NewSessions("fw", secondary, time.Minute), op(sessions.OpDelete, taken))
			if _, err := gw.Get(ctx, a.Key); !errors.Is(err, store.ErrNoSession) {
				t.Errorf("Get after delete = %v, want ErrNoSession", err)
			}
			if indexed(t, secondary, store.RolePrimary, rec.Flow) || indexed(t, primary.Name, store.RoleSecondary, rec.Flow) {
				t.Errorf("deleted session still indexed under its roles")
			}
		})

		t.Run("the node in front hands a dead forwarder's hop over, writing no state", func(t *testing.T) {
			a, rec, _ := admitted(t, 40450)
			dead, _ := tab.InstanceByName(rec.Hops[1].Primary)
			next, _ := tab.InstanceByName(rec.Hops[1].Secondary)
			moved := a
			moved.Pins[1] = next.ID
			moved.Rule = 3 // a state this writer must not write: the hop is not its own
			write(t, fwSide, sessions.Op{Kind: sessions.OpTakeover, Hop: 1, From: dead.ID, Session: moved})
			got := get(t, a.Key)
			if got.Hops[1].Primary != next.Name || got.Hops[0] != rec.Hops[0] {
				t.Errorf("hops after the handover: %+v; want %s as dlp's primary and fw's hop unchanged (%+v)", got.Hops, next.Name, rec.Hops[0])
			}
			if diff := cmp.Diff(rec.State, got.State); diff != "" {
				t.Errorf("state after another hop's handover (-want +got):\n%s", diff)
			}
			if !indexed(t, next.Name, store.RolePrimary, rec.Flow) {
				t.Errorf("%s's primary index lacks the session it took over", next.Name)
			}
		})

		t.Run("the verdict a firewall's create kept in the record survives another hop's handover", func(t *testing.T) {
			a := acmeSession(tab, 40460)
			a.Rule = 2
			write(t, fwSide, sessions.Op{Kind: sessions.OpCreateState, Index: true, Session: a})
			rec := get(t, a.Key)
			dead, _ := tab.InstanceByName(rec.Hops[1].Primary)
			next, _ := tab.InstanceByName(rec.Hops[1].Secondary)
			moved := a
			moved.Pins[1] = next.ID
			write(t, fwSide, sessions.Op{Kind: sessions.OpTakeover, Hop: 1, From: dead.ID, Session: moved})
			got := get(t, a.Key)
			if got.Hops[1].Primary != next.Name {
				t.Errorf("hops after the handover: %+v; want %s as dlp's primary", got.Hops, next.Name)
			}
			if diff := cmp.Diff(map[string]string{"fw": a.FirewallState()}, got.State); diff != "" {
				t.Errorf("state after the handover (-want +got):\n%s", diff)
			}
		})

		t.Run("a delete removes only a session whose record names its writer the primary", func(t *testing.T) {
			// other is the instance of service that is not name.
			other := func(service, name string) string {
				for _, in := range tab.Instances() {
					if tab.Services()[in.Service].Name == service && in.Name != name {
						return in.Name
					}
				}
				t.Fatalf("no other instance of %s", service)
				return ""
			}
			for i, c := range []struct {
				name string
				// service and by say who writes the delete: the primary
				// at service's hop, the other instance of the service,
				// or ("", "") a gateway.
				service, by string
				// unreadable: the record is not one the writer can read;
				// recreate: the batch creates the flow again after the
				// delete, with the other firewall pinned.
				unreadable, recreate bool
				kept                 bool
			}{
				{name: "the firewall primary", service: "fw", by: "primary"},
				{name: "the other firewall", service: "fw", by: "other", kept: true},
				{name: "the dlp primary", service: "dlp", by: "primary"},
				{name: "the other dlp", service: "dlp", by: "other", kept: true},
				{name: "a gateway", kept: true},
				{name: "the primary, of a record it cannot read", service: "fw", by: "primary", unreadable: true, kept: true},
				{name: "the other firewall, with a create of the flow after it", service: "fw", by: "other", recreate: true},
			} {
				t.Run(c.name, func(t *testing.T) {
					a := acmeSession(tab, uint16(40600+i))
					write(t, gw, op(sessions.OpCreate, a))
					rec := get(t, a.Key)
					key := "nfsteer:s:{" + rec.Flow + "}"
					if c.unreadable {
						store.ClientOf(s).Set(ctx, key, `{"flow":`, time.Minute)
					}
					inst := ""
					for _, h := range rec.Hops {
						if h.Service == c.service {
							inst = h.Primary
							if c.by == "other" {
								inst = other(h.Service, h.Primary)
							}
						}
					}
					ops := []sessions.Op{op(sessions.OpDelete, a)}
					again, fw := otherFirewall(a)
					if c.recreate {
						ops = append(ops, op(sessions.OpCreate, again))
					}
					write(t, s.NewSessions(c.service, inst, time.Minute), ops...)

					switch {
					case c.recreate:
						if got := get(t, a.Key); got.Hops[0].Primary != fw.Name {
							t.Errorf("after a delete and a create in one batch, hops %+v; want the create's, %s at fw", got.Hops, fw.Name)
						}
					case c.unreadable:
						if v, err := store.ClientOf(s).Get(ctx, key).Result(); err != nil || v != `{"flow":` {
							t.Errorf("the unreadable record after the delete: %q, %v; want it as it was", v, err)
						}
					case c.kept:
						if diff := cmp.Diff(rec, get(t, a.Key), cmpopts.IgnoreFields(sessions.Record{}, "TTL")); diff != "" {
							t.Errorf("record after %s's delete (-want +got):\n%s", inst, diff)
						}
						for _, h := range rec.Hops {
							if !indexed(t, h.Primary, store.RolePrimary, rec.Flow) || !indexed(t, h.Secondary, store.RoleSecondary, rec.Flow) {
								t.Errorf("after %s's delete, the %s hop's index entries are gone", inst, h.Service)
							}
						}
					default:
						if _, err := gw.Get(ctx, a.Key); !errors.Is(err, store.ErrNoSession) {
							t.Errorf("Get after %s's delete = %v, want ErrNoSession", inst, err)
						}
						for _, h := range rec.Hops {
							if indexed(t, h.Primary, store.RolePrimary, rec.Flow) || indexed(t, h.Secondary, store.RoleSecondary, rec.Flow) {
								t.Errorf("after %s's delete, the %s hop is still indexed", inst, h.Service)
							}
						}
					}
				})
			}
		})

		t.Run("a refresh extends only a session whose record names its writer the primary", func(t *testing.T) {
			short := s.NewSessions("", "", 10*time.Second) // the creates' life, which a refresh extends to a minute
			for i, c := range []struct {
				name string
				// service and other say who refreshes: the primary at
				// service's hop or, with other, the other instance of
				// the service, pinned there in its own table (a flow
				// handed over or taken over from it); "" a gateway.
				service string
				other   bool
				missing bool
				want    sessions.Outcome
			}{
				{name: "the firewall primary", service: "fw"},
				{name: "the other firewall", service: "fw", other: true, want: sessions.Outcome{Moved: true}},
				{name: "the dlp primary", service: "dlp"},
				{name: "the other dlp", service: "dlp", other: true, want: sessions.Outcome{Moved: true}},
				{name: "a gateway, which holds no role"},
				{name: "the firewall primary, of a session Redis lost", service: "fw", missing: true, want: sessions.Outcome{Lost: true}},
			} {
				t.Run(c.name, func(t *testing.T) {
					a := acmeSession(tab, uint16(40650+i))
					if !c.missing {
						write(t, short, op(sessions.OpCreate, a))
					}
					mine, inst := a, ""
					for hop, svc := range []string{"fw", "dlp"} {
						if svc != c.service {
							continue
						}
						in, _ := tab.InstanceByID(a.Pins[hop])
						for _, o := range tab.Instances() {
							if c.other && tab.Services()[o.Service].Name == svc && o.ID != in.ID {
								in = &o
								break
							}
						}
						mine.Pins[hop], inst = in.ID, in.Name
					}
					out := write(t, s.NewSessions(c.service, inst, time.Minute), op(sessions.OpRefresh, mine))
					if diff := cmp.Diff(c.want, out[0]); diff != "" {
						t.Errorf("outcome (-want +got):\n%s", diff)
					}
					if c.missing {
						if _, err := gw.Get(ctx, a.Key); !errors.Is(err, store.ErrNoSession) {
							t.Errorf("Get after the refresh of a lost session = %v, want ErrNoSession", err)
						}
						return
					}
					rec := get(t, a.Key)
					if extended := rec.TTL > 10*time.Second; extended == c.want.Moved {
						t.Errorf("after %s's refresh the session has %v to live; want it extended %t", inst, rec.TTL, !c.want.Moved)
					}
					if c.other && indexed(t, inst, store.RolePrimary, rec.Flow) {
						t.Errorf("after %s's refresh, it is indexed as the session's primary; the record names %+v", inst, rec.Hops)
					}
				})
			}
		})

		t.Run("a create that lost and the delete of its flow in one batch leave nothing", func(t *testing.T) {
			a := acmeSession(tab, 40650)
			write(t, gw, op(sessions.OpCreate, a))
			rec := get(t, a.Key)
			// This firewall's create names the other dlp: it loses to
			// the gateway's record, whose roles it then indexes and
			// whose state hash takes its verdict, before the delete.
			b := a
			for _, in := range tab.Instances() {
				if tab.Services()[in.Service].Name == "dlp" && in.ID != a.Pins[1] {
					b.Pins[1] = in.ID
				}
			}
			b.Rule = 1
			w := s.NewSessions("fw", rec.Hops[0].Primary, time.Minute)
			write(t, w, sessions.Op{Kind: sessions.OpCreateState, Index: true, Session: b}, op(sessions.OpDelete, b))
			if _, err := gw.Get(ctx, a.Key); !errors.Is(err, store.ErrNoSession) {
				t.Errorf("Get after the batch = %v, want ErrNoSession", err)
			}
			if n, err := store.ClientOf(s).Exists(ctx, "nfsteer:st:{"+rec.Flow+"}").Result(); err != nil || n != 0 {
				t.Errorf("the state hash outlived the delete (%v)", err)
			}
			for _, h := range rec.Hops {
				if indexed(t, h.Primary, store.RolePrimary, rec.Flow) || indexed(t, h.Secondary, store.RoleSecondary, rec.Flow) {
					t.Errorf("after the batch, the %s hop is still indexed", h.Service)
				}
			}
		})

		t.Run("a hop whose primary the map no longer has is the node's own primary's", func(t *testing.T) {
			known := func(name string) bool { _, ok := tab.InstanceByName(name); return ok }
			for i, c := range []struct {
				name  string
				kind  sessions.OpKind
				known func(string) bool
				want  string // the fw hop's primary after the write; "" for no session
			}{
				{"a takeover, the map known", sessions.OpTakeover, known, "fw-1"},
				{"a takeover, the map not known", sessions.OpTakeover, nil, "fw-9"},
				{"a delete, the map known", sessions.OpDelete, known, ""},
				{"a delete, the map not known", sessions.OpDelete, nil, "fw-9"},
			} {
				t.Run(c.name, func(t *testing.T) {
					flow := flowKey(uint16(40700 + i)).String()
					// fw-9 held the hop and was removed from the map.
					rec := sessions.Record{Flow: flow, Tenant: "acme", Hops: []sessions.Hop{
						{Service: "fw", Primary: "fw-9", Secondary: "fw-1"}, {Service: "dlp", Primary: "dlp-1", Secondary: "dlp-2"}}}
					if _, err := gw.Write(ctx, []sessions.Named{{Kind: sessions.OpCreate, Record: rec}}); err != nil {
						t.Fatal(err)
					}
					// fw-1 carries the flow now, by its own roles.
					ours := rec
					ours.Hops = []sessions.Hop{{Service: "fw", Primary: "fw-1", Secondary: "fw-2"}, rec.Hops[1]}
					w := s.NewSessions("fw", "fw-1", time.Minute)
					w.Known = c.known
					if _, err := w.Write(ctx, []sessions.Named{{Kind: c.kind, Hop: 0, From: "", Record: ours, State: "admitted:0"}}); err != nil {
						t.Fatal(err)
					}
					got, err := gw.Get(ctx, flowKey(uint16(40700+i)))
					switch {
					case c.want == "" && !errors.Is(err, store.ErrNoSession):
						t.Errorf("Get = %+v, %v; want no session", got, err)
					case c.want != "" && (err != nil || got.Hops[0].Primary != c.want):
						t.Errorf("Get = %+v, %v; want %s at fw", got, err, c.want)
					}
					if c.kind != sessions.OpTakeover {
						return
					}
					// The indexes follow the record: the session leaves
					// the index of the roles it had (fw-9's, a name the
					// node's map does not have) only if the takeover
					// rewrote it, and is listed under fw-1 only then.
					taken := c.want == "fw-1"
					if got := indexed(t, "fw-9", store.RolePrimary, flow); got != !taken {
						t.Errorf("after the takeover, indexed under fw-9 = %t; want %t", got, !taken)
					}
					if got := indexed(t, "fw-1", store.RolePrimary, flow); got != taken {
						t.Errorf("after the takeover, indexed under fw-1 = %t; want %t", got, taken)
					}
					if ttl, err := store.ClientOf(s).PTTL(ctx, "nfsteer:st:{"+flow+"}").Result(); err != nil || ttl == -1 { // -1: no expiry
						t.Errorf("the state hash after the takeover has PTTL %v (%v); want none or a life", ttl, err)
					}
				})
			}
		})

		t.Run("a refresh and a new connection's create of its flow in one batch index the new one's roles", func(t *testing.T) {
			flow := flowKey(40720).String()
			old := sessions.Record{Flow: flow, Tenant: "acme", Hops: []sessions.Hop{
				{Service: "fw", Primary: "fw-1", Secondary: "fw-2"}, {Service: "dlp", Primary: "dlp-1", Secondary: "dlp-2"}}}
			w := s.NewSessions("fw", "fw-1", time.Minute)
			create := func(rec sessions.Record) sessions.Named {
				return sessions.Named{Kind: sessions.OpCreateState, Index: true, Replace: true, Record: rec, State: "admitted:0"}
			}
			if _, err := w.Write(ctx, []sessions.Named{create(old)}); err != nil {
				t.Fatal(err)
			}
			// The walk queued a refresh of the earlier connection; a new
			// one on its 5-tuple, on a map where dlp-2 holds its slot,
			// opened before the batch was written.
			next := old
			next.Hops = []sessions.Hop{old.Hops[0], {Service: "dlp", Primary: "dlp-2", Secondary: "dlp-1"}}
			if _, err := w.Write(ctx, []sessions.Named{{Kind: sessions.OpRefresh, Record: old}, create(next)}); err != nil {
				t.Fatal(err)
			}
			if got := get(t, flowKey(40720)).Hops[1].Primary; got != "dlp-2" {
				t.Errorf("after the batch the dlp hop's primary is %s; want dlp-2", got)
			}
			if indexed(t, "dlp-1", store.RolePrimary, flow) {
				t.Errorf("after the batch the session is still indexed under the earlier connection's dlp primary")
			}
			if !indexed(t, "dlp-2", store.RolePrimary, flow) {
				t.Errorf("after the batch the session is not indexed under the new connection's dlp primary")
			}
		})

		t.Run("an instance forgets the indexes it shared with peers the map no longer has, once they are gone", func(t *testing.T) {
			// fw-5 shared indexes with fw-6, fw-7 and fw-8, which the map
			// no longer has, with fw-2, which it has, and had sessions with
			// no secondary. fw-7's index with it still lists a live
			// session, and so does fw-8's own with no secondary.
			short, long := s.NewSessions("fw", "fw-5", 50*time.Millisecond), s.NewSessions("fw", "fw-5", time.Minute)
			for i, c := range []struct {
				w                  *store.Sessions
				primary, secondary string
			}{
				{short, "fw-5", "fw-6"}, {long, "fw-7", "fw-5"}, {short, "fw-5", "fw-2"}, {short, "fw-5", ""},
				{short, "fw-6", ""}, {short, "fw-8", "fw-5"}, {long, "fw-8", ""},
			} {
				rec := sessions.Record{Flow: flowKey(uint16(40730 + i)).String(), Tenant: "acme", Hops: []sessions.Hop{
					{Service: "fw", Primary: c.primary, Secondary: c.secondary}}}
				if _, err := c.w.Write(ctx, []sessions.Named{{Kind: sessions.OpCreateState, Index: true, Record: rec, State: "admitted:0"}}); err != nil {
					t.Fatal(err)
				}
			}
			// An earlier version's pair indexes, expired: fw-5's with
			// fw-6, and fw-6's own with no secondary.
			c := store.ClientOf(s)
			for _, e := range []struct{ index, set, member string }{
				{store.PairKey("fw-5", "fw-6"), "fw-5", "p:fw-6"},
				{store.PairKey("fw-5", "fw-6"), "fw-6", "s:fw-5"},
				{store.PairKey("fw-6", ""), "fw-6", "p:"},
			} {
				c.ZAdd(ctx, e.index, redis.Z{Score: float64(time.Now().UnixMilli() + 50), Member: flowKey(40740).String()})
				c.SAdd(ctx, "nfsteer:i:{"+e.set+"}:pairs", e.member)
			}
			time.Sleep(100 * time.Millisecond) // the short sessions' entries expire
			long.Known = func(in string) bool { _, ok := tab.InstanceByName(in); return ok }
			n, err := long.PruneIndexNames(ctx)
			if err != nil || n != 3 {
				t.Errorf("PruneIndexNames = %d, %v; want 3 names removed", n, err)
			}
			// Each peer's set loses the same names, and fw-6's, left with
			// none, is gone.
			for _, c := range []struct {
				instance string
				want     []string
			}{
				{"fw-5", []string{"r:fw-5/", "r:fw-5/fw-2", "r:fw-7/fw-5"}},
				{"fw-6", []string{}},
				{"fw-7", []string{"r:fw-7/fw-5"}},
				{"fw-8", []string{"r:fw-8/"}},
			} {
				got, err := store.ClientOf(s).SMembers(ctx, "nfsteer:i:{"+c.instance+"}:pairs").Result()
				if err != nil {
					t.Fatal(err)
				}
				slices.Sort(got)
				if diff := cmp.Diff(c.want, got); diff != "" {
					t.Errorf("%s's index names after fw-5's prune (-want +got):\n%s", c.instance, diff)
				}
			}
			if n, err := store.ClientOf(s).Exists(ctx, "nfsteer:i:{fw-6}:pairs").Result(); err != nil || n != 0 {
				t.Errorf("fw-6's set of index names: EXISTS = %d, %v; want it gone", n, err)
			}
			if !indexed(t, "fw-5", store.RoleSecondary, flowKey(40731).String()) {
				t.Errorf("after the prune, fw-5 no longer finds the live session it is the secondary of")
			}
		})

		t.Run("a takeover of a session Redis does not hold writes nothing", func(t *testing.T) {
			flow := flowKey(40710)
			rec := sessions.Record{Flow: flow.String(), Tenant: "acme", Hops: []sessions.Hop{
				{Service: "fw", Primary: "fw-1", Secondary: ""}, {Service: "dlp", Primary: "dlp-1", Secondary: "dlp-2"}}}
			w := s.NewSessions("fw", "fw-1", time.Minute)
			if _, err := w.Write(ctx, []sessions.Named{{Kind: sessions.OpTakeover, Hop: 0, From: "fw-2", Record: rec, State: "admitted:0"}}); err != nil {
				t.Fatal(err)
			}
			if n, err := store.ClientOf(s).Exists(ctx, "nfsteer:s:{"+flow.String()+"}", "nfsteer:st:{"+flow.String()+"}").Result(); err != nil || n != 0 {
				t.Errorf("after the takeover of no session, %d of its keys exist (%v); want none", n, err)
			}
			if indexed(t, "fw-1", store.RolePrimary, flow.String()) {
				t.Errorf("after the takeover of no session, fw-1 lists it")
			}
			// Nor does one of a hop the record does not have.
			if _, err := w.Write(ctx, []sessions.Named{{Kind: sessions.OpTakeover, Hop: 2, From: "fw-2", Record: rec}}); err != nil {
				t.Errorf("a takeover of hop 2 of a two-hop session: %v", err)
			}
		})

		t.Run("a malformed entry is reported with its key, not half-read", func(t *testing.T) {
			c := store.ClientOf(s)
			good := acmeSession(tab, 40500)
			write(t, gw, op(sessions.OpCreate, good))
			inst := get(t, good.Key).Hops[0].Primary
			bad, wrongType := flowKey(40001), flowKey(40002)
			c.Set(ctx, "nfsteer:s:{"+bad.String()+"}", "{not json", 0)
			c.HSet(ctx, "nfsteer:s:{"+wrongType.String()+"}", "meta", "a hash")
			for _, k := range []sessions.Key{bad, wrongType} {
				c.ZAdd(ctx, "nfsteer:i:{"+inst+"}:primary", redisZ(k.String()))
				if _, err := gw.Get(ctx, k); !errors.Is(err, store.ErrMalformed) || !strings.Contains(err.Error(), k.String()) {
					t.Errorf("Get(malformed %s) = %v, want ErrMalformed naming the key", k, err)
				}
			}
			recs, badErrs, err := s.List(ctx, inst, store.RolePrimary)
			if err != nil || len(badErrs) != 2 || !slices.ContainsFunc(recs, func(r *sessions.Record) bool { return r.Flow == good.Key.String() }) {
				t.Errorf("List with two malformed entries = %d records, %v, %v; want the good one and 2 bad", len(recs), badErrs, err)
			}
			// Read together, each is what Get says of it.
			missing := flowKey(40003)
			keys := []sessions.Key{good.Key, bad, wrongType, missing}
			all, errs, err := gw.GetAll(ctx, keys)
			if err != nil {
				t.Fatalf("GetAll: %v", err)
			}
			for i, want := range []error{nil, store.ErrMalformed, store.ErrMalformed, store.ErrNoSession} {
				switch {
				case want == nil && (errs[i] != nil || all[i] == nil || all[i].Flow != good.Key.String()):
					t.Errorf("GetAll: %s = %+v, %v; want its record", keys[i], all[i], errs[i])
				case want != nil && (!errors.Is(errs[i], want) || !strings.Contains(errs[i].Error(), keys[i].String()) || all[i] != nil):
					t.Errorf("GetAll: %s = %+v, %v; want %v naming the key", keys[i], all[i], errs[i], want)
				}
			}
		})
	})
}

// A key of another type where a session or an index goes (written by
// hand) makes Redis refuse the commands on it, for good: the writes of
// that flow are refused and named, and the rest of the batch is written
// instead of the whole batch failing, and being retried, forever.
func TestSessionWriteRefusedForGood(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		ctx := context.Background()
		s := open(t, url)
		tab := labTable(t)
		gw := s.NewSessions("", "", time.Minute)
		badSession, good := acmeSession(tab, 41000), acmeSession(tab, 41001)
		c := store.ClientOf(s)
		if err := c.HSet(ctx, "nfsteer:s:{"+badSession.Key.String()+"}", "meta", "not a record").Err(); err != nil {
			t.Fatal(err)
		}
		// The good create comes first: its reply (nil: created) must not
		// hide the refusal after it.
		ops := []sessions.Op{{Kind: sessions.OpCreate, Session: good}, {Kind: sessions.OpCreate, Session: badSession}}
		out, err := gw.Write(ctx, sessions.Name(tab, ops))
		if err != nil {
			t.Fatalf("Write with one session key of another type: %v; want the batch written but that one", err)
		}
		if err := out[1].Refused; !errors.Is(err, store.ErrMalformed) || !strings.Contains(err.Error(), badSession.Key.String()) {
			t.Errorf("outcome of the session over a hash key: %v; want ErrMalformed naming it", err)
		}
		if out[0].Refused != nil {
			t.Errorf("outcome of the good session: %v", out[0].Refused)
		}
		if _, err := gw.Get(ctx, good.Key); err != nil {
			t.Errorf("the good session of the batch: %v", err)
		}

		// An index key of another type refuses every session that
		// indexes there, and only those.
		rec, err := gw.Get(ctx, good.Key)
		if err != nil {
			t.Fatal(err)
		}
		index := store.RolesKey(rec.Hops)
		if err := c.Del(ctx, index).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(ctx, index, "not a sorted set", 0).Err(); err != nil {
			t.Fatal(err)
		}
		out, err = gw.Write(ctx, sessions.Name(tab, []sessions.Op{{Kind: sessions.OpRefresh, Session: good}}))
		if err != nil || !errors.Is(out[0].Refused, store.ErrMalformed) || !strings.Contains(out[0].Refused.Error(), index) {
			t.Errorf("refresh indexing into a string key: %v, %+v; want refused, naming %s", err, out, index)
		}
	})
}

func TestConcurrentCreateFirstWriterWins(t *testing.T) {
	ctx := context.Background()
	s := open(t, redislab.Start(t, redislab.Options{}).URL)
	tab := labTable(t)
	w := s.NewSessions("", "", time.Minute)
	k := flowKey(41000)
	var wg sync.WaitGroup
	results := make([]steering.Pins, 16)
	existed := make([]bool, 16)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var pins steering.Pins
			pins[0] = tab.Instances()[2+i%2].ID
			pins[1] = tab.Instances()[(i/2)%2].ID
			out, err := w.Write(ctx, sessions.Name(tab, []sessions.Op{{Kind: sessions.OpCreate, Session: sessions.Session{Key: k, Tenant: "acme", Code: 7, Pins: pins, Rule: -1}}}))
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = pins
			if out[0].Existed {
				results[i] = firstPins(tab, out[0])
			}
			existed[i] = out[0].Existed
		}()
	}
	wg.Wait()
	created := 0
	for i, r := range results {
		if !existed[i] {
			created++
		}
		if r != results[0] {
			t.Fatalf("writers ended with different pins: %v vs %v", r, results[0])
		}
	}
	if created != 1 {
		t.Fatalf("%d writers created the session, want 1", created)
	}
}

// TestReplacingCreateOverwrites: a create that replaces (a new TCP
// connection on a closed one's 5-tuple) overwrites the closed
// connection's record, where a plain create loses to it.
func TestReplacingCreateOverwrites(t *testing.T) {
	ctx := context.Background()
	s := open(t, redislab.Start(t, redislab.Options{}).URL)
	tab := labTable(t)
	w := s.NewSessions("", "", time.Minute)
	k := flowKey(41001)
	pinsOf := func(fw, dlp int) steering.Pins {
		var p steering.Pins
		p[0], p[1] = tab.Instances()[fw].ID, tab.Instances()[dlp].ID
		return p
	}
	create := func(pins steering.Pins, created int64, replace bool) sessions.Outcome {
		t.Helper()
		op := sessions.Op{Kind: sessions.OpCreate, Replace: replace, Session: sessions.Session{Key: k, Tenant: "acme", Code: 7, Pins: pins, Rule: -1, Created: created}}
		out, err := w.Write(ctx, sessions.Name(tab, []sessions.Op{op}))
		if err != nil {
			t.Fatal(err)
		}
		return out[0]
	}
	closed, reopened := pinsOf(2, 0), pinsOf(3, 1)
	create(closed, 1e9, false)
	if out := create(reopened, 2e9, false); !out.Existed {
		t.Fatalf("a plain create over an existing record: %+v, want it to find the first writer's", out)
	}
	if out := create(reopened, 3e9, true); out.Existed {
		t.Fatalf("a replacing create: %+v, want it to write", out)
	}
	rec, err := w.Get(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	want := sessions.Name(tab, []sessions.Op{{Session: sessions.Session{Key: k, Tenant: "acme", Code: 7, Pins: reopened, Created: 3e9}}})[0].Record
	if diff := cmp.Diff(want.Hops, rec.Hops); diff != "" {
		t.Errorf("roles after the replacing create (-want +got):\n%s", diff)
	}
	if rec.Created != want.Created {
		t.Errorf("created %d, want the new connection's %d", rec.Created, want.Created)
	}
}

// TestReplacingCreateDropsTheClosedVerdict: a firewall that creates the
// session of a new connection on a closed one's 5-tuple keeps its
// verdict in the new record, and the closed connection's state hash,
// which would override it, is gone. A verdict the firewall writes for
// the new connection in the same batch as its create stays.
func TestReplacingCreateDropsTheClosedVerdict(t *testing.T) {
	ctx := context.Background()
	s := open(t, redislab.Start(t, redislab.Options{}).URL)
	tab := labTable(t)
	gw, fw := s.NewSessions("", "", time.Minute), s.NewSessions("fw", "fw-1", time.Minute)
	write := func(w *store.Sessions, ops ...sessions.Op) {
		t.Helper()
		if _, err := w.Write(ctx, sessions.Name(tab, ops)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		port uint16
		// then, if set, is the rule of a verdict the firewall writes
		// after its create, in the same batch.
		then      int16
		wantState bool // the state hash is left, with then's verdict
	}{
		{name: "create alone", port: 41100},
		{name: "create and a verdict in one batch", port: 41101, then: 3, wantState: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			closed := acmeSession(tab, tc.port)
			closed.Rule = 5
			write(gw, sessions.Op{Kind: sessions.OpCreate, Index: true, Session: closed})
			write(fw, sessions.Op{Kind: sessions.OpState, Session: closed})
			reopened := closed
			reopened.Rule = 1
			ops := []sessions.Op{{Kind: sessions.OpCreateState, Index: true, Replace: true, Session: reopened}}
			want := reopened.FirewallState()
			if tc.then != 0 {
				later := reopened
				later.Rule = tc.then
				ops = append(ops, sessions.Op{Kind: sessions.OpState, Session: later})
				want = later.FirewallState()
			}
			write(fw, ops...)
			rec, err := fw.Get(ctx, reopened.Key)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(map[string]string{"fw": want}, rec.State); diff != "" {
				t.Errorf("state after the replacing create (-want +got):\n%s", diff)
			}
			if n := store.ClientOf(s).Exists(ctx, "nfsteer:st:{"+rec.Flow+"}").Val(); (n != 0) != tc.wantState {
				t.Errorf("state hash exists: %v; want %v", n != 0, tc.wantState)
			}
		})
	}
}

// TestConnectionReplacesAnEarlierConnectionsRecord: the create of a TCP
// connection by its chain's first firewall replaces the record an earlier
// connection on the 5-tuple left, which that firewall does not know (its
// agent restarted since, or the connection crossed the other firewall).
// Losing to it left the new connection on the earlier one's remaining
// life, so that a failover after it ran out found no session. The new
// record has the connection's roles and a whole TTL; the earlier one's
// index entries under other roles and its verdict from this service go;
// another service's verdict stays, for its own writer to replace.
func TestConnectionReplacesAnEarlierConnectionsRecord(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		ctx := context.Background()
		s := open(t, url)
		c := store.ClientOf(s)
		tab := labTable(t)
		conn := acmeSession(tab, 41200)
		conn.Rule = 1
		primary, _ := tab.InstanceByID(conn.Pins[0])
		other := map[string]string{"fw-1": "fw-2", "fw-2": "fw-1"}[primary.Name]
		otherIn, _ := tab.InstanceByName(other)
		earlier := conn
		earlier.Pins[0], earlier.Rule, earlier.Created = otherIn.ID, 5, conn.Created-int64(time.Hour)
		write := func(w *store.Sessions, op sessions.Op) []sessions.Outcome {
			t.Helper()
			out, err := w.Write(ctx, sessions.Name(tab, []sessions.Op{op}))
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		was := s.NewSessions("fw", other, time.Minute)
		write(was, sessions.Op{Kind: sessions.OpCreateState, Index: true, Replace: true, Session: earlier})
		write(was, sessions.Op{Kind: sessions.OpState, Session: earlier})
		flow := conn.Key.String()
		if err := c.HSet(ctx, "nfsteer:st:{"+flow+"}", "st:ips", "earlier").Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.PExpire(ctx, "nfsteer:s:{"+flow+"}", 2*time.Second).Err(); err != nil {
			t.Fatal(err)
		}

		w := s.NewSessions("fw", primary.Name, time.Minute)
		if out := write(w, sessions.Op{Kind: sessions.OpCreateState, Index: true, Replace: true, Session: conn}); out[0].Existed {
			t.Errorf("the connection's create lost to the earlier connection's record: %+v", out[0])
		}
		rec, err := w.Get(ctx, conn.Key)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := sessions.NewRecord(tab, &conn)
		wasRec, _ := sessions.NewRecord(tab, &earlier)
		if rec.Created != want.Created || rec.Hops[0] != want.Hops[0] {
			t.Errorf("record created %d, first hop %+v; want the connection's: %d, %+v", rec.Created, rec.Hops[0], want.Created, want.Hops[0])
		}
		if rec.TTL < 50*time.Second {
			t.Errorf("the record lives %v more; want about a minute, the connection's whole TTL", rec.TTL)
		}
		if diff := cmp.Diff(map[string]string{"fw": conn.FirewallState(), "ips": "earlier"}, rec.State); diff != "" {
			t.Errorf("verdicts (-want +got):\n%s", diff)
		}
		for _, tc := range []struct {
			index string
			want  bool
		}{
			{store.RolesKey(wasRec.Hops), false},
			{store.RolesKey(want.Hops), true},
		} {
			err := c.ZScore(ctx, tc.index, flow).Err()
			if got := err == nil; got != tc.want {
				t.Errorf("%s names the flow: %v (%v); want %v", tc.index, got, err, tc.want)
			}
		}
	})
}

func TestHeartbeatsAndLease(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		ctx := context.Background()
		s := open(t, url)
		if err := s.Heartbeat(ctx, "fw-1", &store.Report{Node: "fw-1", MapVersion: 3}); err != nil {
			t.Fatal(err)
		}
		if err := s.Heartbeat(ctx, "fw-2", nil); err != nil {
			t.Fatal(err)
		}
		beats, now, err := s.Beats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, ok := beats["fw-1"]
		if !ok || b.Report.MapVersion != 3 || now.Sub(b.At) < 0 || now.Sub(b.At) > time.Second || !b.ReportAt.Equal(b.At) {
			t.Fatalf("beats %+v at %v", beats, now)
		}
		if b, ok := beats["fw-2"]; !ok || !b.ReportAt.IsZero() || now.Sub(b.At) > time.Second {
			t.Fatalf("fw-2 beat without a report: %+v at %v", b, now)
		}
		if err := s.Restarting(ctx, "fw-2", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		p, err := s.Pulse(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.At) != 2 || !p.At["fw-1"].Equal(beats["fw-1"].At) || p.Now.Before(now) {
			t.Fatalf("Pulse = %+v; want fw-1 and fw-2 as Beats says", p)
		}
		if by := p.RestartBy["fw-2"]; len(p.RestartBy) != 1 || by.Sub(p.Now) < 9*time.Second || by.Sub(p.Now) > 10*time.Second {
			t.Fatalf("restart notices %v at %v; want fw-2's, 10s ahead", p.RestartBy, p.Now)
		}
		// The next heartbeat ends the notice.
		if err := s.Heartbeat(ctx, "fw-2", nil); err != nil {
			t.Fatal(err)
		}
		if p, err := s.Pulse(ctx); err != nil || len(p.RestartBy) != 0 {
			t.Fatalf("after fw-2's heartbeat: restart notices %v (%v); want none", p.RestartBy, err)
		}
		if ok, err := s.Lease(ctx, "a", time.Second); !ok || err != nil {
			t.Fatalf("first Lease = %v, %v", ok, err)
		}
		if ok, _ := s.Lease(ctx, "b", time.Second); ok {
			t.Fatal("second holder got the lease")
		}
		if err := s.ReleaseLease(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		if ok, _ := s.Lease(ctx, "b", time.Second); !ok {
			t.Fatal("lease not free after release")
		}
	})
}

func TestOpenErrors(t *testing.T) {
	srv := redislab.Start(t, redislab.Options{Password: "sesame"})
	ctx := context.Background()
	_, err := store.Open(ctx, "redis://"+srv.Addr)
	if err == nil || !strings.Contains(err.Error(), srv.Addr) || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("no password: %v, want an error naming %s and NOAUTH", err, srv.Addr)
	}
	_, err = store.Open(ctx, "redis://:wrong@"+srv.Addr)
	if err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Errorf("wrong password: %v, want WRONGPASS", err)
	}
	if _, err := store.Open(ctx, srv.URL); err != nil {
		t.Errorf("right password: %v", err)
	}
	_, err = store.Open(ctx, "redis://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("unreachable: %v, want an error naming the address", err)
	}
}

// A node that missed announcements catches up from the log of deltas
// without the document: here the document is garbage, which reading it
// would refuse. A node the log does not reach back to reads the document.
func TestLiveAfterCatchesUpFromTheLog(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		ctx := context.Background()
		s := publishedLab(t, url)
		c := store.ClientOf(s)
		held, err := s.Live(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var last store.Publication
		for _, name := range []string{"fw-2", "dlp-1", "dlp-2"} {
			if last, err = s.Publish(ctx, func(p *steering.Published) (*steering.Published, error) { return p.Drain(name) }); err != nil {
				t.Fatal(err)
			}
		}
		doc, _ := c.Get(ctx, "nfsteer:{map}:doc").Result()
		if err := c.Set(ctx, "nfsteer:{map}:doc", "{not a map", 0).Err(); err != nil {
			t.Fatal(err)
		}
		got, err := s.LiveAfter(ctx, held)
		if err != nil {
			t.Fatalf("LiveAfter version %d, with the log holding every later version: %v", held.Version, err)
		}
		if diff := cmp.Diff(last.Published, got, cmpopts.IgnoreUnexported(steering.Published{}), cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("caught up from the log (-published +got):\n%s", diff)
		}
		// The log begins after the document: a node holding an older
		// version than the document's needs the document.
		old := held.Clone()
		old.Version = held.Version - 1
		if _, err := s.LiveAfter(ctx, old); !errors.Is(err, steering.ErrInvalidMap) {
			t.Fatalf("LiveAfter from before the log, document garbage: %v; want ErrInvalidMap", err)
		}
		if err := c.Set(ctx, "nfsteer:{map}:doc", doc, 0).Err(); err != nil {
			t.Fatal(err)
		}
		if got, err := s.LiveAfter(ctx, old); err != nil || got.Version != last.Version {
			t.Fatalf("LiveAfter from before the log: %+v, %v; want version %d from the document", got, err, last.Version)
		}
	})
}

// A version an announced delta makes goes into the map's log, not into a
// rewritten document; readers fold the log into the document, and every
// maxLog versions the document is rewritten. A log that does not make
// the live version is refused whole.
func TestMapLog(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		ctx := context.Background()
		s := publishedLab(t, url)
		c := store.ClientOf(s)
		doc, err := c.Get(ctx, "nfsteer:{map}:doc").Result()
		if err != nil {
			t.Fatal(err)
		}
		drain := func(name string) store.Change {
			return func(p *steering.Published) (*steering.Published, error) { return p.Drain(name) }
		}
		undrain := func(name string) store.Change {
			return func(p *steering.Published) (*steering.Published, error) { return p.Undrain(name) }
		}
		var last store.Publication
		for i := range 65 { // maxLog, and one more
			change := drain("fw-2")
			if i%2 == 1 {
				change = undrain("fw-2")
			}
			if last, err = s.Publish(ctx, change); err != nil {
				t.Fatal(err)
			}
			if i != 3 {
				continue
			}
			// Four versions logged; the document is version 1's.
			if n, err := c.LLen(ctx, "nfsteer:{map}:log").Result(); err != nil || n != 4 {
				t.Fatalf("log of %d entries (%v) after 4 drains, want 4", n, err)
			}
			if d, _ := c.Get(ctx, "nfsteer:{map}:doc").Result(); d != doc {
				t.Fatal("document rewritten for a drain")
			}
			live, err := s.Live(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(last.Published, live, cmpopts.IgnoreUnexported(steering.Published{}), cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("live map from the log (-published +live):\n%s", diff)
			}
		}
		// Version 66 found 64 entries: it rewrote the document.
		if n, _ := c.LLen(ctx, "nfsteer:{map}:log").Result(); n != 0 {
			t.Errorf("log of %d entries after %d versions, want it emptied", n, last.Version)
		}
		if d, _ := c.Get(ctx, "nfsteer:{map}:doc").Result(); d == doc {
			t.Errorf("document still version 1's at version %d", last.Version)
		}
		live, err := s.Live(ctx)
		if err != nil || live.Version != 66 || !slices.Equal(live.Drained, last.Drained) {
			t.Fatalf("live map after the rewrite: %+v, %v; want version 66, drained %v", live, err, last.Drained)
		}

		// A log that skips a version is refused, naming it; so is an entry
		// that is not a delta.
		if _, err := s.Publish(ctx, drain("fw-1")); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(ctx, "nfsteer:{map}:version", 68, 0).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Live(ctx); !errors.Is(err, steering.ErrInvalidMap) || !strings.Contains(err.Error(), "live version 68") {
			t.Errorf("Live with the log one version short: %v, want ErrInvalidMap naming live version 68", err)
		}
		if err := c.RPush(ctx, "nfsteer:{map}:log", "not json").Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Live(ctx); !errors.Is(err, steering.ErrInvalidMap) || !strings.Contains(err.Error(), "entry 1 of nfsteer:{map}:log") {
			t.Errorf("Live with a malformed log entry: %v, want ErrInvalidMap naming entry 1", err)
		}
	})
}

// TestRoleIndexes: each hop of a session is one entry, in the index of
// its primary and secondary, and each instance's count and listing of
// either role finds it: for the map's instances, for a peer the map no
// longer has, for a hop without a secondary, and for the index an earlier
// version wrote (one per instance and role). A delete takes the entries
// away.
func TestRoleIndexes(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		ctx := context.Background()
		s := open(t, url)
		tab := labTable(t)
		gw, fw := s.NewSessions("", "", time.Minute), s.NewSessions("fw", "fw-1", time.Minute)
		var ops []sessions.Named
		for sport := uint16(43000); sport < 43020; sport++ {
			ops = append(ops, sessions.Name(tab, []sessions.Op{{Kind: sessions.OpCreate, Session: acmeSession(tab, sport)}})...)
		}
		// A session whose roles name fw-9, which the map does not have,
		// and a dlp hop without a secondary.
		gone := sessions.Named{Kind: sessions.OpCreate, Record: sessions.Record{Flow: flowKey(43100).String(), Tenant: "acme",
			Hops: []sessions.Hop{{Service: "fw", Primary: "fw-1", Secondary: "fw-9"}, {Service: "dlp", Primary: "dlp-1"}}}}
		ops = append(ops, gone)
		if _, err := gw.Write(ctx, ops); err != nil {
			t.Fatal(err)
		}
		// An entry of the index of an earlier version.
		c := store.ClientOf(s)
		if err := c.ZAdd(ctx, "nfsteer:i:{fw-2}:secondary", redisZ(flowKey(43200).String())).Err(); err != nil {
			t.Fatal(err)
		}

		type counts map[string][2]int64 // instance: primary, secondary
		// expect counts the roles of the sessions of ops whose fw hop
		// keep says to, and the earlier version's entry.
		expect := func(keep func(fw string) bool) counts {
			want := counts{"fw-2": {0, 1}}
			for _, op := range ops {
				if !keep(op.Record.Hops[0].Primary) {
					continue
				}
				for _, h := range op.Record.Hops {
					p := want[h.Primary]
					p[0]++
					want[h.Primary] = p
					if h.Secondary != "" {
						q := want[h.Secondary]
						q[1]++
						want[h.Secondary] = q
					}
				}
			}
			return want
		}
		want := expect(func(string) bool { return true })
		count := func(t *testing.T) counts {
			t.Helper()
			got := counts{}
			for _, inst := range []string{"fw-1", "fw-2", "fw-9", "dlp-1", "dlp-2"} {
				var n [2]int64
				for i, role := range []string{store.RolePrimary, store.RoleSecondary} {
					var err error
					if n[i], err = s.Count(ctx, inst, role); err != nil {
						t.Fatal(err)
					}
				}
				if n != [2]int64{} {
					got[inst] = n
				}
			}
			return got
		}
		if diff := cmp.Diff(want, count(t)); diff != "" {
			t.Errorf("counts after the creates (-want +got):\n%s", diff)
		}
		recs, bad, err := s.List(ctx, "fw-9", store.RoleSecondary)
		if err != nil || len(bad) != 0 || len(recs) != 1 || recs[0].Flow != gone.Record.Flow {
			t.Errorf("List(fw-9, secondary) = %v, %v, %v; want the session naming it", recs, bad, err)
		}

		// Each firewall sees every flow end, and deletes the sessions
		// whose records name it the primary: fw-1 first, then fw-2. What
		// is left is the earlier version's entry.
		var dels []sessions.Named
		for _, op := range ops {
			op.Kind = sessions.OpDelete
			dels = append(dels, op)
		}
		if _, err := fw.Write(ctx, dels); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(expect(func(fw string) bool { return fw != "fw-1" }), count(t)); diff != "" {
			t.Errorf("counts after fw-1's deletes (-want +got):\n%s", diff)
		}
		if _, err := s.NewSessions("fw", "fw-2", time.Minute).Write(ctx, dels); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(counts{"fw-2": {0, 1}}, count(t)); diff != "" {
			t.Errorf("counts after fw-2's deletes (-want +got):\n%s", diff)
		}
	})
}

// TestPairIndexesOfAnEarlierVersion: the sessions an earlier version
// listed once per hop, in the index of the hop's pair of instances, named
// in their sets as "p:SECONDARY" and "s:PRIMARY", are counted and listed
// until they end; whoever ends them, takes them over or hands them over
// removes those entries too, so that a drain's count reaches zero.
func TestPairIndexesOfAnEarlierVersion(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		ctx := context.Background()
		s := open(t, url)
		c := store.ClientOf(s)
		tab := labTable(t)
		gw := s.NewSessions("", "", time.Minute)
		// earlier writes the sessions of sports as the gateway of an
		// earlier version did.
		earlier := func(t *testing.T, sports ...uint16) []*sessions.Record {
			t.Helper()
			var ops []sessions.Op
			for _, p := range sports {
				ops = append(ops, sessions.Op{Kind: sessions.OpCreate, Session: acmeSession(tab, p)})
			}
			if _, err := gw.Write(ctx, sessions.Name(tab, ops)); err != nil {
				t.Fatal(err)
			}
			var recs []*sessions.Record
			for _, o := range ops {
				rec, err := gw.Get(ctx, o.Session.Key)
				if err != nil {
					t.Fatal(err)
				}
				pipe := c.Pipeline()
				pipe.ZRem(ctx, store.RolesKey(rec.Hops), rec.Flow)
				for _, h := range rec.Hops {
					pipe.ZAdd(ctx, store.PairKey(h.Primary, h.Secondary), redisZ(rec.Flow))
					pipe.SAdd(ctx, "nfsteer:i:{"+h.Primary+"}:pairs", "p:"+h.Secondary)
					if h.Secondary != "" {
						pipe.SAdd(ctx, "nfsteer:i:{"+h.Secondary+"}:pairs", "s:"+h.Primary)
					}
				}
				if _, err := pipe.Exec(ctx); err != nil {
					t.Fatal(err)
				}
				recs = append(recs, rec)
			}
			return recs
		}
		// indexed returns the instances whose indexes of role list flow,
		// of those the lab map has.
		indexed := func(t *testing.T, role, flow string) []string {
			t.Helper()
			var out []string
			for _, in := range tab.Instances() {
				keys, err := store.IndexKeys(s, in.Name, role)
				if err != nil {
					t.Fatal(err)
				}
				for _, k := range keys {
					if err := c.ZScore(ctx, k, flow).Err(); err == nil {
						out = append(out, in.Name)
					}
				}
			}
			slices.Sort(out)
			return out
		}
		// roles returns the instances rec names in role, as indexed
		// wants them.
		roles := func(rec *sessions.Record, role string) []string {
			var out []string
			for _, h := range rec.Hops {
				if role == store.RolePrimary {
					out = append(out, h.Primary)
				} else if h.Secondary != "" {
					out = append(out, h.Secondary)
				}
			}
			slices.Sort(out)
			return out
		}
		check := func(t *testing.T, rec *sessions.Record, what string) {
			t.Helper()
			for _, role := range []string{store.RolePrimary, store.RoleSecondary} {
				if diff := cmp.Diff(roles(rec, role), indexed(t, role, rec.Flow)); diff != "" {
					t.Errorf("%s, the instances whose %s indexes list %s (-want +got):\n%s", what, role, rec.Flow, diff)
				}
			}
		}

		t.Run("counted and listed", func(t *testing.T) {
			rec := earlier(t, 43500)[0]
			check(t, rec, "as an earlier version wrote it")
			recs, _, err := s.List(ctx, rec.Hops[1].Primary, store.RolePrimary)
			if err != nil || !slices.ContainsFunc(recs, func(r *sessions.Record) bool { return r.Flow == rec.Flow }) {
				t.Errorf("List(%s, primary) = %d sessions, %v; want %s among them", rec.Hops[1].Primary, len(recs), err, rec.Flow)
			}
		})

		t.Run("a delete removes its entries", func(t *testing.T) {
			rec := earlier(t, 43510)[0]
			fw := s.NewSessions("fw", rec.Hops[0].Primary, time.Minute)
			if _, err := fw.Write(ctx, sessions.Name(tab, []sessions.Op{{Kind: sessions.OpDelete, Session: acmeSession(tab, 43510)}})); err != nil {
				t.Fatal(err)
			}
			check(t, &sessions.Record{Flow: rec.Flow}, "after the firewall's delete")
		})

		t.Run("a takeover moves it to the index of its new roles", func(t *testing.T) {
			rec := earlier(t, 43520)[0]
			a := acmeSession(tab, 43520)
			sec, _ := tab.InstanceByName(rec.Hops[0].Secondary)
			from := a.Pins[0]
			a.Pins[0] = sec.ID
			fw := s.NewSessions("fw", sec.Name, time.Minute)
			if _, err := fw.Write(ctx, sessions.Name(tab, []sessions.Op{{Kind: sessions.OpTakeover, Hop: 0, From: from, Session: a}})); err != nil {
				t.Fatal(err)
			}
			after, err := gw.Get(ctx, a.Key)
			if err != nil || after.Hops[0].Primary != sec.Name {
				t.Fatalf("after the takeover: %+v, %v; want %s the primary", after, err, sec.Name)
			}
			check(t, after, "after the takeover")
		})

		t.Run("a handover moves it to the index of its new roles", func(t *testing.T) {
			rec := earlier(t, 43530)[0]
			from := rec.Hops[1].Primary
			live, err := steeringLab(t).Drain(from)
			if err != nil {
				t.Fatal(err)
			}
			if moved, bad, err := s.Handover(ctx, from, compiled(t, live)); err != nil || len(bad) != 0 || moved == 0 {
				t.Fatalf("Handover(%s) = %d, %v, %v; want sessions moved", from, moved, bad, err)
			}
			after, err := gw.Get(ctx, acmeSession(tab, 43530).Key)
			if err != nil || after.Hops[1].Primary == from {
				t.Fatalf("after the handover: %+v, %v; want another primary than %s", after, err, from)
			}
			if n, err := s.Count(ctx, from, store.RolePrimary); err != nil || n != 0 {
				t.Errorf("Count(%s, primary) after its handover = %d, %v; want 0", from, n, err)
			}
			if err := c.ZScore(ctx, store.RolesKey(after.Hops), rec.Flow).Err(); err != nil {
				t.Errorf("the index of the session's roles after the handover: %v", err)
			}
		})
	})
}
