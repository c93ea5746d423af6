// Command nfsteer is the nfsteer agent and its command-line tools. It only
// builds the command line; the work is done by the packages it calls.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"syscall"
	"time"

	"github.com/nfsteer/nfsteer/agent"
	"github.com/nfsteer/nfsteer/nfq"
	"github.com/nfsteer/nfsteer/offload"
	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/store"
	"github.com/urfave/cli/v2"
)

var version = "dev"

func main() { os.Exit(run(os.Args, os.Stdout, os.Stderr)) }

// run runs the command line args and returns the exit status: 0 on success,
// 2 for a usage error (an unknown command or flag, a missing or malformed
// argument), 1 for anything else. Tests call it in-process.
func run(args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	args = helpWords(app, args)
	if err := commandPath(app, args); err != nil {
		fmt.Fprintf(stderr, "nfsteer: %v\n", err)
		return 2
	}
	err := app.Run(interspersed(app, args))
	if err == nil {
		return 0
	}
	if msg := err.Error(); msg != "" { // "": an exit status, not an error
		fmt.Fprintf(stderr, "nfsteer: %s\n", msg)
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	// Every action's error is an ExitCoder (see harden); what is left
	// came from parsing the command line.
	return 2
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                 "nfsteer",
		Usage:                "steer tenants' flows through chains of network services",
		Version:              version,
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		// An allow rule ("{proto: tcp, ports: [...]}") holds commas; the
		// commands split the lists that may be comma-separated themselves.
		DisableSliceFlagSeparator: true,
		// run reports errors and picks the exit status; urfave/cli must
		// not exit the process (tests run commands in-process).
		ExitErrHandler: func(*cli.Context, error) {},
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log as `text` or json", EnvVars: []string{"NFSTEER_LOG_FORMAT"}},
		},
		Before: func(c *cli.Context) error {
			var h slog.Handler = slog.NewTextHandler(c.App.ErrWriter, nil)
			switch c.String("log-format") {
			case "json":
				h = slog.NewJSONHandler(c.App.ErrWriter, nil)
			case "text":
			default:
				return cli.Exit(fmt.Sprintf("--log-format %q: want text or json", c.String("log-format")), 2)
			}
			slog.SetDefault(slog.New(h))
			return nil
		},
		Commands: []*cli.Command{
			agentCommand(), controllerCommand(), rulesCommand(),
			applyCommand(), mapCommand(), tenantCommand(), serviceCommand(), instanceCommand(),
			sessionsCommand(), statusCommand(), traceCommand(), keyCommand(), redisCommand(), completionCommand(),
		},
	}
	app.Action = needSubcommand
	app.OnUsageError = usageError
	withRedisFlags(app.Commands)
	harden(app.Commands)
	return app
}

// harden gives every command the same error behaviour: usage errors exit 2,
// an action's other errors exit 1 (or the status they carry) and, with
// --output json or yaml, are also printed as a document on standard
// output so that a script reading it sees the failure.
func harden(cmds []*cli.Command) {
	for _, cmd := range cmds {
		cmd.OnUsageError = usageError
		if len(cmd.Subcommands) > 0 {
			if cmd.Action == nil {
				cmd.Action = needSubcommand
			}
			harden(cmd.Subcommands)
			continue
		}
		act := cmd.Action
		if act == nil {
			continue
		}
		required := optional(cmd.Flags)
		takesArgs := cmd.ArgsUsage != ""
		cmd.Action = func(c *cli.Context) error {
			if !takesArgs && c.NArg() > 0 {
				return cli.Exit(fmt.Sprintf("%s takes no arguments, got %q (see --help)", c.Command.HelpName, c.Args().Slice()), 2)
			}
			for _, name := range required {
				if !c.IsSet(name) {
					return cli.Exit(fmt.Sprintf("%s needs --%s (see --help)", c.Command.HelpName, name), 2)
				}
			}
			err := act(c)
			if err == nil || err.Error() == "" {
				// No error, or only an exit status (map diff's 3, status's
				// 4) after the command printed its one document.
				return err
			}
			code := 1
			var ec cli.ExitCoder
			if errors.As(err, &ec) {
				code = ec.ExitCode()
			}
			switch c.String("output") {
			case "json":
				json.NewEncoder(c.App.Writer).Encode(map[string]any{"error": err.Error(), "exit": code})
			case "yaml":
				writeYAMLOf(c.App.Writer, map[string]any{"error": err.Error(), "exit": code})
			}
			return cli.Exit(err.Error(), code)
		}
	}
}

