package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nfsteer/nfsteer/controller"
	"github.com/nfsteer/nfsteer/metrics"
	"github.com/nfsteer/nfsteer/signing"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"
)

func redisFlag() cli.Flag {
	return &cli.StringFlag{Name: "redis", Usage: "Redis `URL` (redis://, rediss://, unix://; ?addr= for Cluster, ?master_name= for Sentinel)", EnvVars: []string{"NFSTEER_REDIS"}}
}

// redisCompanions are the flags every command with --redis takes with
// it: the keys it trusts maps from, the files of a rediss:// connection
// and, for a command that touches sessions (not the controller), the
// fleet's session key. withRedisFlags gives them to the commands; the
// agent lists them itself, for its config file.
func redisCompanions(sessions bool) []cli.Flag {
	f := []cli.Flag{
		trustKeyFlag(),
		&cli.StringFlag{Name: "redis-ca", Usage: "with a rediss:// URL: the CA `FILE` (PEM) that signs Redis's certificate (default: the system's CAs)", EnvVars: []string{"NFSTEER_REDIS_CA"}},
		&cli.StringFlag{Name: "redis-cert", Usage: "with a rediss:// URL: this client's certificate `FILE` (PEM), for a Redis that asks for one", EnvVars: []string{"NFSTEER_REDIS_CERT"}},
		&cli.StringFlag{Name: "redis-key", Usage: "the private key `FILE` (PEM) of --redis-cert", EnvVars: []string{"NFSTEER_REDIS_KEY"}},
	}
	if sessions {
		f = append(f, sessionKeyFlags()...)
	}
	return f
}

// sessionKeyFlags are the session keys' flags: the key a node seals with,
// and what it trusts besides while the fleet starts sealing or changes
// keys (README: "Sealed session records").
func sessionKeyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "session-key", Usage: "seal the session records this node writes, and trust only sealed ones, with the fleet's key in `FILE` (nfsteer key generate --session)", EnvVars: []string{"NFSTEER_SESSION_KEY"}},
		&cli.StringSliceFlag{Name: "session-key-accept", Usage: "also trust the session records sealed with the key in `FILE`: the next key, before any node seals with it, or the previous one, after (repeat for several)", EnvVars: []string{"NFSTEER_SESSION_KEY_ACCEPT"}},
		&cli.BoolFlag{Name: "session-accept-unsealed", Usage: "with --session-key: also trust session records that carry no seal, while the fleet starts sealing", EnvVars: []string{"NFSTEER_SESSION_ACCEPT_UNSEALED"}},
	}
}

// sessionKeysOf loads the session keys' flags (the zero SessionKeys if
// none is given).
func sessionKeysOf(c *cli.Context) (signing.SessionKeys, error) {
	var ks signing.SessionKeys
	if f := c.String("session-key"); f != "" {
		k, err := signing.LoadSessionKey(f)
		if err != nil {
			return ks, cli.Exit("--session-key: "+err.Error(), 2)
		}
		ks.Seal = k
	}
	for _, f := range c.StringSlice("session-key-accept") {
		k, err := signing.LoadSessionKey(f)
		if err != nil {
			return ks, cli.Exit("--session-key-accept: "+err.Error(), 2)
		}
		ks.Accept = append(ks.Accept, k)
	}
	if ks.Unsealed = c.Bool("session-accept-unsealed"); ks.Unsealed && ks.Seal == nil {
		return ks, cli.Exit("--session-accept-unsealed: only with --session-key (a node that seals nothing trusts unsealed records anyway)", 2)
	}
	return ks, nil
}

// withRedisFlags gives every command that takes --redis, and does not
// list them itself, its companions (redisCompanions).
func withRedisFlags(cmds []*cli.Command) {
	for _, cmd := range cmds {
		names := map[string]bool{}
		for _, f := range cmd.Flags {
			for _, n := range f.Names() {
				names[n] = true
			}
		}
		if names["redis"] && !names["trust-key"] {
			// The controller writes no session.
			cmd.Flags = append(cmd.Flags, redisCompanions(cmd.Name != "controller")...)
		}
		withRedisFlags(cmd.Subcommands)
	}
}

