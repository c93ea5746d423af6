package main

import (
	"fmt"
	"os/signal"
	"syscall"
	"time"

	"github.com/nfsteer/nfsteer/controller"
	"github.com/nfsteer/nfsteer/metrics"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"
)

func redisFlag() cli.Flag {
	return &cli.StringFlag{Name: "redis", Usage: "Redis `URL` (redis://, rediss://, unix://; ?addr= for Cluster, ?master_name= for Sentinel)", EnvVars: []string{"NFSTEER_REDIS"}}
}

func openStore(c *cli.Context) (*store.Store, error) {
	if c.String("redis") == "" {
		return nil, cli.Exit("--redis URL (or NFSTEER_REDIS) is required", 2)
	}
	return store.Open(c.Context, c.String("redis"))
}

// withStore runs a command that reads or changes Redis: fn gets the
// command's printer (--output) and the store, which is closed when fn
// returns.
func withStore(c *cli.Context, fn func(out printer, s *store.Store) error) error {
	out, err := printerOf(c)
	if err != nil {
		return err
	}
	s, err := openStore(c)
	if err != nil {
		return err
	}
	defer s.Close()
	return fn(out, s)
}

// live is the live map as a command reads it: the published version, its
// compiled table, and the store it came from.
type live struct {
	p *steering.Published
	t *steering.Table
	s *store.Store
}

// withLive is withStore for a command that reads the live map.
func withLive(c *cli.Context, fn func(out printer, l live) error) error {
	return withStore(c, func(out printer, s *store.Store) error {
		p, err := s.Live(c.Context)
		if err != nil {
			return fmt.Errorf("reading the live map from %s: %w", s.Addr(), err)
		}
		t, err := steering.CompilePublished(p)
		if err != nil {
			return err
		}
		return fn(out, live{p, t, s})
	})
}

func applyCommand() *cli.Command {
	return &cli.Command{
		Name:  "apply",
		Usage: "validate a map file and publish it to Redis as the next version",
		Description: `The whole map is written as one new version, atomically, and announced to
every agent. Instances keep their IDs; instances the controller marked down
stay down.

Example:
   nfsteer apply --redis redis://10.0.0.5:6379 -f /etc/nfsteer/map.yaml`,
		Flags: []cli.Flag{
			redisFlag(),
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "map `FILE`"},
			&cli.Uint64Flag{Name: "version", Usage: "publish as exactly this `VERSION` (refused unless newer than the live one)"},
		},
		Action: func(c *cli.Context) error {
			m, err := steering.LoadFile(c.String("file"))
			if err != nil {
				return cli.Exit(err, 1)
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			defer s.Close()
			p, err := s.Publish(c.Context, func(live *steering.Published) (*steering.Published, error) {
				next := &steering.Published{Map: m}
				if live != nil {
					next = live.WithMap(m)
				}
				next.Version = c.Uint64("version")
				return next, nil
			})
			if err != nil {
				return cli.Exit(err, 1)
			}
			fmt.Fprintf(c.App.Writer, "published map version %d (%d services, %d tenants) at %s\n",
				p.Version, len(p.Map.Services), len(p.Map.Tenants), p.At.Format(time.RFC3339Nano))
			return nil
		},
	}
}

func controllerCommand() *cli.Command {
	return &cli.Command{
		Name:  "controller",
		Usage: "mark instances down and up from their heartbeats, publishing each change (one active, others standby)",
		Description: `Example:
   nfsteer controller --redis redis://10.0.0.5:6379`,
		Flags: []cli.Flag{
			redisFlag(),
			&cli.DurationFlag{Name: "heartbeat", Value: 25 * time.Millisecond, Usage: "the agents' heartbeat `INTERVAL`", EnvVars: []string{"NFSTEER_HEARTBEAT"}},
			&cli.IntFlag{Name: "misses", Value: 4, Usage: "heartbeats missed before an instance is down", EnvVars: []string{"NFSTEER_MISSES"}},
			&cli.DurationFlag{Name: "lease", Value: 2 * time.Second, Usage: "controller lease `TTL` (how long a dead controller blocks its standby)"},
			&cli.IntFlag{Name: "score-out", Value: 50, Usage: "an instance whose health score stays below `SCORE` takes no new flows (-1: scores off)", EnvVars: []string{"NFSTEER_SCORE_OUT"}},
			&cli.IntFlag{Name: "score-in", Value: 80, Usage: "it takes new flows again once it scores at least `SCORE`", EnvVars: []string{"NFSTEER_SCORE_IN"}},
			&cli.IntFlag{Name: "score-hold", Value: 3, Usage: "heartbeat reports in a row a score must hold to change anything", EnvVars: []string{"NFSTEER_SCORE_HOLD"}},
			metricsFlag(),
		},
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			defer s.Close()
			if c.Int("score-in") < c.Int("score-out") {
				return cli.Exit("--score-in must be at least --score-out (the gap keeps instances from flapping)", 2)
			}
			ctl := controller.New(s, controller.Config{
				Interval: c.Duration("heartbeat"), Misses: c.Int("misses"), LeaseTTL: c.Duration("lease"),
				ScoreOut: c.Int("score-out"), ScoreIn: c.Int("score-in"), ScoreHold: c.Int("score-hold"),
			})
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			g, ctx := errgroup.WithContext(ctx)
			if addr := c.String("metrics"); addr != "" {
				ms, err := metrics.Listen(addr, ctl.Collector())
				if err != nil {
					return err
				}
				g.Go(func() error { return ms.Run(ctx) })
			}
			g.Go(func() error { return ctl.Run(ctx) })
			return g.Wait()
		},
	}
}
