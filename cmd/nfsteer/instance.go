package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nfsteer/nfsteer/drain"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/urfave/cli/v2"
)

func instanceCommand() *cli.Command {
	return &cli.Command{
		Name:  "instance",
		Usage: "add, remove, list, drain or undrain the instances of the live map",
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "add an instance to a service; it takes its share of new flows from the next version on",
				ArgsUsage: "NAME ADDR [ADDR]",
				Description: `Established flows keep their instances; only new flows land on the new one.

Example:
   nfsteer instance add --redis redis://10.0.0.5:6379 --service fw fw-3 10.200.0.13 fd00:200::13`,
				Flags: []cli.Flag{
					redisFlag(), signingKeyFlag(), outputFlag(),
					&cli.StringFlag{Name: "service", Required: true, Usage: "the `SERVICE` the instance belongs to"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() < 2 || c.NArg() > 3 {
						return cli.Exit(fmt.Sprintf("instance add takes NAME and one or two addresses, got %d arguments (see --help)", c.NArg()), 2)
					}
					args := c.Args().Slice()
					// Checked alone before Redis is read; its function and
					// its other instances are the live map's.
					probe := steering.Service{Instances: map[string]steering.Addresses{args[0]: args[1:]}}
					if err := steering.CheckService(c.String("service"), probe); err != nil {
						return err
					}
					return editMap(c, func(m *steering.Map) (*steering.Map, error) {
						return m.AddInstance(c.String("service"), args[0], steering.Addresses(args[1:]))
					})
				},
			},
			{
				Name:         "remove",
				Usage:        "remove an instance that carries no flows (drain it first)",
				BashComplete: completeNames("instance"),
				ArgsUsage:    "NAME",
				Description: `Refused while Redis lists sessions for which the instance is primary,
unless --force: their flows would lose their path. Drain the instance and
wait for its flows to end (or drain --migrate them), then remove it.

Example:
   nfsteer instance drain --redis redis://10.0.0.5:6379 fw-2
   nfsteer instance remove --redis redis://10.0.0.5:6379 fw-2`,
				Flags: []cli.Flag{
					redisFlag(), signingKeyFlag(), outputFlag(),
					&cli.BoolFlag{Name: "force", Usage: "remove it even though it carries flows, or is its service's last instance in service"},
				},
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "instance name")
					if err != nil {
						return err
					}
					if !c.Bool("force") {
						s, err := openStore(c)
						if err != nil {
							return err
						}
						// The entries' own roles, not the index: a node
						// refreshing a flow it has not re-pinned yet may
						// index the old primary again.
						recs, _, err := s.List(c.Context, name, store.RolePrimary)
						s.Close()
						if err != nil {
							return err
						}
						if n := len(recs); n > 0 {
							return fmt.Errorf("instance %q still carries %d sessions: drain it and wait, drain --migrate it, or remove --force", name, n)
						}
					}
					return publishEdit(c, func(live *steering.Published) (*steering.Published, error) {
						m, err := live.Map.RemoveInstance(name)
						if err != nil {
							return nil, err
						}
						return keepInService(c, live, live.WithMap(m))
					})
				},
			},
			{
				Name:  "list",
				Usage: "list instances with their state, slots, sessions and last heartbeat",
				Description: `STATE is up, down (the controller found it dead) or drained. SLOTS is how
many affinity slots it holds as primary. SESSIONS counts the live sessions
Redis indexes for it as primary and secondary.

Example:
   nfsteer instance list --redis redis://10.0.0.5:6379`,
				Flags:  []cli.Flag{redisFlag(), outputFlag()},
				Action: instanceList,
			},
			drainCommand(),
			{
				Name:         "undrain",
				Usage:        "let a drained instance take new flows again",
				BashComplete: completeNames("instance"),
				ArgsUsage:    "NAME",
				Description:  "Example:\n   nfsteer instance undrain --redis redis://10.0.0.5:6379 fw-2",
				Flags:        []cli.Flag{redisFlag(), signingKeyFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "instance name")
					if err != nil {
						return err
					}
					return publishEdit(c, func(live *steering.Published) (*steering.Published, error) { return live.Undrain(name) })
				},
			},
		},
	}
}