// optional makes flags' Required false and returns their names, for the
// command's action to check: urfave/cli prints the whole help page above
// a missing required flag, and a usage error is one line.
func optional(flags []cli.Flag) []string {
	var names []string
	for _, f := range flags {
		if r, ok := f.(cli.RequiredFlag); !ok || !r.IsRequired() {
			continue
		}
		// Every urfave flag type is a pointer to a struct with a Required
		// field.
		reflect.ValueOf(f).Elem().FieldByName("Required").SetBool(false)
		names = append(names, f.Names()[0])
	}
	return names
}

func usageError(c *cli.Context, err error, _ bool) error {
	return cli.Exit(fmt.Sprintf("%v (see --help)", err), 2)
}

// needSubcommand is the action of a command that only groups others.
func needSubcommand(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("unknown command %q (see --help)", c.Args().First()), 2)
	}
	cli.ShowSubcommandHelp(c)
	return cli.Exit("a subcommand is needed", 2)
}

func metricsFlag() cli.Flag {
	return &cli.StringFlag{Name: "metrics", Usage: "serve Prometheus metrics on `ADDR` (host:port), path /metrics", EnvVars: []string{"NFSTEER_METRICS"}}
}

// nodeFlags are the flags that say what a node is and how its rules look;
// the agent and `rules install` share them so both install the same thing.
func nodeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "node", Usage: "this node's `NAME`; an instance name from the map makes it that instance's host", EnvVars: []string{"NFSTEER_NODE"}},
		&cli.StringFlag{Name: "map", Usage: "service map `FILE` (YAML): the map without Redis, the fallback with it", EnvVars: []string{"NFSTEER_MAP"}},
		&cli.StringSliceFlag{Name: "outer", Usage: "a gateway's steered `IFACE` (repeat for several)", EnvVars: []string{"NFSTEER_OUTER"}},
		&cli.IntFlag{Name: "queues", Usage: "NFQUEUE queues per direction, each with its own reader (0: one per CPU)", EnvVars: []string{"NFSTEER_QUEUES"}},
		&cli.StringFlag{Name: "fail", Value: "closed", Usage: "with no agent reading the queues, new flows are dropped (`closed`: TCP retries them) or pass around their chain (open: availability over inspection)", EnvVars: []string{"NFSTEER_FAIL"}},
		&cli.StringFlag{Name: "overload", Value: "drop", Usage: "with a queue full, new flows are dropped (`drop`: TCP retries them) or pass around their chain, counted (bypass: availability over inspection)", EnvVars: []string{"NFSTEER_OVERLOAD"}},
		&cli.UintFlag{Name: "queue-base", Value: rules.DefaultQueueBase, Usage: "first NFQUEUE number"},
		&cli.IntFlag{Name: "table-base", Value: rules.DefaultTableBase, Usage: "routing table of instance ID n is this plus n"},
		&cli.IntFlag{Name: "rule-priority", Value: rules.DefaultRulePriority, Usage: "first of the priorities nfsteer's ip rules take (16,388 of them, before the main table's rule at 32766)"},
	}
}

func specFromFlags(c *cli.Context) (rules.Spec, error) {
	s := rules.Spec{
		Outer:        splitList(c.StringSlice("outer")),
		QueueBase:    uint16(c.Uint("queue-base")),
		Queues:       c.Int("queues"),
		TableBase:    c.Int("table-base"),
		RulePriority: c.Int("rule-priority"),
	}
	switch c.String("fail") {
	case "open":
	case "closed":
		s.FailClosed = true
	default:
		return s, settingError(c, "fail", fmt.Sprintf("%q: want open or closed", c.String("fail")))
	}
	switch c.String("overload") {
	case "drop":
	case "bypass":
		s.OverloadBypass = true
	default:
		return s, settingError(c, "overload", fmt.Sprintf("%q: want drop or bypass", c.String("overload")))
	}
	for _, r := range []struct {
		name      string
		v, lo, hi int
	}{
		{"queues", c.Int("queues"), 0, 1024},
		{"queue-base", int(c.Uint("queue-base")), 0, 0xffff - 2*1024},
		{"table-base", c.Int("table-base"), 1, 1<<31 - 1 - rules.TablesUsed},
		{"rule-priority", c.Int("rule-priority"), 1, rules.MaxRulePriority},
	} {
		if r.v < r.lo || r.v > r.hi {
			return s, settingError(c, r.name, fmt.Sprintf("%d: want %d to %d", r.v, r.lo, r.hi))
		}
	}
	return s, nil
}

