package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"
)

func mapCommand() *cli.Command {
	return &cli.Command{
		Name:        "map",
		Usage:       "show, compare, export or check service maps",
		Subcommands: []*cli.Command{mapShowCommand(), mapDiffCommand(), mapExportCommand(), mapCheckCommand()},
	}
}

func mapShowCommand() *cli.Command {
	return &cli.Command{
		Name:  "show",
		Usage: "print the live map from Redis",
		Description: `--format yaml (the default) prints the operator's map, as apply takes it,
after a header with the version, instance IDs and the instances down or
drained. --format json (or --output json) prints the whole published
document. --format dot draws tenants, chains, services and instances with
their primary and secondary slot counts for Graphviz.

Example:
   nfsteer map show --redis redis://10.0.0.5:6379
   nfsteer map show --redis redis://10.0.0.5:6379 --format dot | dot -Tsvg > mesh.svg`,
		Flags: []cli.Flag{
			redisFlag(),
			&cli.StringFlag{Name: "format", Value: "yaml", Usage: "`yaml`, json or dot"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "json or yaml: the same as --format"},
		},
		Action: func(c *cli.Context) error {
			format := c.String("format")
			switch c.String("output") {
			case "":
			case "json", "yaml":
				format = c.String("output")
			default:
				return cli.Exit(fmt.Sprintf("--output %q: want json or yaml (or use --format)", c.String("output")), 2)
			}
			if format != "yaml" && format != "json" && format != "dot" {
				return cli.Exit(fmt.Sprintf("--format %q: want yaml, json or dot", format), 2)
			}
			return withLive(c, func(_ printer, l live) error {
				w := c.App.Writer
				switch format {
				case "json":
					e := json.NewEncoder(w)
					e.SetIndent("", "  ")
					return e.Encode(l.p)
				case "dot":
					return l.t.WriteDot(w)
				default:
					var ids []string
					for _, n := range slices.Sorted(maps.Keys(l.p.IDs)) {
						ids = append(ids, fmt.Sprintf("%s=%d", n, l.p.IDs[n]))
					}
					fmt.Fprintf(w, "# version %d\n# instance ids: %s\n", l.p.Version, strings.Join(ids, " "))
					for _, list := range []struct {
						name  string
						names []string
					}{{"down", l.p.Down}, {"drained", l.p.Drained}, {"unhealthy", l.p.Unhealthy}, {"migrating", l.p.Migrating}} {
						fmt.Fprintf(w, "# %s: %s\n", list.name, orNone(list.names))
					}
					return writeYAML(w, l.p.Map)
				}
			})
		},
	}
}

// orNone joins names with spaces, or says none.
func orNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, " ")
}

func writeYAML(w io.Writer, m *steering.Map) error {
	e := yaml.NewEncoder(w)
	e.SetIndent(2)
	if err := e.Encode(m); err != nil {
		return err
	}
	return e.Close()
}

func mapExportCommand() *cli.Command {
	return &cli.Command{
		Name:  "export",
		Usage: "write the live map as a YAML file that apply takes back unchanged",
		// The header records the version exported, so that apply refuses the
		// file if someone else changes the map in between.
		Description: `Example, edit the live map by hand:
   nfsteer map export --redis redis://10.0.0.5:6379 > map.yaml
   vi map.yaml
   nfsteer map diff --redis redis://10.0.0.5:6379 -f map.yaml
   nfsteer apply --redis redis://10.0.0.5:6379 -f map.yaml`,
		Flags: []cli.Flag{
			redisFlag(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "yaml", Usage: "`yaml` (with the header apply checks) or json (the map alone)"},
		},
		Action: func(c *cli.Context) error {
			format := c.String("output")
			if format != "yaml" && format != "json" {
				return cli.Exit(fmt.Sprintf("--output %q: want yaml or json", format), 2)
			}
			return withLive(c, func(out printer, l live) error {
				if format == "json" {
					return out.print(l.p.Map, nil)
				}
				fmt.Fprint(c.App.Writer, steering.ExportHeader(l.p))
				return writeYAML(c.App.Writer, l.p.Map)
			})
		},
	}
}

