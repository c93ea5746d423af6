package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"
)

func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "print a `table`, json or yaml (json and yaml: stable field names, for scripts)"}
}

// printer writes a command's result: a table for people by default, JSON
// or YAML for scripts with --output. The JSON and YAML documents have the
// same fields: durations in seconds, times in RFC 3339, null for "none".
type printer struct {
	w      io.Writer
	format string // table, json or yaml
}

func printerOf(c *cli.Context) (printer, error) {
	p := printer{w: c.App.Writer, format: c.String("output")}
	switch p.format {
	case "":
		p.format = "table"
	case "table", "json", "yaml":
	default:
		return p, cli.Exit(fmt.Sprintf("--output %q: want table, json or yaml", p.format), 2)
	}
	return p, nil
}

// print writes v as one indented JSON or YAML document, or calls table
// with a tab-aligned writer.
func (p printer) print(v any, table func(w io.Writer)) error {
	switch p.format {
	case "json":
		e := json.NewEncoder(p.w)
		e.SetIndent("", "  ")
		return e.Encode(v)
	case "yaml":
		return writeYAMLOf(p.w, v)
	}
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// writeYAMLOf writes v as YAML with its JSON field names and order: JSON
// is YAML, so the JSON document is read back as a YAML node and written
// in block style.
func writeYAMLOf(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return err
	}
	clearStyle(&n)
	e := yaml.NewEncoder(w)
	e.SetIndent(2)
	if err := e.Encode(&n); err != nil {
		return err
	}
	return e.Close()
}

// clearStyle turns the flow style and quotes a JSON document reads as
// into YAML's plain block style; the encoder still quotes a string that
// would read as another type ("true", "443").
func clearStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		clearStyle(c)
	}
}

// maybeSeconds is d in seconds, or nil (null) when ok is false.
func maybeSeconds(d time.Duration, ok bool) *float64 {
	if !ok {
		return nil
	}
	s := d.Seconds()
	return &s
}

// row writes one tab-separated table row.
func row(w io.Writer, cells ...any) {
	parts := make([]string, len(cells))
	for i, c := range cells {
		parts[i] = fmt.Sprint(c)
		if parts[i] == "" {
			parts[i] = "-"
		}
	}
	fmt.Fprintln(w, strings.Join(parts, "\t"))
}
