package controller

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
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
