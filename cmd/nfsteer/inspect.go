package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nfsteer/nfsteer/offload"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/urfave/cli/v2"
)

// This file holds the commands that only look: sessions, status, trace.

func sessionsCommand() *cli.Command {
	return &cli.Command{
		Name:  "sessions",
		Usage: "list or show the sessions mirrored in Redis",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list sessions by instance and role, or by tenant",
				Description: `Sessions are read from the role indexes each instance is in (no keyspace scan).
Without --instance, every instance of the map is read (of the tenant's
chain with --tenant).

Example, what fw-1 carries:
   nfsteer sessions list --redis redis://10.0.0.5:6379 --instance fw-1
Example, what fw-2 would take over if its primaries died:
   nfsteer sessions list --redis redis://10.0.0.5:6379 --instance fw-2 --role secondary`,
				Flags: []cli.Flag{
					redisFlag(), outputFlag(),
					&cli.StringFlag{Name: "tenant", Usage: "only this `TENANT`'s sessions"},
					&cli.StringFlag{Name: "instance", Usage: "only sessions this `INSTANCE` holds a role for"},
					&cli.StringFlag{Name: "role", Value: store.RolePrimary, Usage: "the `ROLE` the instance holds: primary or secondary"},
				},
				Action: sessionsList,
			},
			{
				Name:  "reseal",
				Usage: "seal anew, with --session-key, the sessions another trusted key sealed, or none",
				Description: `While a fleet changes its session key (README: "Sealed session records"),
records of flows that outlive the change keep the old key's seal, or
none. Run this once every node seals with the new key, with the flags of
that step (the new key, and the old one accepted): it rewrites each such
record and function state, unless it changed since it was read, and keeps
its life in Redis. The old key can then be dropped. An entry no key it
trusts sealed is left as it is and reported.

Example:
   nfsteer sessions reseal --redis redis://10.0.0.5:6379        --session-key /etc/nfsteer/session-next.key --session-key-accept /etc/nfsteer/session.key`,
				Flags: []cli.Flag{
					redisFlag(), outputFlag(),
					&cli.StringFlag{Name: "instance", Usage: "only the sessions this `INSTANCE` holds the primary role for (default: every instance)"},
				},
				Action: func(c *cli.Context) error {
					if c.String("session-key") == "" {
						return cli.Exit("--session-key FILE is required: the key to seal with", 2)
					}
					return withLive(c, func(out printer, l live) error {
						instances, err := sessionInstances(l, c.String("instance"), -1)
						if err != nil {
							return err
						}
						type result struct {
							Resealed int `json:"resealed"`
							Refused  int `json:"refused"`
						}
						var r result
						for _, in := range instances {
							n, bad, err := l.s.Reseal(c.Context, in)
							if err != nil {
								return err
							}
							r.Resealed += n
							r.Refused += len(bad)
							for _, err := range bad {
								fmt.Fprintf(c.App.ErrWriter, "nfsteer: skipped: %v\n", err)
							}
						}
						return out.print(r, func(w io.Writer) {
							fmt.Fprintf(w, "resealed %d records and states; %d refused, left as they are\n", r.Resealed, r.Refused)
						})
					})
				},
			},
			{
				Name:        "show",
				Usage:       "show one session: its pins, roles, times and the functions' state",
				ArgsUsage:   "FLOW",
				Description: "FLOW is proto/addr:port/addr:port, endpoints in either order.\n\nExample:\n   nfsteer sessions show --redis redis://10.0.0.5:6379 tcp/10.10.1.2:40000/10.99.0.2:5201",
				Flags:       []cli.Flag{redisFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					arg, err := oneArg(c, "flow")
					if err != nil {
						return err
					}
					k, err := sessions.ParseKey(arg)
					if err != nil {
						return cli.Exit(err.Error(), 2)
					}
					return withStore(c, func(out printer, s *store.Store) error {
						r, err := s.Session(c.Context, k.String())
						if err != nil {
							return err
						}
						return printRecord(out, r)
					})
				},
			},
		},
	}
}

