package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "print a `table` or json (stable field names, for scripts)"}
}

// printer writes a command's result: a table for people by default, JSON
// for scripts with --output json.
type printer struct {
	w    io.Writer
	json bool
}

func printerOf(c *cli.Context) (printer, error) {
	p := printer{w: c.App.Writer}
	switch c.String("output") {
	case "", "table":
	case "json":
		p.json = true
	default:
		return p, cli.Exit(fmt.Sprintf("--output %q: want table or json", c.String("output")), 2)
	}
	return p, nil
}

// print writes v as indented JSON, or calls table with a tab-aligned
// writer.
func (p printer) print(v any, table func(w io.Writer)) error {
	if p.json {
		e := json.NewEncoder(p.w)
		e.SetIndent("", "  ")
		return e.Encode(v)
	}
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
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
