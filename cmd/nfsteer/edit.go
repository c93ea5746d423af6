package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/urfave/cli/v2"
)

// This file holds the commands that change the live map one name at a
// time. Each goes through store.Publish like apply: the whole map is
// validated and published as one new version, or nothing changes.

// published is what an edit prints.
type published struct {
	Version uint64            `json:"version"`
	At      time.Time         `json:"at"`
	Changes []steering.Change `json:"changes"`
}

// publishEdit applies edit to the live map, publishes the result and prints
// the version and what changed.
func publishEdit(c *cli.Context, edit func(live *steering.Published) (*steering.Published, error)) error {
	return withStore(c, func(out printer, s *store.Store) error { return publishWith(c, out, s, edit) })
}

func publishWith(c *cli.Context, out printer, s *store.Store, edit func(live *steering.Published) (*steering.Published, error)) error {
	var before *steering.Published
	p, err := s.Publish(c.Context, func(live *steering.Published) (*steering.Published, error) {
		if live == nil {
			return nil, fmt.Errorf("no live map in Redis at %s: publish one with nfsteer apply -f FILE first", s.Addr())
		}
		before = live
		return edit(live)
	})
	if errors.Is(err, store.ErrUnchanged) {
		r := applied{Version: p.Version, Unchanged: true, Changes: []steering.Change{}}
		return out.print(r, r.table)
	}
	if err != nil {
		return err
	}
	r := published{Version: p.Version, At: p.At, Changes: steering.Diff(before.Map, p.Map)}
	r.Changes = append(r.Changes, listChanges("down", before.Down, p.Down)...)
	r.Changes = append(r.Changes, listChanges("drained", before.Drained, p.Drained)...)
	return out.print(r, func(w io.Writer) {
		fmt.Fprintf(w, "published map version %d at %s\n", r.Version, r.At.Format(time.RFC3339Nano))
		for _, ch := range r.Changes {
			fmt.Fprintln(w, "  "+ch.String())
		}
	})
}

// listChanges describes instances entering or leaving a Published list.
func listChanges(field string, before, after []string) []steering.Change {
	var out []steering.Change
	for _, n := range after {
		if !slices.Contains(before, n) {
			out = append(out, steering.Change{Op: "change", Kind: "instance", Name: n, Field: field, From: "false", To: "true"})
		}
	}
	for _, n := range before {
		if !slices.Contains(after, n) {
			out = append(out, steering.Change{Op: "change", Kind: "instance", Name: n, Field: field, From: "true", To: "false"})
		}
	}
	return out
}

// editMap adapts an edit of the operator's map to publishEdit.
func editMap(c *cli.Context, edit func(m *steering.Map) (*steering.Map, error)) error {
	return publishEdit(c, func(live *steering.Published) (*steering.Published, error) {
		m, err := edit(live.Map)
		if err != nil {
			return nil, err
		}
		return live.WithMap(m), nil
	})
}

// removeCommand is `KIND remove NAME`, publishing the map without it.
func removeCommand(kind, usage, example string, remove func(*steering.Map, string) (*steering.Map, error)) *cli.Command {
	return &cli.Command{
		Name:         "remove",
		Usage:        usage,
		ArgsUsage:    "NAME",
		Description:  fmt.Sprintf("Example:\n   nfsteer %s remove --redis redis://10.0.0.5:6379 %s", kind, example),
		BashComplete: completeNames(kind),
		Flags:        []cli.Flag{redisFlag(), signingKeyFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			name, err := oneArg(c, kind+" name")
			if err != nil {
				return err
			}
			return editMap(c, func(m *steering.Map) (*steering.Map, error) { return remove(m, name) })
		},
	}
}

// completeNames completes a command's NAME argument with the names of kind
// ("tenant", "service" or "instance") in the live map. It prints nothing
// when Redis does not answer within a second: completion must not hang a
// shell.
func completeNames(kind string) cli.BashCompleteFunc {
	return func(c *cli.Context) {
		if c.NArg() > 0 || c.String("redis") == "" {
			return
		}
		ctx, cancel := context.WithTimeout(c.Context, time.Second)
		defer cancel()
		s, err := store.Open(ctx, c.String("redis"))
		if err != nil {
			return
		}
		defer s.Close()
		p, err := s.Live(ctx)
		if err != nil {
			return
		}
		var names []string
		switch kind {
		case "tenant":
			names = slices.Collect(maps.Keys(p.Map.Tenants))
		case "service":
			names = slices.Collect(maps.Keys(p.Map.Services))
		case "instance":
			for _, svc := range p.Map.Services {
				names = append(names, slices.Collect(maps.Keys(svc.Instances))...)
			}
		}
		slices.Sort(names)
		for _, n := range names {
			fmt.Fprintln(c.App.Writer, n)
		}
	}
}