// checkAgent checks every agent setting, wherever it came from, before
// anything starts (or --print-config prints it), and returns the rules'
// part.
func checkAgent(c *cli.Context) (rules.Spec, error) {
	if c.String("node") == "" {
		return rules.Spec{}, cli.Exit("--node NAME (or NFSTEER_NODE, or node: in --config) is required", 2)
	}
	spec, err := specFromFlags(c)
	if err != nil {
		return spec, err
	}
	if c.String("map") == "" && c.String("redis") == "" {
		return spec, cli.Exit("give --map FILE, --redis URL, or both", 2)
	}
	if u := c.String("redis"); u != "" {
		if err := store.CheckURL(u); err != nil {
			return spec, settingError(c, "redis", fmt.Sprintf("%s: %v", redactURL(c.String("redis")), errors.Unwrap(err)))
		}
		if err := checkRedisTLS(c); err != nil {
			return spec, err
		}
	}
	for _, d := range []struct {
		name string
		min  time.Duration
	}{{"heartbeat", time.Millisecond}, {"refresh", 10 * time.Millisecond}, {"session-ttl", time.Second}, {"index-prune", 10 * time.Millisecond}} {
		if v := c.Duration(d.name); v < d.min {
			return spec, settingError(c, d.name, fmt.Sprintf("%v: want at least %v", v, d.min))
		}
	}
	if v := c.Duration("offload-refresh"); v < 10*time.Millisecond || v > time.Minute {
		return spec, settingError(c, "offload-refresh", fmt.Sprintf("%v: want 10ms to 1m", v))
	}
	if v := c.Int("offload-flows"); v < 1024 || v > 1<<22 {
		return spec, settingError(c, "offload-flows", fmt.Sprintf("%d: want 1024 to %d", v, 1<<22))
	}
	if v := c.Duration("mirror-linger"); v < 0 || v > time.Second {
		return spec, settingError(c, "mirror-linger", fmt.Sprintf("%v: want 0 to 1s", v))
	}
	if c.Duration("session-ttl") <= c.Duration("refresh") {
		return spec, settingError(c, "session-ttl", fmt.Sprintf("%v: want more than --refresh (%v), or live sessions expire from Redis between refreshes",
			c.Duration("session-ttl"), c.Duration("refresh")))
	}
	return spec, nil
}