func drainCommand() *cli.Command {
	return &cli.Command{
		Name:         "drain",
		BashComplete: completeNames("instance"),
		Usage:        "stop new flows to an instance at once; it keeps the flows it has, or hands them over with --migrate",
		ArgsUsage:    "NAME",
		Description: `Draining publishes a version in which the instance holds no role: new flows
go to the other instances at once, established ones stay until they end.

With --migrate the established flows move too, without breaking: their
sessions (pins and the service's state) are handed over in Redis to the
instances that hold their slots now, and only then is a version published
in which every node re-pins the flows to them. --deadline D first lets flows
end on their own for D, and migrates what is left.

A drain that would leave a service in some tenant's chain with no instance
in service (the others down, drained or unhealthy) is refused without
--force: its new flows would fall back to out-of-service instances.

Example, before maintenance:
   nfsteer instance drain --redis redis://10.0.0.5:6379 --migrate --deadline 5m fw-2
   nfsteer instance remove --redis redis://10.0.0.5:6379 fw-2`,
		Flags: []cli.Flag{
			redisFlag(), signingKeyFlag(), outputFlag(),
			&cli.BoolFlag{Name: "migrate", Usage: "hand the established flows over to the other instances too"},
			&cli.DurationFlag{Name: "deadline", Usage: "with --migrate: let flows end on their own for `D` first"},
			&cli.BoolFlag{Name: "force", Usage: "drain it even though it is its service's last instance in service"},
		},
		Action: func(c *cli.Context) error {
			name, err := oneArg(c, "instance name")
			if err != nil {
				return err
			}
			if !c.Bool("migrate") {
				if c.IsSet("deadline") {
					return cli.Exit("--deadline needs --migrate", 2)
				}
				return publishEdit(c, func(live *steering.Published) (*steering.Published, error) {
					next, err := live.Drain(name)
					if err != nil {
						return nil, err
					}
					return keepInService(c, live, next)
				})
			}
			return migrate(c, name)
		},
	}
}

// keepInService returns next, or refuses it without --force when it leaves
// a service in use with no instance in service.
func keepInService(c *cli.Context, live, next *steering.Published) (*steering.Published, error) {
	if err := live.KeepsInService(next); err != nil && !c.Bool("force") {
		return nil, err
	}
	return next, nil
}

// migrate runs drain --migrate and prints what it did.
func migrate(c *cli.Context, name string) error {
	return withStore(c, func(out printer, s *store.Store) error {
		r, err := drain.Migrate(c.Context, s, name, drain.Options{Deadline: c.Duration("deadline"), Force: c.Bool("force")})
		for _, err := range r.Skipped {
			fmt.Fprintf(c.App.ErrWriter, "nfsteer: skipped: %v\n", err)
		}
		if err != nil {
			return err
		}
		v := migrated{Instance: r.Instance, Ended: r.Ended, HandedOver: r.HandedOver, Version: r.Version, At: r.At,
			SwitchedS: maybeSeconds(r.Switched, r.AllSwitched)}
		return out.print(v, func(w io.Writer) {
			fmt.Fprintf(w, "%s drained; %d sessions ended on their own, %d handed over; migrating in map version %d at %s\n",
				name, r.Ended, r.HandedOver, r.Version, r.At.Format(time.RFC3339Nano))
			if r.AllSwitched {
				fmt.Fprintf(w, "every agent runs version %d %s after it was published\n", r.Version, r.Switched.Round(time.Millisecond))
			} else {
				fmt.Fprintf(w, "not every agent reported version %d within 10s: see nfsteer status\n", r.Version)
			}
		})
	})
}