// tlsOf returns the TLS files the command was given.
func tlsOf(c *cli.Context) store.TLSFiles {
	return store.TLSFiles{CA: c.String("redis-ca"), Cert: c.String("redis-cert"), Key: c.String("redis-key")}
}

// checkRedisTLS checks the TLS files against the URL, without connecting.
func checkRedisTLS(c *cli.Context) error {
	if err := store.CheckURL(c.String("redis"), store.WithTLS(tlsOf(c))); err != nil {
		return cli.Exit("--redis-ca, --redis-cert, --redis-key: "+err.Error(), 2)
	}
	return nil
}

func signingKeyFlag() cli.Flag {
	return &cli.StringFlag{Name: "signing-key", Usage: "sign the map versions this command publishes with the ed25519 private key in `FILE` (nfsteer key generate)", EnvVars: []string{"NFSTEER_SIGNING_KEY"}}
}

func trustKeyFlag() cli.Flag {
	return &cli.StringSliceFlag{Name: "trust-key", Usage: "refuse map versions from Redis not signed by the ed25519 public key in `FILE` (repeat to trust several, as while keys are rotated)", EnvVars: []string{"NFSTEER_TRUST_KEY"}}
}

// trustOf returns the verifier of the --trust-key files (nil if none).
func trustOf(c *cli.Context) (*signing.Verifier, error) {
	v, err := signing.LoadVerifier(c.StringSlice("trust-key")...)
	if err != nil {
		return nil, cli.Exit("--trust-key: "+err.Error(), 2)
	}
	return v, nil
}

// openStore opens the store at --redis, signing what it publishes with
// --signing-key and refusing maps no --trust-key signed, where the
// command has those flags. Key files are read first: a bad one is a usage
// error before anything is connected.
func openStore(c *cli.Context) (*store.Store, error) {
	if c.String("redis") == "" {
		return nil, cli.Exit("--redis URL (or NFSTEER_REDIS) is required", 2)
	}
	var signer *signing.Signer
	if f := c.String("signing-key"); f != "" {
		var err error
		if signer, err = signing.LoadSigner(f); err != nil {
			return nil, cli.Exit("--signing-key: "+err.Error(), 2)
		}
	}
	trust, err := trustOf(c)
	if err != nil {
		return nil, err
	}
	sk, err := sessionKeysOf(c)
	if err != nil {
		return nil, err
	}
	if err := checkRedisTLS(c); err != nil {
		return nil, err
	}
	s, err := store.Open(c.Context, c.String("redis"), store.WithTLS(tlsOf(c)))
	if err != nil {
		return nil, err
	}
	s.SignWith(signer)
	s.Trust(trust)
	s.SealSessions(sk)
	return s, nil
}

func redisCommand() *cli.Command {
	return &cli.Command{
		Name:  "redis",
		Usage: "what nfsteer needs of Redis",
		Subcommands: []*cli.Command{{
			Name:  "acl",
			Usage: "print the Redis 7 ACL users of least privilege: agent, controller, operator",
			Description: `Prints one ACL SETUSER per role, with the key patterns, channels and
commands it needs and nothing else (%R~ is read-only). Replace PASSWORD,
run them (or put them in an ACL file), and give each side its user in its
URL: redis://nfsteer-agent:PASSWORD@host:6379. A command refused for
lack of a permission fails naming it (NOPERM ...).

Example:
   nfsteer redis acl --role agent`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "role", Usage: "only `ROLE`: agent, controller or operator"},
				&cli.StringFlag{Name: "user-prefix", Value: "nfsteer-", Usage: "user names are `PREFIX` followed by the role"},
				outputFlag(),
			},
			Action: func(c *cli.Context) error {
				out, err := printerOf(c)
				if err != nil {
					return err
				}
				roles := store.ACLRoles
				if r := c.String("role"); r != "" {
					roles = []store.ACLRole{store.ACLRole(r)}
				}
				type user struct {
					Role  string   `json:"role"`
					User  string   `json:"user"`
					About string   `json:"about"`
					Rules []string `json:"rules"`
				}
				var users []user
				for _, r := range roles {
					rules, err := store.ACLRules(r)
					if err != nil {
						return cli.Exit("--role: "+err.Error(), 2)
					}
					users = append(users, user{string(r), c.String("user-prefix") + string(r), r.About(), rules})
				}
				return out.print(users, func(w io.Writer) {
					for _, u := range users {
						fmt.Fprintf(w, "# %s\nACL SETUSER %s on >PASSWORD %s\n", u.About, u.User, strings.Join(u.Rules, " "))
					}
				})
			},
		}},
	}
}