// lingerOf is the agent's MirrorLinger for --mirror-linger d: the flag's
// 0 (no linger) is the Config's negative, where 0 is its default.
func lingerOf(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "run the steering agent of this node until SIGTERM or SIGINT",
		Description: `Installs the node's rules, steers the first packet of every new flow,
and on exit leaves the rules in place for the next agent (--keep-rules).

Example, a gateway steering what arrives on eth1 and eth2:
   nfsteer agent --node gw-1 --map /etc/nfsteer/map.yaml --outer eth1 --outer eth2
Example, the host of instance fw-1:
   nfsteer agent --node fw-1 --map /etc/nfsteer/map.yaml
Example, from a config file (what the systemd unit runs):
   nfsteer agent --config /etc/nfsteer/agent.yaml

Settings come from flags first, then NFSTEER_* variables, then the
--config file (YAML, keys are the long flag names, e.g. "node: gw-1",
"outer: [eth1, eth2]"). SIGHUP re-reads log-flows from the file and, on a
node without Redis, the --map file (validated; a bad one is refused).`,
		Before: func(c *cli.Context) error { return loadConfig(c.Command.Flags)(c) },
		Flags: fromFile(slices.Concat(nodeFlags(), []cli.Flag{
			&cli.BoolFlag{Name: "spare", Usage: "this host's instance is not in the map yet: steer nothing until a version adds it (then: nfsteer instance add)", EnvVars: []string{"NFSTEER_SPARE"}},
			&cli.BoolFlag{Name: "keep-rules", Value: true, Usage: "leave the rules installed on exit, and tell the controller the agent will be back: a restart moves no flow and lets none around its chain (--keep-rules=false removes them: for a node leaving for good, after a drain)", EnvVars: []string{"NFSTEER_KEEP_RULES"}},
			&cli.DurationFlag{Name: "restart-grace", Value: 10 * time.Second, Usage: "how long the controller waits for an agent that stopped with its rules kept before failing it over", EnvVars: []string{"NFSTEER_RESTART_GRACE"}},
			&cli.BoolFlag{Name: "log-flows", Usage: "log every steering decision", EnvVars: []string{"NFSTEER_LOG_FLOWS"}},
			redisFlag(),
			metricsFlag(),
			&cli.DurationFlag{Name: "mirror-linger", Value: 10 * time.Millisecond, Usage: "how long the session mirror waits for a batch to fill before it writes to Redis (0: not at all): fewer round trips at a high rate of new flows, against sessions that reach Redis that much later (a failover within it finds a session unmirrored)", EnvVars: []string{"NFSTEER_MIRROR_LINGER"}},
			&cli.BoolFlag{Name: "mirror", Value: true, Usage: "mirror sessions to Redis (--mirror=false: the sessions this node creates, a gateway's and, for TCP through a firewall, the chain's first firewall's, are not written, and no secondary on those flows' chains can take them over)", EnvVars: []string{"NFSTEER_MIRROR"}},
			&cli.DurationFlag{Name: "heartbeat", Value: 25 * time.Millisecond, Usage: "heartbeat `INTERVAL`", EnvVars: []string{"NFSTEER_HEARTBEAT"}},
			&cli.DurationFlag{Name: "refresh", Value: 10 * time.Second, Usage: "how often live flows are checked in conntrack; a session is refreshed in Redis once three of these are left of its --session-ttl", EnvVars: []string{"NFSTEER_REFRESH"}},
			&cli.DurationFlag{Name: "session-ttl", Value: 2 * time.Minute, Usage: "life of a session in Redis after its creation or its last refresh", EnvVars: []string{"NFSTEER_SESSION_TTL"}},
			&cli.DurationFlag{Name: "index-prune", Value: 10 * time.Minute, Usage: "how often an instance forgets the session indexes it shared with instances the map no longer has, once they are empty (plus up to half of it more, at random)", EnvVars: []string{"NFSTEER_INDEX_PRUNE"}},
			&cli.BoolFlag{Name: "offload", Value: true, Usage: "on a gateway, forward the established packets of the TCP and UDP flows it steers (IPv4 and IPv6) in eBPF (tc), past its netfilter and routing, as a flowtable offloads flows: more bulk throughput, and the gateway's own rules see only each connection's opening and end, and conntrack is made liberal about those connections' TCP windows (needs Linux 6.6 and CAP_BPF; by default a gateway that cannot run it steers without it, saying why, and one given --offload explicitly refuses to start; --offload=false keeps every packet on the kernel's path; an instance host ignores it)", EnvVars: []string{"NFSTEER_OFFLOAD"}},
			&cli.DurationFlag{Name: "offload-refresh", Value: time.Second, Usage: "how often each offloaded flow sends one packet the kernel's way: conntrack keeps its connection alive by it, and a hop that changed without a map version (a neighbour's new address) is learned again within it", EnvVars: []string{"NFSTEER_OFFLOAD_REFRESH"}},
			&cli.IntFlag{Name: "offload-flows", Value: offload.DefaultFlows, Usage: "how many flow directions the offload holds (4 per connection; about 100 bytes of kernel memory each, taken at start); beyond it, the least recently used take the kernel's path", EnvVars: []string{"NFSTEER_OFFLOAD_FLOWS"}},
			&cli.BoolFlag{Name: "print-config", Usage: "print the settings the agent would run with (flags > NFSTEER_* > --config file) and exit"},
		}, redisCompanions(true))),
		Action: func(c *cli.Context) error {
			spec, err := checkAgent(c)
			if err != nil {
				return err
			}
			// Key files are read before --print-config: a bad one is
			// a setting error too.
			trust, err := trustOf(c)
			if err != nil {
				return err
			}
			sk, err := sessionKeysOf(c)
			if err != nil {
				return err
			}
			if c.Bool("print-config") {
				return printConfig(c)
			}
			for _, o := range spec.Outer {
				if _, err := net.InterfaceByName(o); err != nil {
					return settingError(c, "outer", o+": no such interface in this network namespace")
				}
			}
			k, err := rules.NewLinux()
			if err != nil {
				return err
			}
			ct, err := rules.NewConntrack()
			if err != nil {
				return err
			}
			defer ct.Close()
			var openOffload func(*slog.Logger) (agent.Offload, error)
			if c.Bool("offload") {
				openOffload = func(log *slog.Logger) (agent.Offload, error) {
					return offload.Open(offload.Config{Flows: c.Int("offload-flows"), Refresh: c.Duration("offload-refresh"), HopMask: rules.HopMask, OwnMark: rules.MarkSteered, Logger: log})
				}
			}
			a, err := agent.New(agent.Config{
				Node: c.String("node"), MapFile: c.String("map"), Rules: spec,
				KeepRules: c.Bool("keep-rules"), RestartGrace: c.Duration("restart-grace"), LogFlows: c.Bool("log-flows"), Spare: c.Bool("spare"),
				RedisURL: c.String("redis"), RedisTLS: tlsOf(c), Trust: trust, SessionKeys: sk, NoMirror: !c.Bool("mirror"), MirrorLinger: lingerOf(c.Duration("mirror-linger")),
				HeartbeatInterval: c.Duration("heartbeat"), RefreshInterval: c.Duration("refresh"),
				RedisSessionTTL: c.Duration("session-ttl"), IndexPruneInterval: c.Duration("index-prune"), MetricsAddr: c.String("metrics"),
				OpenOffload: openOffload, OffloadRequired: c.IsSet("offload"),
			}, k, ct)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			// SIGHUP reloads what can change without a restart.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			hupDone := make(chan struct{})
			defer func() { stop(); <-hupDone }()
			go func() {
				defer close(hupDone)
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						logFlows := reloadedLogFlows(c)
						if err := a.Reload(logFlows); err != nil {
							slog.Error("SIGHUP: reload refused; running as before", "err", err)
						} else {
							slog.Info("SIGHUP: reloaded", "log_flows", logFlows, "map", c.String("map"))
						}
					}
				}
			}()
			err = a.Run(ctx, func(h nfq.Handler, qs []nfq.Queue) agent.QueueReader {
				// A full queue drops, unless the operator chose to let new
				// flows around their chains (--overload bypass). That is
				// not the same as --fail open, which is for no reader at all.
				return nfq.NewReader(nfq.Config{Queues: qs, FailOpen: spec.OverloadBypass}, h)
			})
			if err != nil {
				return err
			}
			slog.Info("stopped", "node", c.String("node"), "sessions", a.Sessions())
			return nil
		},
	}
}

