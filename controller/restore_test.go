package controller

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"slices"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/signing"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/nfsteer/nfsteer/tests/redislab"
	"github.com/redis/go-redis/v9"
)

// TestRestoresTheMapWhenRedisGoesBack: Redis loses its last version (a
// replica promoted before it had the last write), so its live version is
// older than the one the controller last saw. The controller publishes
// that last map again whole, numbered after it: no node sees the number
// go back, and no number stands for two maps. So it does when Redis
// loses the map altogether.
func TestRestoresTheMapWhenRedisGoesBack(t *testing.T) {
	ctx := context.Background()
	url := redislab.Start(t, redislab.Options{}).URL
	s, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(opt)
	t.Cleanup(func() { admin.Close() })
	if _, err := s.Publish(ctx, func(*steering.Published) (*steering.Published, error) {
		return &steering.Published{Map: labmap.Map(t)}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Publish(ctx, func(p *steering.Published) (*steering.Published, error) { return p.Drain("fw-2") }); err != nil {
		t.Fatal(err)
	}
	c := New(s, Config{})
	c.since = time.Now() // Redis just came into view: nobody is judged silent yet
	if err := c.step(ctx); err != nil {
		t.Fatal(err)
	}
	if c.lastMap.Version != 2 {
		t.Fatalf("controller saw version %d, want 2", c.lastMap.Version)
	}
	for _, tc := range []struct {
		name string
		lose func() error
		want uint64
	}{
		{"version 2 lost", func() error {
			_, err := admin.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Del(ctx, "nfsteer:{map}:log")
				p.Set(ctx, "nfsteer:{map}:version", 1, 0)
				return nil
			})
			return err
		}, 3},
		{"everything lost", func() error { return admin.FlushAll(ctx).Err() }, 4},
	} {
		if err := tc.lose(); err != nil {
			t.Fatal(err)
		}
		if err := c.step(ctx); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		live, err := s.Live(ctx)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if live.Version != tc.want || !slices.Equal(live.Drained, []string{"fw-2"}) {
			t.Errorf("%s: live version %d, drained %v; want version %d with fw-2 drained", tc.name, live.Version, live.Drained, tc.want)
		}
	}
}

// TestRefusesAnUntrustedMap: a controller that trusts keys meets a live
// version no trusted key signed: it counts it once, publishes nothing on
// top of it (the version stays), and keeps its last good map.
func TestRefusesAnUntrustedMap(t *testing.T) {
	ctx := context.Background()
	url := redislab.Start(t, redislab.Options{}).URL
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, evilKey, _ := ed25519.GenerateKey(rand.Reader)
	open := func(sign ed25519.PrivateKey) *store.Store {
		s, err := store.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		s.SignWith(signing.NewSigner(sign))
		return s
	}
	ops, evil, s := open(priv), open(evilKey), open(priv)
	s.Trust(signing.NewVerifier(pub))
	if _, err := ops.Publish(ctx, func(*steering.Published) (*steering.Published, error) {
		return &steering.Published{Map: labmap.Map(t)}, nil
	}); err != nil {
		t.Fatal(err)
	}
	c := New(s, Config{})
	c.since = time.Now()
	if err := c.step(ctx); err != nil || c.lastMap.Version != 1 {
		t.Fatalf("step on a signed map: %v (version %v)", err, c.lastMap)
	}
	if _, err := evil.Publish(ctx, func(p *steering.Published) (*steering.Published, error) { return p.Drain("fw-1") }); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := c.step(ctx); err != nil {
			t.Fatalf("step on a forged version: %v", err)
		}
	}
	if n := c.MapsRefused.Load(); n != 1 {
		t.Errorf("refused %d times, want once", n)
	}
	if v, _ := s.LiveVersion(ctx); v != 2 || c.lastMap.Version != 1 {
		t.Errorf("live version %d, controller's map %d; want 2 (nothing published on top) and 1", v, c.lastMap.Version)
	}
}