// sessionView is a session as the sessions commands print it.
type sessionView struct {
	Flow    string         `json:"flow"`
	Tenant  string         `json:"tenant"`
	Code    uint32         `json:"code"`
	Slot    uint32         `json:"slot"`
	Version uint64         `json:"version"`
	Created time.Time      `json:"created"`
	Updated time.Time      `json:"updated"`
	Hops    []sessions.Hop `json:"hops"`
	// State is each service function's own state, by service name.
	State map[string]string `json:"state"`
	// ExpiresInS is how long Redis keeps the session unless refreshed.
	ExpiresInS float64 `json:"expires_in_s"`
}

func viewSession(r *sessions.Record) sessionView {
	v := sessionView{Flow: r.Flow, Tenant: r.Tenant, Code: r.Code, Slot: r.Slot, Version: r.Version,
		Created: time.UnixMilli(r.Created).UTC(), Updated: time.UnixMilli(r.Updated).UTC(), Hops: r.Hops, State: r.State, ExpiresInS: r.TTL.Seconds()}
	if v.State == nil {
		v.State = map[string]string{}
	}
	return v
}

// printRecord prints one session's record.
func printRecord(out printer, r *sessions.Record) error {
	return out.print(viewSession(r), func(w io.Writer) {
		row(w, "flow", r.Flow)
		row(w, "tenant", r.Tenant)
		row(w, "code/slot", fmt.Sprintf("%#08x / %d", r.Code, r.Slot))
		row(w, "decided on map version", r.Version)
		row(w, "created", time.UnixMilli(r.Created).Format(time.RFC3339Nano))
		row(w, "updated", time.UnixMilli(r.Updated).Format(time.RFC3339Nano))
		row(w, "expires in", r.TTL.Round(time.Millisecond))
		for i, h := range r.Hops {
			row(w, fmt.Sprintf("hop %d (%s)", i, h.Service), "primary "+h.Primary+", secondary "+orDash(h.Secondary))
		}
		for _, svc := range slices.Sorted(maps.Keys(r.State)) {
			row(w, "state of "+svc, r.State[svc])
		}
	})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sessionsList(c *cli.Context) error {
	role := c.String("role")
	if role != store.RolePrimary && role != store.RoleSecondary {
		return cli.Exit(fmt.Sprintf("--role %q: want primary or secondary", role), 2)
	}
	return withLive(c, func(out printer, l live) error { return listSessions(c, out, l, role) })
}

// sessionInstances returns the instances whose sessions a sessions
// command reads: instance if given (it must be the map's), else those of
// the services of tenant ti's chain (ti ≥ 0), else every instance.
func sessionInstances(l live, instance string, ti int) ([]string, error) {
	var instances []string
	switch {
	case instance != "":
		if _, err := l.p.ServiceOf(instance); err != nil {
			return nil, err
		}
		instances = []string{instance}
	case ti >= 0:
		for _, si := range l.t.Tenants()[ti].Chain {
			for _, ii := range l.t.Services()[si].Instances {
				instances = append(instances, l.t.Instances()[ii].Name)
			}
		}
	default:
		for _, in := range l.t.Instances() {
			instances = append(instances, in.Name)
		}
	}
	return instances, nil
}

func listSessions(c *cli.Context, out printer, l live, role string) error {
	t, s := l.t, l.s
	tenant := c.String("tenant")
	ti := -1
	if tenant != "" {
		if ti = t.TenantByName(tenant); ti < 0 {
			return fmt.Errorf("%w: tenant %q", steering.ErrUnknownName, tenant)
		}
	}
	instances, err := sessionInstances(l, c.String("instance"), ti)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	list := []*sessions.Record{}
	var bad []error
	for _, in := range instances {
		recs, b, err := s.List(c.Context, in, role)
		if err != nil {
			return err
		}
		bad = append(bad, b...)
		for _, r := range recs {
			if seen[r.Flow] || tenant != "" && r.Tenant != tenant {
				continue
			}
			seen[r.Flow] = true
			list = append(list, r)
		}
	}
	slices.SortFunc(list, func(a, b *sessions.Record) int { return strings.Compare(a.Flow, b.Flow) })
	for _, err := range bad {
		fmt.Fprintf(c.App.ErrWriter, "nfsteer: skipped: %v\n", err)
	}
	views := make([]sessionView, len(list))
	for i, r := range list {
		views[i] = viewSession(r)
	}
	return out.print(views, func(w io.Writer) {
		row(w, "FLOW", "TENANT", "SLOT", "HOPS (primary/secondary)", "AGE", "EXPIRES IN")
		for _, r := range list {
			hops := make([]string, len(r.Hops))
			for i, h := range r.Hops {
				hops[i] = h.Service + ":" + h.Primary + "/" + orDash(h.Secondary)
			}
			row(w, r.Flow, r.Tenant, r.Slot, strings.Join(hops, " "), time.Since(time.UnixMilli(r.Created)).Round(time.Second), r.TTL.Round(time.Second))
		}
	})
}

// agentStatus is one line of status: a node that beat, or an instance of
// the map whose agent never did.
type agentStatus struct {
	Node string `json:"node"`
	Role string `json:"role"`
	// State is an instance's states joined by "+": up, down, drained,
	// unhealthy, migrating.
	State string `json:"state,omitempty"`
	// Score is the controller's health score of an instance; null when it
	// has none (never reported, or no controller).
	Score      *int   `json:"score"`
	MapVersion uint64 `json:"map_version"`
	// HeartbeatAgeS is the age of its last heartbeat in seconds; null
	// when it never beat.
	HeartbeatAgeS *float64 `json:"heartbeat_age_s"`
	// Report is its last report; null when it sent none.
	Report *reportView `json:"report"`
}

// reportView is an agent's report as status prints it.
type reportView struct {
	Sessions     int     `json:"sessions"`
	QueueBacklog uint64  `json:"queue_backlog"`
	QueueDrops   uint64  `json:"queue_drops"`
	Unsteered    uint64  `json:"unsteered"`
	Spoofed      uint64  `json:"spoofed"`
	Untagged     uint64  `json:"untagged"`
	SlowestS     float64 `json:"slowest_packet_s"`
	RTTS         float64 `json:"rtt_s"`
	MirrorDepth  int64   `json:"mirror_depth"`
	MirrorDrops  uint64  `json:"mirror_drops"`
	// Offload, Offloaded, OffloadLive and OffloadCapacity are
	// store.Report's: a gateway's flow offload, the packets it forwarded,
	// and the flow directions passing in its table and its size.
	Offload         string `json:"offload,omitempty"`
	Offloaded       uint64 `json:"offloaded"`
	OffloadLive     int    `json:"offload_live"`
	OffloadCapacity int    `json:"offload_capacity"`
	// Sealed, SealKey, Trusts, TrustsUnsealed and ChecksMaps are
	// store.Report's.
	Sealed         bool     `json:"sealed"`
	SealKey        string   `json:"seal_key,omitempty"`
	Trusts         []string `json:"trusts,omitempty"`
	TrustsUnsealed bool     `json:"trusts_unsealed"`
	ChecksMaps     bool     `json:"checks_maps"`
	// ReversePathDrops is store.Report's: "tenant prefix", each a zoned
	// tenant's prefix the gateway's reverse-path filter drops.
	ReversePathDrops []string `json:"reverse_path_drops"`
}

// offload is r's node's flow offload, for the status table: a gateway's
// state, and while on, the packets it forwarded and how much of its flow
// table live flows take (FULL from nine places in ten, when they evict
// each other); "-" on an instance host.
func (r *reportView) offload() string {
	switch r.Offload {
	case "":
		return "-"
	case "on", "overlay":
		s := fmt.Sprintf("%s, %d packets", r.Offload, r.Offloaded)
		if o := (offload.Occupancy{Live: r.OffloadLive, Capacity: r.OffloadCapacity}); o.Capacity > 0 {
			s += fmt.Sprintf(", %d%% of its table live", 100*o.Live/o.Capacity)
			if o.Full() {
				s += " (FULL: raise --offload-flows)"
			}
		}
		return s
	}
	return r.Offload
}

// trust is what r's node checks, for the status table.
func (r *reportView) trust() string {
	var what []string
	var also []string
	for _, id := range r.Trusts {
		if id != r.SealKey {
			also = append(also, id)
		}
	}
	if r.Sealed && r.TrustsUnsealed {
		also = append(also, "unsealed")
	}
	switch {
	case r.Sealed && r.SealKey == "":
		what = append(what, "sealed sessions")
	case r.Sealed:
		what = append(what, "sessions sealed with "+r.SealKey)
	case len(also) > 0:
		what = append(what, "unsealed sessions")
	}
	if len(also) > 0 {
		what[len(what)-1] += " (also trusts " + strings.Join(also, ", ") + ")"
	}
	if r.ChecksMaps {
		what = append(what, "signed maps")
	}
	if len(what) == 0 {
		return "none"
	}
	return strings.Join(what, ", ")
}

func viewReport(r store.Report) *reportView {
	return &reportView{Sessions: r.Sessions, QueueBacklog: r.QueueBacklog, QueueDrops: r.QueueDrops, Unsteered: r.Unsteered, Spoofed: r.Spoofed, Untagged: r.Untagged,
		SlowestS: (time.Duration(r.LatencyUS) * time.Microsecond).Seconds(), RTTS: (time.Duration(r.RTTUS) * time.Microsecond).Seconds(),
		MirrorDepth: r.MirrorDepth, MirrorDrops: r.MirrorDrops, Offload: r.Offload, Offloaded: r.Offloaded,
		OffloadLive: r.OffloadLive, OffloadCapacity: r.OffloadCapacity,
		Sealed: r.Sealed, SealKey: r.SealKey, Trusts: r.Trusts, TrustsUnsealed: r.TrustsUnsealed, ChecksMaps: r.ChecksMaps,
		ReversePathDrops: r.ReversePathDrops}
}

// redisView is Redis as status prints it.
type redisView struct {
	Addr            string  `json:"addr"`
	RTTS            float64 `json:"rtt_s"`
	Version         string  `json:"version"`
	UsedMemoryBytes uint64  `json:"used_memory_bytes"`
	MapVersion      uint64  `json:"map_version"`
	// Controller holds the controller lease; null if no one does.
	Controller *string `json:"controller"`
}

// serviceStatus sums up one service's instances.
type serviceStatus struct {
	Name      string `json:"name"`
	InService int    `json:"in_service"`
	// Out counts the instances out of new-flow steering, by state.
	Out map[string]int `json:"out"`
	// Fallback: none in service, so new flows go to instances that are out.
	Fallback bool `json:"fallback"`
}

type statusReport struct {
	Redis       redisView          `json:"redis"`
	Controllers []store.Controller `json:"controllers"`
	Services    []serviceStatus    `json:"services"`
	Agents      []agentStatus      `json:"agents"`
	// Degraded says what is wrong, one line each; empty when healthy.
	Degraded []string `json:"degraded"`
}

// refusal is a kind of session record that some agents refuse: what it
// is, the agents that write it and those that refuse it.
type refusal struct {
	what             string
	writers, readers []string
}

// refusedRecords returns, for each kind of session record that live
// agents write (sealed with a key, or unsealed), the live agents that
// refuse it (store.Report.Reads): those flows cannot fail over between
// them. While a fleet starts sealing or changes its key, a node a step
// ahead of another shows here.
func refusedRecords(beats map[string]store.Beat, now time.Time) []refusal {
	var live []string
	for n, b := range beats {
		if !b.ReportAt.IsZero() && now.Sub(b.At) <= silentAfter {
			live = append(live, n)
		}
	}
	slices.Sort(live)
	var out []refusal
	byWhat := map[string]int{}
	for _, w := range live {
		wr := beats[w].Report
		what := "unsealed session records"
		switch {
		case wr.Sealed && wr.SealKey == "":
			what = "session records sealed by agents of an earlier version"
		case wr.Sealed:
			what = "session records sealed with key " + wr.SealKey
		}
		var readers []string
		for _, r := range live {
			rr := beats[r].Report
			if !rr.Reads(&wr) {
				readers = append(readers, r)
			}
		}
		if len(readers) == 0 {
			continue
		}
		if i, ok := byWhat[what]; ok {
			out[i].writers = append(out[i].writers, w)
			continue
		}
		byWhat[what] = len(out)
		out = append(out, refusal{what: what, writers: []string{w}, readers: readers})
	}
	return out
}

// exitDegraded is status's exit code when something needs on-call.
const exitDegraded = 4

// silentAfter is how old a heartbeat may be before status calls its agent
// silent: a few dozen heartbeats.
const silentAfter = time.Second

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show Redis, the controllers, each service's instances and every agent; exit 4 when degraded",
		Description: `Exit status: 0 healthy; 4 degraded, with the reasons listed last (an
instance down or unhealthy, a service with no instance in service, an agent
silent or behind the live version, no active controller); 1 when Redis
cannot be read. Drained instances are an operator's choice, not a fault.

An agent whose MAP column is behind the live version has not switched yet;
a heartbeat older than a second belongs to a dead or stalled agent (the
controller marks instances down after its --misses heartbeats).

Example:
   nfsteer status --redis redis://10.0.0.5:6379 || page-on-call`,
		Flags: []cli.Flag{redisFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			return withStore(c, func(out printer, s *store.Store) error { return status(c, out, s) })
		},
	}
}