// oneArg returns the single NAME argument of a command.
func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", cli.Exit(fmt.Sprintf("%s takes one %s, got %d arguments (see --help)", c.Command.HelpName, what, c.NArg()), 2)
	}
	return c.Args().First(), nil
}

// splitList splits repeated, comma-separated flag values.
func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

func tenantCommand() *cli.Command {
	return &cli.Command{
		Name:  "tenant",
		Usage: "add, remove or list the tenants of the live map",
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "add a tenant with its prefixes, chain and firewall rules",
				ArgsUsage: "NAME",
				Description: `The tenant's flows cross the services of its chain in order. Allow rules
are YAML flow mappings in the map file's format.

Example:
   nfsteer tenant add --redis redis://10.0.0.5:6379 initech \
       --prefix 10.30.0.0/24 --prefix fd00:30::/64 --chain fw,dlp \
       --allow '{proto: tcp, dst: 10.99.0.0/24, ports: ["443", "8000-8100"]}'`,
				Flags: []cli.Flag{
					redisFlag(), signingKeyFlag(), outputFlag(),
					&cli.StringSliceFlag{Name: "prefix", Required: true, Usage: "a source `PREFIX` of the tenant (repeat, or separate with commas)"},
					&cli.StringSliceFlag{Name: "chain", Required: true, Usage: "the `SERVICES` to cross, in order (repeat, or separate with commas)"},
					&cli.StringSliceFlag{Name: "allow", Usage: "a firewall allow `RULE`, e.g. '{proto: udp, dst: 10.99.0.0/24}' (repeat)"},
					&cli.StringSliceFlag{Name: "ingress", Usage: "a gateway `IFACE` the tenant's traffic enters by (repeat): packets entering there from other sources, and from its prefixes elsewhere, are dropped as spoofed"},
					&cli.UintFlag{Name: "tag", Usage: fmt.Sprintf("the tenant's `NUMBER` on the overlay, 1 to %d, unique (a map with an overlay needs one per tenant)", steering.MaxTag)},
					&cli.StringFlag{Name: "snat", Usage: "the `ADDR` the tenant's flows leave with at the end of its chain, unique; with it the tenant may share addresses with other such tenants (it needs one --ingress, a --tag and the map's overlay)"},
					&cli.StringFlag{Name: "via", Usage: "with --snat: the `ADDR` of the router on the --ingress link that the tenant's prefixes sit behind (without it they are on the link)"},
				},
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "tenant name")
					if err != nil {
						return err
					}
					if tag := c.Uint("tag"); tag > steering.MaxTag || c.IsSet("tag") && tag == 0 {
						return cli.Exit(fmt.Sprintf("--tag %d: want 1 to %d", tag, steering.MaxTag), 2)
					}
					t := steering.Tenant{Prefixes: splitList(c.StringSlice("prefix")), Chain: splitList(c.StringSlice("chain")), Ingress: splitList(c.StringSlice("ingress")),
						Tag: uint16(c.Uint("tag")), SNAT: c.String("snat"), Via: c.String("via")}
					for _, a := range c.StringSlice("allow") {
						rule, err := steering.ParseAllow(a)
						if err != nil {
							return cli.Exit(fmt.Sprintf("--allow %q: %v (want a mapping like '{proto: tcp, dst: 10.0.0.0/8, ports: [\"443\"]}')", a, err), 2)
						}
						t.Allow = append(t.Allow, rule)
					}
					if err := steering.CheckTenant(name, t); err != nil {
						return err // before Redis: bad input is named whether or not Redis answers
					}
					return editMap(c, func(m *steering.Map) (*steering.Map, error) { return m.AddTenant(name, t) })
				},
			},
			removeCommand("tenant", "remove a tenant: its new flows are no longer steered (established ones keep their path)", "initech", (*steering.Map).RemoveTenant),
			{
				Name:        "list",
				Usage:       "list the tenants of the live map",
				Description: "Example:\n   nfsteer tenant list --redis redis://10.0.0.5:6379 -o json",
				Flags:       []cli.Flag{redisFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					return withLive(c, tenantList)
				},
			},
		},
	}
}

