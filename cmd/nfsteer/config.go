package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"time"

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

// loadConfig reads the --config file, if any, into the flags, after
// checking it as strictly as a map file (checkConfig). It records in the
// app's metadata which settings came from the file, for error messages.
func loadConfig(flags []cli.Flag) cli.BeforeFunc {
	load := altsrc.InitInputSourceWithContext(flags, altsrc.NewYamlSourceFromFlagFunc("config"))
	return func(c *cli.Context) error {
		path := c.String("config")
		if path == "" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return cli.Exit(fmt.Sprintf("--config: %v", err), 2)
		}
		keys, err := checkConfig(b, flags)
		if err != nil {
			return cli.Exit(fmt.Sprintf("--config %s: %v", path, err), 2)
		}
		var fromFile []string
		for _, k := range keys {
			if !c.IsSet(k) { // flags and NFSTEER_* variables win over the file
				fromFile = append(fromFile, k)
			}
		}
		if c.App.Metadata == nil {
			c.App.Metadata = map[string]any{}
		}
		c.App.Metadata[metaFromFile] = fromFile
		if err := load(c); err != nil {
			return cli.Exit(fmt.Sprintf("--config %s: %v", path, err), 2)
		}
		return nil
	}
}

// metaFromFile is the app metadata key of the settings the --config file
// gave.
const metaFromFile = "nfsteer.config.keys"

// checkConfig checks a config file before any of it is used: a YAML
// mapping whose keys are the command's long flag names and whose values
// have the flags' types. Errors name the line, the key and what it wants,
// in the file's words. It returns the keys the file sets.
func checkConfig(b []byte, flags []cli.Flag) ([]string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, nil // an empty file sets nothing
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping of settings (key: value), one per line", m.Line)
	}
	kinds := map[string]string{}
	var names []string
	for _, f := range flags {
		name := f.Names()[0]
		if slices.Contains([]string{"config", "print-config", "help"}, name) {
			continue
		}
		names = append(names, name)
		switch f.(type) {
		case *altsrc.BoolFlag:
			kinds[name] = "bool"
		case *altsrc.IntFlag, *altsrc.UintFlag:
			kinds[name] = "int"
		case *altsrc.DurationFlag:
			kinds[name] = "duration"
		case *altsrc.StringSliceFlag:
			kinds[name] = "list"
		default:
			kinds[name] = "string"
		}
	}
	var keys []string
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		kind, ok := kinds[k.Value]
		if !ok {
			msg := fmt.Sprintf("line %d: unknown key %q", k.Line, k.Value)
			if near := closest(k.Value, names); near != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", near)
			}
			return nil, errors.New(msg + "; the keys are the long flag names of the command (see --help)")
		}
		if slices.Contains(keys, k.Value) {
			return nil, fmt.Errorf("line %d: %q set twice", k.Line, k.Value)
		}
		if err := checkValue(kind, v); err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", v.Line, k.Value, err)
		}
		keys = append(keys, k.Value)
	}
	return keys, nil
}

// checkValue checks that v is a value of a flag of kind.
func checkValue(kind string, v *yaml.Node) error {
	scalar := v.Kind == yaml.ScalarNode
	switch kind {
	case "bool":
		if !scalar || v.Tag != "!!bool" {
			return fmt.Errorf("want true or false, not %s", describe(v))
		}
	case "int":
		if !scalar || v.Tag != "!!int" {
			return fmt.Errorf("want a whole number, not %s", describe(v))
		}
	case "duration":
		if _, err := time.ParseDuration(v.Value); !scalar || err != nil {
			return fmt.Errorf("want a duration such as 25ms or 10s, not %s", describe(v))
		}
	case "list":
		if scalar {
			return nil // one item
		}
		if v.Kind != yaml.SequenceNode {
			return fmt.Errorf("want a list such as [eth1, eth2], not %s", describe(v))
		}
		for _, item := range v.Content {
			if item.Kind != yaml.ScalarNode {
				return fmt.Errorf("want a list of names, not one holding %s", describe(item))
			}
		}
	default:
		if !scalar {
			return fmt.Errorf("want a single value, not %s", describe(v))
		}
	}
	return nil
}

// describe names a YAML value for an error message.
func describe(v *yaml.Node) string {
	switch v.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	if v.Value == "" {
		return "nothing"
	}
	return fmt.Sprintf("%q", v.Value)
}

// settingError says which setting is wrong and where it was set: the
// --config file, or the command line or environment. problem starts with
// the value: `--heartbeat -5ms: want at least 1ms`.
func settingError(c *cli.Context, name, problem string) error {
	if fromFile, _ := c.App.Metadata[metaFromFile].([]string); slices.Contains(fromFile, name) {
		return cli.Exit(fmt.Sprintf("%s %s (in %s)", name, problem, c.String("config")), 2)
	}
	return cli.Exit(fmt.Sprintf("--%s %s", name, problem), 2)
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
		if name == "redis" {
			v = redactURL(c.String(name))
		}
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

// redactURL hides a URL's password: --print-config's output ends up in
// tickets and chat.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(not a URL)"
	}
	return u.Redacted()
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