func rulesCommand() *cli.Command {
	kernel := func(c *cli.Context) (*rules.Linux, rules.Spec, error) {
		spec, err := specFromFlags(c)
		if err != nil {
			return nil, spec, err
		}
		k, err := rules.NewLinux()
		return k, spec, err
	}
	return &cli.Command{
		Name:  "rules",
		Usage: "install, remove or show the kernel rules nfsteer owns in this network namespace",
		Subcommands: []*cli.Command{
			{
				Name:  "install",
				Usage: "install a node's rules without running the agent (installing twice is installing once)",
				Description: `Example:
   nfsteer rules install --node gw-1 --map map.yaml --outer eth1 --fail closed`,
				Flags: nodeFlags(),
				Action: func(c *cli.Context) error {
					if c.String("node") == "" || c.String("map") == "" {
						return cli.Exit("rules install needs --node NAME and --map FILE", 2)
					}
					k, base, err := kernel(c)
					if err != nil {
						return err
					}
					spec, err := agent.LoadSpec(c.String("map"), c.String("node"), base)
					if err != nil {
						return err
					}
					return k.Apply(spec)
				},
			},
			{
				Name:        "remove",
				Usage:       "remove every chain, rule, ip rule and route nfsteer owns; nothing else is touched",
				Description: "Example:\n   nfsteer rules remove",
				Action: func(c *cli.Context) error {
					k, err := rules.NewLinux()
					if err != nil {
						return err
					}
					return k.Remove()
				},
			},
			{
				Name:        "show",
				Usage:       "list what nfsteer owns",
				Description: "Example:\n   nfsteer rules show",
				Flags:       []cli.Flag{outputFlag()},
				Action: func(c *cli.Context) error {
					out, err := printerOf(c)
					if err != nil {
						return err
					}
					k, err := rules.NewLinux()
					if err != nil {
						return err
					}
					lines, err := k.Show()
					if err != nil {
						return err
					}
					if lines == nil {
						lines = []string{}
					}
					return out.print(lines, func(w io.Writer) {
						for _, l := range lines {
							fmt.Fprintln(w, l)
						}
					})
				},
			},
		},
	}
}