func tenantList(out printer, l live) error {
	type tenant struct {
		Name string `json:"name"`
		steering.Tenant
	}
	var list []tenant
	for _, n := range slices.Sorted(maps.Keys(l.p.Map.Tenants)) {
		list = append(list, tenant{n, *l.p.Map.Tenants[n]})
	}
	return out.print(list, func(w io.Writer) {
		row(w, "TENANT", "TAG", "INGRESS", "PREFIXES", "SNAT", "VIA", "CHAIN", "ALLOW RULES")
		for _, t := range list {
			tag := "-"
			if t.Tag != 0 {
				tag = strconv.Itoa(int(t.Tag))
			}
			row(w, t.Name, tag, strings.Join(t.Ingress, ","), strings.Join(t.Prefixes, ","), orDash(t.SNAT), orDash(t.Via), strings.Join(t.Chain, " > "), len(t.Allow))
		}
	})
}

func serviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "service",
		Usage: "add, remove or list the services of the live map",
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "add a service with its instances",
				ArgsUsage: "NAME",
				Description: `Example:
   nfsteer service add --redis redis://10.0.0.5:6379 ids --function forward \
       --instance ids-1=10.200.0.31,fd00:200::31 --instance ids-2=10.200.0.32,fd00:200::32`,
				Flags: []cli.Flag{
					redisFlag(), signingKeyFlag(), outputFlag(),
					&cli.StringFlag{Name: "function", Value: steering.FunctionForward, Usage: "what the service does: `forward` or firewall"},
					&cli.StringSliceFlag{Name: "instance", Required: true, Usage: "an instance as `NAME=ADDR[,ADDR]` (repeat)"},
				},
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "service name")
					if err != nil {
						return err
					}
					svc := steering.Service{Function: c.String("function"), Instances: map[string]steering.Addresses{}}
					for _, spec := range c.StringSlice("instance") {
						in, addrs, ok := strings.Cut(spec, "=")
						if !ok || in == "" || addrs == "" {
							return cli.Exit(fmt.Sprintf("--instance %q: want NAME=ADDR[,ADDR]", spec), 2)
						}
						if _, dup := svc.Instances[in]; dup {
							return cli.Exit(fmt.Sprintf("--instance %q: instance %q given twice", spec, in), 2)
						}
						svc.Instances[in] = splitList([]string{addrs})
					}
					if err := steering.CheckService(name, svc); err != nil {
						return err
					}
					return editMap(c, func(m *steering.Map) (*steering.Map, error) { return m.AddService(name, svc) })
				},
			},
			removeCommand("service", "remove a service no tenant's chain names", "ids", (*steering.Map).RemoveService),
			{
				Name:        "list",
				Usage:       "list the services of the live map",
				Description: "Example:\n   nfsteer service list --redis redis://10.0.0.5:6379",
				Flags:       []cli.Flag{redisFlag(), outputFlag()},
				Action:      func(c *cli.Context) error { return withLive(c, serviceList) },
			},
		},
	}
}

func serviceList(out printer, l live) error {
	type service struct {
		Name      string   `json:"name"`
		Function  string   `json:"function"`
		Instances []string `json:"instances"`
		Tenants   []string `json:"tenants"`
	}
	var list []service
	for _, n := range slices.Sorted(maps.Keys(l.p.Map.Services)) {
		svc := l.p.Map.Services[n]
		list = append(list, service{n, svc.FunctionName(), slices.Sorted(maps.Keys(svc.Instances)), l.p.Map.TenantsOf(n)})
	}
	return out.print(list, func(w io.Writer) {
		row(w, "SERVICE", "FUNCTION", "INSTANCES", "IN THE CHAIN OF")
		for _, s := range list {
			row(w, s.Name, s.Function, strings.Join(s.Instances, ","), strings.Join(s.Tenants, ","))
		}
	})
}
