package main

import (
	"fmt"
	"os"
	"slices"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
	"gopkg.in/yaml.v3"
)

// DefaultConfig is where the packaged systemd units point --config.
const DefaultConfig = "/etc/nfsteer/agent.yaml"

func configFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Usage: "read settings from YAML `FILE` (keys are the long flag names); flags, then NFSTEER_* variables, take precedence over it", EnvVars: []string{"NFSTEER_CONFIG"}}
}

// fromFile lets every flag also be set from the --config file. urfave/cli's
// altsrc applies a file value only where neither the command line nor the
// environment set the flag, which is the precedence we promise.
func fromFile(flags []cli.Flag) []cli.Flag {
	out := make([]cli.Flag, 0, len(flags)+1)
	for _, f := range flags {
		switch f := f.(type) {
		case *cli.StringFlag:
			out = append(out, altsrc.NewStringFlag(f))
		case *cli.BoolFlag:
			out = append(out, altsrc.NewBoolFlag(f))
		case *cli.IntFlag:
			out = append(out, altsrc.NewIntFlag(f))
		case *cli.UintFlag:
			out = append(out, altsrc.NewUintFlag(f))
		case *cli.DurationFlag:
			out = append(out, altsrc.NewDurationFlag(f))
		case *cli.StringSliceFlag:
			out = append(out, altsrc.NewStringSliceFlag(f))
		default:
			out = append(out, f)
		}
	}
	return append(out, configFlag())
}

// loadConfig reads the --config file, if any, into the flags.
func loadConfig(flags []cli.Flag) cli.BeforeFunc {
	load := altsrc.InitInputSourceWithContext(flags, altsrc.NewYamlSourceFromFlagFunc("config"))
	return func(c *cli.Context) error {
		if c.String("config") == "" {
			return nil
		}
		if _, err := os.Stat(c.String("config")); err != nil {
			return cli.Exit(fmt.Sprintf("--config: %v", err), 2)
		}
		if err := load(c); err != nil {
			return cli.Exit(fmt.Sprintf("--config %s: %v", c.String("config"), err), 2)
		}
		return nil
	}
}

// printConfig writes the settings the command would run with, as a config
// file that gives the same.
func printConfig(c *cli.Context) error {
	settings := map[string]any{}
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		if slices.Contains([]string{"config", "print-config", "help"}, name) {
			continue
		}
		v := c.Value(name)
		switch v := v.(type) {
		case cli.StringSlice:
			settings[name] = splitList(v.Value())
		case fmt.Stringer:
			settings[name] = v.String()
		default:
			settings[name] = v
		}
	}
	e := yaml.NewEncoder(c.App.Writer)
	e.SetIndent(2)
	return e.Encode(settings)
}

// reloadedLogFlows is --log-flows after a SIGHUP: the command line or the
// environment if they set it, else the config file as it is now.
func reloadedLogFlows(c *cli.Context) bool {
	if c.IsSet("log-flows") || os.Getenv("NFSTEER_LOG_FLOWS") != "" || c.String("config") == "" {
		return c.Bool("log-flows")
	}
	b, err := os.ReadFile(c.String("config"))
	if err != nil {
		return c.Bool("log-flows")
	}
	var cfg struct {
		LogFlows bool `yaml:"log-flows"`
	}
	if yaml.Unmarshal(b, &cfg) != nil {
		return c.Bool("log-flows")
	}
	return cfg.LogFlows
}