func keyCommand() *cli.Command {
	return &cli.Command{
		Name:  "key",
		Usage: "make the keys that sign map versions and seal session records",
		Subcommands: []*cli.Command{{
			Name:  "generate",
			Usage: "write a new private key to FILE (mode 0600) and its public key to FILE.pub; with --session, the fleet's session key",
			Description: `The private key signs: give it to the operators' CLI and to the controller
(--signing-key or NFSTEER_SIGNING_KEY). The public key verifies: give it to
every agent and controller (--trust-key, repeatable). With --session it
writes the fleet's session key instead, for every agent's --session-key
(NFSTEER_SESSION_KEY). An existing file is never written over.

Example:
   nfsteer key generate --out /etc/nfsteer/ops.key
   nfsteer key generate --session --out /etc/nfsteer/session.key`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "out", Required: true, Usage: "the private key's `FILE`"},
				&cli.BoolFlag{Name: "session", Usage: "make the fleet's session key instead (32 random bytes, hex, mode 0600), for every agent's and the CLI's --session-key"},
			},
			Action: func(c *cli.Context) error {
				if c.Bool("session") {
					if err := signing.GenerateSessionKey(c.String("out")); err != nil {
						return err
					}
					_, id, err := signing.IdentifyKeyFile(c.String("out"))
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "session key %s: %s (mode 0600)\n", id, c.String("out"))
					return nil
				}
				id, err := signing.GenerateKey(c.String("out"))
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "key %s: private key %s (mode 0600), public key %s.pub\n", id, c.String("out"), c.String("out"))
				return nil
			},
		}, {
			Name:      "id",
			Usage:     "say what each key FILE holds and its ID, as status, the logs and signatures name it",
			ArgsUsage: "FILE...",
			Description: `A signing key (private or public) is named by the first 8 bytes of the
SHA-256 of its public key, a session key by 8 bytes of its MAC of a fixed
label (never the key itself): match them to the TRUST column of nfsteer
status while changing keys.

Example:
   nfsteer key id /etc/nfsteer/session.key /etc/nfsteer/ops.key.pub`,
			Flags: []cli.Flag{outputFlag()},
			Action: func(c *cli.Context) error {
				out, err := printerOf(c)
				if err != nil {
					return err
				}
				if c.NArg() == 0 {
					return cli.Exit("key id: give at least one key FILE", 2)
				}
				type keyView struct {
					File string `json:"file"`
					Kind string `json:"kind"`
					ID   string `json:"id"`
				}
				var keys []keyView
				for _, f := range c.Args().Slice() {
					kind, id, err := signing.IdentifyKeyFile(f)
					if err != nil {
						return cli.Exit(err.Error(), 1)
					}
					keys = append(keys, keyView{f, kind, id})
				}
				return out.print(keys, func(w io.Writer) {
					row(w, "FILE", "KIND", "ID")
					for _, k := range keys {
						row(w, k.File, k.Kind, k.ID)
					}
				})
			},
		}},
	}
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
		Description: `Prints every change (as map diff does) and publishes the whole map as one
new version, atomically, announced to every agent. Instances keep their
IDs; instances the controller marked down stay down. A file that changes
nothing publishes nothing and says "unchanged".

Guards, each refusing with the live version untouched:
  - a file that lacks tenants, services or instances the live map has is
    refused, naming them, unless --prune;
  - a file written by map export is refused if the live map has changed
    since the export (another operator's edit would be lost); versions
    that only mark instances down or drained do not count. --base-version
    N checks against version N instead.

Example:
   nfsteer map export --redis redis://10.0.0.5:6379 > map.yaml
   vi map.yaml
   nfsteer apply --redis redis://10.0.0.5:6379 -f map.yaml --dry-run
   nfsteer apply --redis redis://10.0.0.5:6379 -f map.yaml`,
		Flags: []cli.Flag{
			redisFlag(), signingKeyFlag(), outputFlag(),
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "map `FILE`"},
			&cli.BoolFlag{Name: "prune", Usage: "remove the tenants, services and instances the file does not have"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the changes and publish nothing"},
			&cli.Uint64Flag{Name: "base-version", Usage: "refuse unless the live map is still at `VERSION` (overrides the file's export header)"},
			&cli.Uint64Flag{Name: "version", Usage: "publish as exactly this `VERSION` (refused unless newer than the live one)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return cli.Exit(fmt.Sprintf("apply takes no arguments, got %q (the file goes with -f)", c.Args().Slice()), 2)
			}
			file, err := os.ReadFile(c.String("file"))
			if err != nil {
				return cli.Exit(fmt.Errorf("reading map: %w", err), 1)
			}
			m, err := steering.Parse(file)
			if err != nil {
				return cli.Exit(fmt.Errorf("%s: %w", c.String("file"), err), 1)
			}
			o := steering.ApplyOptions{Prune: c.Bool("prune")}
			o.Base, _ = steering.BaseOf(file)
			if c.IsSet("base-version") {
				o.Base = steering.Base{Version: c.Uint64("base-version")}
			}
			return withStore(c, func(out printer, s *store.Store) error {
				var changes []steering.Change
				plan := func(live *steering.Published) (*steering.Published, error) {
					next, ch, err := steering.PlanApply(live, m, o)
					if err != nil {
						return nil, err
					}
					changes = ch
					next.Version = c.Uint64("version")
					return next, nil
				}
				r := applied{Changes: []steering.Change{}}
				if c.Bool("dry-run") {
					live, err := s.Live(c.Context)
					if err != nil && !errors.Is(err, store.ErrNoMap) {
						return err
					}
					next, err := plan(live)
					if err != nil {
						return cli.Exit(err, 1)
					}
					r.DryRun, r.Unchanged = true, live != nil && next.SameAs(live)
					if live != nil {
						r.Version = live.Version
					}
				} else {
					p, err := s.Publish(c.Context, plan)
					switch {
					case errors.Is(err, store.ErrUnchanged):
						r.Unchanged = true
					case err != nil:
						return cli.Exit(err, 1)
					}
					r.Version, r.At = p.Version, p.At
				}
				r.Changes = append(r.Changes, changes...)
				return out.print(r, r.table)
			})
		},
	}
}