// migrated is what drain --migrate prints.
type migrated struct {
	Instance   string    `json:"instance"`
	Ended      int64     `json:"ended"`
	HandedOver int       `json:"handed_over"`
	Version    uint64    `json:"version"`
	At         time.Time `json:"at"`
	// SwitchedS is how long after publishing every live agent ran the
	// version, in seconds; null if not all did within the wait.
	SwitchedS *float64 `json:"switched_s"`
}

// instanceRow is one line of instance list.
type instanceRow struct {
	Name      string   `json:"name"`
	Service   string   `json:"service"`
	ID        uint16   `json:"id"`
	Addresses []string `json:"addresses"`
	// State is every state the instance is in, joined by "+" ("up",
	// "down+drained"); States lists them.
	State  string   `json:"state"`
	States []string `json:"states"`
	// Fallback says every instance of the service is out, so the roles
	// fell back to out-of-service instances: new flows still come here.
	Fallback  bool  `json:"fallback"`
	Slots     int   `json:"primary_slots"`
	Primary   int64 `json:"primary_sessions"`
	Secondary int64 `json:"secondary_sessions"`
	// HeartbeatAgeS is the age of the agent's last heartbeat in seconds,
	// null when it never beat.
	HeartbeatAgeS *float64 `json:"heartbeat_age_s"`
}

func instanceList(c *cli.Context) error {
	return withLive(c, func(out printer, l live) error { return listInstances(c, out, l) })
}

func listInstances(c *cli.Context, out printer, l live) error {
	p, t, s := l.p, l.t, l.s
	beats, now, err := s.Beats(c.Context)
	if err != nil {
		return err
	}
	var list []instanceRow
	for si, svc := range t.Services() {
		slots := map[string]int{}
		for slot := range t.Slots() {
			if in, _ := t.RolesFor(si, slot); in != nil {
				slots[in.Name]++
			}
		}
		for _, ii := range svc.Instances {
			in := t.Instances()[ii]
			r := instanceRow{Name: in.Name, Service: svc.Name, ID: in.ID, Addresses: p.Map.Services[svc.Name].Instances[in.Name],
				State: strings.Join(in.States(), "+"), States: in.States(), Fallback: svc.Fallback(), Slots: slots[in.Name]}
			if r.Primary, err = s.Count(c.Context, in.Name, store.RolePrimary); err != nil {
				return err
			}
			if r.Secondary, err = s.Count(c.Context, in.Name, store.RoleSecondary); err != nil {
				return err
			}
			b, heard := beats[in.Name]
			r.HeartbeatAgeS = maybeSeconds(now.Sub(b.At), heard)
			list = append(list, r)
		}
	}
	return out.print(list, func(w io.Writer) {
		row(w, "INSTANCE", "SERVICE", "ID", "ADDRESSES", "STATE", "SLOTS", "SESSIONS P/S", "HEARTBEAT")
		var fallback []string
		for _, r := range list {
			state := r.State
			if r.Fallback {
				state += " (fallback)"
				if !slices.Contains(fallback, r.Service) {
					fallback = append(fallback, r.Service)
				}
			}
			row(w, r.Name, r.Service, r.ID, strings.Join(r.Addresses, ","), state, r.Slots,
				fmt.Sprintf("%d/%d", r.Primary, r.Secondary), ageOf(r.HeartbeatAgeS))
		}
		for _, svc := range fallback {
			fmt.Fprintf(w, "fallback: no instance of %s is in service, so its new flows go to out-of-service instances anyway\n", svc)
		}
	})
}

// ageOf prints a heartbeat age in seconds (nil: never) for people.
func ageOf(s *float64) string {
	if s == nil {
		return "never"
	}
	return age(time.Duration(*s * float64(time.Second)))
}

// age prints a heartbeat age for people.
func age(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return d.Round(time.Millisecond).String() + " ago"
}