func mapDiffCommand() *cli.Command {
	return &cli.Command{
		Name:  "diff",
		Usage: "show what applying a map file would change in the live map",
		Description: `Lines start with + (added), - (removed) or ~ (changed). The exit status is
0 when the file equals the live map, 3 when they differ (like diff(1) says 1;
1 is nfsteer's status for errors), 1 on error.

Example:
   nfsteer map diff --redis redis://10.0.0.5:6379 -f map.yaml`,
		Flags: []cli.Flag{
			redisFlag(), outputFlag(),
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "map `FILE`"},
		},
		Action: func(c *cli.Context) error {
			m, err := steering.LoadFile(c.String("file"))
			if err != nil {
				return err
			}
			return withLive(c, func(out printer, l live) error { return printDiff(c, out, l.p, m) })
		},
	}
}

// printDiff prints what applying m would change in the live map p, and
// exits 3 when something would.
func printDiff(c *cli.Context, out printer, p *steering.Published, m *steering.Map) error {
	changes := steering.Diff(p.Map, m)
	if changes == nil {
		changes = []steering.Change{}
	}
	err := out.print(struct {
		Live    uint64            `json:"live_version"`
		Changes []steering.Change `json:"changes"`
	}{p.Version, changes}, func(w io.Writer) {
		fmt.Fprintf(w, "live map version %d -> %s: %d changes\n", p.Version, c.String("file"), len(changes))
		for _, ch := range changes {
			fmt.Fprintln(w, ch.String())
		}
	})
	if err == nil && len(changes) > 0 {
		return cli.Exit("", 3)
	}
	return err
}

func mapCheckCommand() *cli.Command {
	return &cli.Command{
		Name:        "check",
		Usage:       "validate a map file and print its slot table summary",
		Description: "Example:\n   nfsteer map check -f map.yaml",
		Flags:       []cli.Flag{outputFlag(), &cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "map `FILE`"}},
		Action: func(c *cli.Context) error {
			out, err := printerOf(c)
			if err != nil {
				return err
			}
			m, err := steering.LoadFile(c.String("file"))
			if err != nil {
				return err
			}
			t, err := steering.Compile(m)
			if err != nil {
				return err
			}
			type instance struct {
				Service  string `json:"service"`
				Instance string `json:"instance"`
				ID       uint16 `json:"id"`
				Primary  int    `json:"primary_slots"`
			}
			r := struct {
				Valid     bool       `json:"valid"`
				Slots     uint32     `json:"slots"`
				Services  int        `json:"services"`
				Tenants   int        `json:"tenants"`
				Instances []instance `json:"instances"`
			}{Valid: true, Slots: t.Slots(), Services: len(t.Services()), Tenants: t.TenantCount()}
			for si, s := range t.Services() {
				primary := map[string]int{}
				for slot := uint32(0); slot < t.Slots(); slot++ {
					p, _ := t.RolesFor(si, slot)
					primary[p.Name]++
				}
				for _, ii := range s.Instances {
					in := t.Instances()[ii]
					r.Instances = append(r.Instances, instance{s.Name, in.Name, in.ID, primary[in.Name]})
				}
			}
			return out.print(r, func(w io.Writer) {
				fmt.Fprintf(w, "map is valid: %d slots, %d services, %d instances, %d tenants\n", r.Slots, r.Services, len(r.Instances), r.Tenants)
				for _, in := range r.Instances {
					fmt.Fprintf(w, "  %s\t%s\tid %d\tprimary for %d slots\n", in.Service, in.Instance, in.ID, in.Primary)
				}
			})
		},
	}
}

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script",
		ArgsUsage: "bash|zsh",
		Description: `Example:
   nfsteer completion bash > /etc/bash_completion.d/nfsteer
   nfsteer completion zsh > "${fpath[1]}/_nfsteer"`,
		Action: func(c *cli.Context) error {
			sh, err := oneArg(c, "shell")
			if err != nil {
				return err
			}
			script, ok := completionScripts[sh]
			if !ok {
				return cli.Exit(fmt.Sprintf("completion %q: want bash or zsh", sh), 2)
			}
			_, err = io.WriteString(c.App.Writer, script)
			return err
		},
	}
}

// completionScripts ask the binary itself for candidates
// (--generate-bash-completion, urfave/cli's protocol).
var completionScripts = map[string]string{
	"bash": `_nfsteer() {
  local cur words
  cur="${COMP_WORDS[COMP_CWORD]}"
  if [[ "$cur" == -* ]]; then
    words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o bashdefault -o default -F _nfsteer nfsteer
`,
	"zsh": `#compdef nfsteer
_nfsteer() {
  local -a opts
  local cur=${words[-1]}
  if [[ "$cur" == -* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  fi
  compadd -a opts
}
compdef _nfsteer nfsteer
`,
}