// checkController checks the controller's settings before it starts.
func checkController(c *cli.Context) error {
	hb, misses, lease := c.Duration("heartbeat"), c.Int("misses"), c.Duration("lease")
	switch {
	case hb < time.Millisecond:
		return settingError(c, "heartbeat", fmt.Sprintf("%v: want at least 1ms", hb))
	case misses < 1:
		return settingError(c, "misses", fmt.Sprintf("%d: want at least 1", misses))
	case lease < max(200*time.Millisecond, 8*hb):
		return settingError(c, "lease", fmt.Sprintf("%v: want at least %v (200ms and 8 heartbeats): the active controller renews it every half heartbeat, and a lease that lapses between renewals lets a standby take over while it runs",
			lease, max(200*time.Millisecond, 8*hb)))
	case c.Int("score-out") < -1 || c.Int("score-out") > 100:
		return settingError(c, "score-out", fmt.Sprintf("%d: want 0 to 100, or -1 for no scores", c.Int("score-out")))
	case c.Int("score-in") > 100 || c.Int("score-in") < c.Int("score-out"):
		return settingError(c, "score-in", fmt.Sprintf("%d: want --score-out (%d) to 100: the gap keeps instances from flapping", c.Int("score-in"), c.Int("score-out")))
	case c.Int("score-hold") < 1:
		return settingError(c, "score-hold", fmt.Sprintf("%d: want at least 1", c.Int("score-hold")))
	}
	if err := store.CheckURL(c.String("redis")); err != nil {
		return settingError(c, "redis", fmt.Sprintf("%s: %v", redactURL(c.String("redis")), errors.Unwrap(err)))
	}
	return checkRedisTLS(c)
}