func status(c *cli.Context, out printer, s *store.Store) error {
	st := statusReport{Controllers: []store.Controller{}, Services: []serviceStatus{}, Agents: []agentStatus{}, Degraded: []string{}}
	h, err := s.Health(c.Context)
	if err != nil {
		return err
	}
	st.Redis = redisView{Addr: h.Addr, RTTS: h.RTT.Seconds(), Version: h.Version, UsedMemoryBytes: h.UsedMemory, MapVersion: h.MapVersion}
	if h.Controller != "" {
		st.Redis.Controller = &h.Controller
	}
	if st.Controllers, err = s.Controllers(c.Context); err != nil {
		return err
	}
	if st.Controllers == nil {
		st.Controllers = []store.Controller{}
	}
	var t *steering.Table
	var refused error // the live map, invalid or not signed by a trusted key
	if p, err := s.Live(c.Context); err == nil {
		if t, err = steering.CompilePublished(p); err != nil {
			return err
		}
	} else if errors.Is(err, steering.ErrInvalidMap) {
		refused = err
	} else if !errors.Is(err, store.ErrNoMap) {
		return err
	}
	beats, now, err := s.Beats(c.Context)
	if err != nil {
		return err
	}
	scores, err := s.Scores(c.Context)
	if err != nil {
		return err
	}
	degraded := func(format string, a ...any) { st.Degraded = append(st.Degraded, fmt.Sprintf(format, a...)) }
	if st.Redis.Controller == nil {
		degraded("no controller holds the lease: nothing marks dead instances down")
	}
	if refused != nil {
		degraded("the live map (version %d) is refused, so nodes that check it keep their last good one: %v", h.MapVersion, refused)
	}
	nodes := slices.Collect(maps.Keys(beats))
	if t != nil {
		for _, svc := range t.Services() {
			ss := serviceStatus{Name: svc.Name, Out: map[string]int{}, Fallback: svc.Fallback()}
			for _, ii := range svc.Instances {
				in := t.Instances()[ii]
				if !in.Out() {
					ss.InService++
				}
				for _, state := range in.States() {
					if state != "up" {
						ss.Out[state]++
					}
				}
				if !slices.Contains(nodes, in.Name) {
					nodes = append(nodes, in.Name)
				}
			}
			if ss.Fallback {
				degraded("service %s has no instance in service: its new flows go to instances that are out (fallback)", svc.Name)
			}
			st.Services = append(st.Services, ss)
		}
	}
	slices.Sort(nodes)
	for _, node := range nodes {
		a := agentStatus{Node: node, Role: "gateway"}
		b, heard := beats[node]
		if heard {
			age := now.Sub(b.At).Seconds()
			a.HeartbeatAgeS, a.MapVersion = &age, b.Report.MapVersion
			if !b.ReportAt.IsZero() {
				a.Report = viewReport(b.Report)
			}
		}
		var in *steering.Instance
		if t != nil {
			if i, ok := t.InstanceByName(node); ok {
				in = i
				a.Role, a.State = "instance of "+t.Services()[in.Service].Name, strings.Join(in.States(), "+")
				if sc, ok := scores[node]; ok {
					a.Score = &sc
				}
			}
		}
		switch {
		case in != nil && (in.Down || in.Unhealthy):
			degraded("instance %s is %s", node, a.State)
		case !heard && in != nil && !in.Drained:
			degraded("instance %s: its agent never reported", node)
		case heard && now.Sub(b.At) > silentAfter && (in == nil || !in.Out()):
			degraded("%s: silent for %s", node, now.Sub(b.At).Round(time.Millisecond))
		case heard && a.MapVersion < st.Redis.MapVersion && now.Sub(b.At) <= silentAfter:
			degraded("%s runs map version %d, behind the live %d", node, a.MapVersion, st.Redis.MapVersion)
		}
		if heard && now.Sub(b.At) <= silentAfter && len(b.Report.ReversePathDrops) > 0 {
			degraded("%s: its reverse-path filter drops the chain's hand-back of zoned flows from %s (no route to them in its main table; README: gateway sysctls)",
				node, strings.Join(b.Report.ReversePathDrops, ", "))
		}
		st.Agents = append(st.Agents, a)
	}
	for _, r := range refusedRecords(beats, now) {
		degraded("%s (written by %s) are refused by %s, so those flows cannot fail over to them (README: \"Sealed session records\")",
			r.what, strings.Join(r.writers, ", "), strings.Join(r.readers, ", "))
	}
	err = out.print(st, func(w io.Writer) {
		r := st.Redis
		fmt.Fprintf(w, "redis\t%s, version %s, %.1f MiB used, round trip %s\n", r.Addr, r.Version, float64(r.UsedMemoryBytes)/(1<<20),
			time.Duration(r.RTTS*float64(time.Second)).Round(time.Microsecond))
		fmt.Fprintf(w, "map\tversion %d\n", r.MapVersion)
		var ctl []string
		for _, cs := range st.Controllers {
			role := "standby"
			if cs.Active {
				role = "active"
			}
			ctl = append(ctl, fmt.Sprintf("%s (%s)", cs.ID, role))
		}
		if len(ctl) == 0 {
			ctl = []string{"none running"}
		}
		fmt.Fprintf(w, "controllers\t%s\n\n", strings.Join(ctl, ", "))
		if len(st.Services) > 0 {
			row(w, "SERVICE", "IN SERVICE", "OUT")
			for _, ss := range st.Services {
				var outs []string
				for _, state := range slices.Sorted(maps.Keys(ss.Out)) {
					outs = append(outs, fmt.Sprintf("%d %s", ss.Out[state], state))
				}
				in := fmt.Sprint(ss.InService)
				if ss.Fallback {
					in += " (FALLBACK)"
				}
				row(w, ss.Name, in, strings.Join(outs, ", "))
			}
			fmt.Fprintln(w)
		}
		row(w, "AGENT", "ROLE", "STATE", "SCORE", "MAP", "HEARTBEAT", "RTT", "SESSIONS", "QUEUE BACKLOG", "QUEUE DROPS", "UNSTEERED", "SPOOFED", "UNTAGGED", "SLOWEST PACKET", "MIRROR DEPTH", "MIRROR DROPS", "OFFLOAD", "TRUST")
		for _, a := range st.Agents {
			score, mv, hb := "unknown", "", "never"
			if a.Score != nil {
				score = fmt.Sprint(*a.Score)
			}
			if a.Role == "gateway" {
				score = ""
			}
			if a.HeartbeatAgeS != nil {
				hb = age(time.Duration(*a.HeartbeatAgeS * float64(time.Second)))
				mv = fmt.Sprint(a.MapVersion)
				if a.MapVersion < r.MapVersion {
					mv += " (behind)"
				}
			}
			if rep := a.Report; rep != nil {
				row(w, a.Node, a.Role, a.State, score, mv, hb, micros(rep.RTTS), rep.Sessions, rep.QueueBacklog, rep.QueueDrops, rep.Unsteered, rep.Spoofed, rep.Untagged,
					micros(rep.SlowestS), rep.MirrorDepth, rep.MirrorDrops, rep.offload(), rep.trust())
			} else {
				row(w, a.Node, a.Role, a.State, score, mv, hb) // no report: the other columns are "-"
			}
		}
		if len(st.Degraded) == 0 {
			fmt.Fprintln(w, "\nhealthy")
			return
		}
		fmt.Fprintln(w, "\nDEGRADED:")
		for _, d := range st.Degraded {
			fmt.Fprintln(w, "  "+d)
		}
	})
	if err == nil && len(st.Degraded) > 0 {
		return cli.Exit("", exitDegraded)
	}
	return err
}