// applied is what apply prints.
type applied struct {
	// Version is the version published, or the live one when nothing was.
	Version   uint64            `json:"version"`
	At        time.Time         `json:"at,omitzero"`
	Unchanged bool              `json:"unchanged"`
	DryRun    bool              `json:"dry_run"`
	Changes   []steering.Change `json:"changes"`
}

func (r applied) table(w io.Writer) {
	switch {
	case r.Unchanged:
		fmt.Fprintf(w, "unchanged: the live map (version %d) already says this; nothing published\n", r.Version)
		return
	case r.DryRun:
		fmt.Fprintf(w, "dry run: would publish the version after %d with %d changes; nothing published\n", r.Version, len(r.Changes))
	default:
		fmt.Fprintf(w, "published map version %d at %s with %d changes\n", r.Version, r.At.Format(time.RFC3339Nano), len(r.Changes))
	}
	for _, ch := range r.Changes {
		fmt.Fprintln(w, "  "+ch.String())
	}
}

func controllerCommand() *cli.Command {
	return &cli.Command{
		Name:  "controller",
		Usage: "mark instances down and up from their heartbeats, publishing each change (one active, others standby)",
		Description: `Example:
   nfsteer controller --redis redis://10.0.0.5:6379`,
		Flags: []cli.Flag{
			redisFlag(), signingKeyFlag(),
			&cli.DurationFlag{Name: "heartbeat", Value: 25 * time.Millisecond, Usage: "the agents' heartbeat `INTERVAL`", EnvVars: []string{"NFSTEER_HEARTBEAT"}},
			&cli.IntFlag{Name: "misses", Value: 4, Usage: "heartbeats missed before an instance is down", EnvVars: []string{"NFSTEER_MISSES"}},
			&cli.DurationFlag{Name: "lease", Value: 2 * time.Second, Usage: "controller lease `TTL` (how long a dead controller blocks its standby)"},
			&cli.DurationFlag{Name: "reconnect-grace", Value: 2 * time.Second, Usage: "after Redis comes back from an outage (or a Sentinel or Cluster failover), hold no silence against an instance for `DURATION`: the agents find Redis again later than the controller", EnvVars: []string{"NFSTEER_RECONNECT_GRACE"}},
			&cli.IntFlag{Name: "score-out", Value: 50, Usage: "an instance whose health score stays below `SCORE` takes no new flows (-1: scores off)", EnvVars: []string{"NFSTEER_SCORE_OUT"}},
			&cli.IntFlag{Name: "score-in", Value: 80, Usage: "it takes new flows again once it scores at least `SCORE`", EnvVars: []string{"NFSTEER_SCORE_IN"}},
			&cli.IntFlag{Name: "score-hold", Value: 3, Usage: "heartbeat reports in a row a score must hold to change anything", EnvVars: []string{"NFSTEER_SCORE_HOLD"}},
			metricsFlag(),
		},
		Action: func(c *cli.Context) error {
			if err := checkController(c); err != nil {
				return err
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			defer s.Close()
			if !s.Trusts() {
				slog.Warn("maps from Redis are not authenticated: whoever can write to Redis can steer traffic (give --trust-key)", "redis", s.Addr())
			}
			ctl := controller.New(s, controller.Config{
				Interval: c.Duration("heartbeat"), Misses: c.Int("misses"), LeaseTTL: c.Duration("lease"), ReconnectGrace: c.Duration("reconnect-grace"),
				ScoreOut: c.Int("score-out"), ScoreIn: c.Int("score-in"), ScoreHold: c.Int("score-hold"),
			})
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			g, ctx := errgroup.WithContext(ctx)
			if addr := c.String("metrics"); addr != "" {
				ms, err := metrics.Listen(addr, ctl.Ready, ctl.Collector())
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