func traceCommand() *cli.Command {
	return &cli.Command{
		Name:  "trace",
		Usage: "print, hop by hop and both ways, the instances a flow would cross and why; sends nothing",
		Description: `The path is computed from the live map (or --map FILE) as every node's agent
would compute it for a new flow: the tenant from the source prefix (and,
with --ingress, the interface it enters the gateway by), the
affinity code from the 5-tuple, the slot from the code, and at each service
the instance holding the slot's primary role. The reply crosses the chain
backwards through the same instances.

Example:
   nfsteer trace --redis redis://10.0.0.5:6379 --proto tcp \
       --src 10.10.1.2 --sport 40000 --dst 10.99.0.2 --dport 443`,
		Flags: []cli.Flag{
			redisFlag(), outputFlag(),
			&cli.StringFlag{Name: "map", Usage: "trace on this map `FILE` instead of the live map"},
			&cli.StringFlag{Name: "src", Required: true, Usage: "source `ADDR` (a tenant's address for its flows)"},
			&cli.StringFlag{Name: "dst", Required: true, Usage: "destination `ADDR`"},
			&cli.StringFlag{Name: "proto", Value: "tcp", Usage: "`PROTO`: tcp, udp, sctp, icmp, ... or a number"},
			&cli.UintFlag{Name: "sport", Usage: "source `PORT` (the echo identifier for ICMP echo)"},
			&cli.UintFlag{Name: "dport", Usage: "destination `PORT`"},
			&cli.StringFlag{Name: "ingress", Usage: "the gateway `IFACE` the flow enters by: where tenants are bound to interfaces, says whether it is dropped there as spoofed"},
		},
		Action: func(c *cli.Context) error {
			out, err := printerOf(c)
			if err != nil {
				return err
			}
			f, err := flowFromFlags(c)
			if err != nil {
				return err
			}
			var t *steering.Table
			if file := c.String("map"); file != "" {
				m, err := steering.LoadFile(file)
				if err != nil {
					return err
				}
				if t, err = steering.Compile(m); err != nil {
					return err
				}
			} else {
				err := withLive(c, func(_ printer, l live) error {
					t = l.t
					return nil
				})
				if err != nil {
					return err
				}
			}
			tr := t.TraceFrom(f, c.String("ingress"))
			return out.print(tr, func(w io.Writer) {
				if tr.Spoofed != "" {
					fmt.Fprintf(w, "%s entering by %s: %s\n", tr.Flow, tr.Ingress, tr.Spoofed)
					return
				}
				if len(tr.Shared) > 0 {
					fmt.Fprintf(w, "%s: %s is an address of tenants %s, told apart by where they enter: give --ingress\n", tr.Flow, f.Src, strings.Join(tr.Shared, ", "))
					return
				}
				if tr.Tenant == "" {
					fmt.Fprintf(w, "%s: no tenant's prefix holds %s: the flow is routed normally, through no service\n", tr.Flow, f.Src)
					return
				}
				fmt.Fprintf(w, "flow %s\ntenant %s, affinity code %#08x, slot %d of %d, map version %d\nopening packet: %s\n",
					tr.Flow, tr.Tenant, tr.Code, tr.Slot, t.Slots(), tr.Version, tr.Verdict)
				for _, dir := range []struct {
					name string
					hops []steering.TraceHop
				}{{"forward", tr.Forward}, {"reply", tr.Reply}} {
					fmt.Fprintf(w, "\n%s:\n", dir.name)
					row(w, "  AT", "DECISION", "HOP", "SERVICE", "INSTANCE", "ADDRESS", "WHY")
					for _, h := range dir.hops {
						if h.Decision != "steer" {
							row(w, "  "+h.Node, h.Decision, "", "", "", "", "route normally")
							continue
						}
						reason := "primary of slot " + fmt.Sprint(tr.Slot) + ", secondary " + orDash(h.Secondary)
						if h.Fallback {
							reason += "; FALLBACK: no instance of " + h.Service + " is in service, this one is out"
						}
						if len(h.Skipped) > 0 {
							reason += "; passed over " + strings.Join(h.Skipped, ", ")
						}
						row(w, "  "+h.Node, h.Decision, h.Hop, h.Service, h.Instance, h.Address, reason)
					}
				}
			})
		},
	}
}

func flowFromFlags(c *cli.Context) (steering.Flow, error) {
	var f steering.Flow
	var err error
	if f.Src, err = netip.ParseAddr(c.String("src")); err != nil {
		return f, cli.Exit(fmt.Sprintf("--src %q: not an IP address", c.String("src")), 2)
	}
	if f.Dst, err = netip.ParseAddr(c.String("dst")); err != nil {
		return f, cli.Exit(fmt.Sprintf("--dst %q: not an IP address", c.String("dst")), 2)
	}
	if f.Src.Is4() != f.Dst.Is4() {
		return f, cli.Exit("--src and --dst: give two addresses of the same family", 2)
	}
	if f.Proto, err = steering.ParseProto(c.String("proto")); err != nil {
		return f, cli.Exit("--proto: "+err.Error(), 2)
	}
	for _, p := range []string{"sport", "dport"} {
		if c.Uint(p) > 0xffff {
			return f, cli.Exit(fmt.Sprintf("--%s %d: a port is at most 65535", p, c.Uint(p)), 2)
		}
	}
	f.SrcPort, f.DstPort = uint16(c.Uint("sport")), uint16(c.Uint("dport"))
	return f, nil
}

// micros prints seconds for people, to the microsecond.
func micros(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Microsecond).String()
}
