package main

import (
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// interspersed moves a command's positional arguments after its flags.
// urfave/cli v2 stops reading flags at the first argument that is not one,
// so "nfsteer instance drain fw-2 -o json" would take "-o" and "json" for
// arguments; people type flags anywhere. Everything after "--" stays as it
// is.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	var positional []string
	flags, cmds := app.Flags, app.Commands
	for i := 1; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			positional = append(positional, args[i:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && a != "-":
			out = append(out, a)
			if !strings.Contains(a, "=") && takesValue(flags, strings.TrimLeft(a, "-")) && i+1 < len(args) {
				i++
				out = append(out, args[i])
			}
		case len(positional) == 0 && command(cmds, a) != nil:
			c := command(cmds, a)
			out = append(out, a)
			flags, cmds = c.Flags, c.Subcommands
		default:
			positional = append(positional, a)
		}
	}
	return append(out, positional...)
}

func command(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.Name == name || slices.Contains(c.Aliases, name) {
			return c
		}
	}
	return nil
}

// takesValue reports whether the flag called name reads the next argument
// as its value: every flag but a boolean one. An unknown flag takes none
// (the parser will refuse it).
func takesValue(flags []cli.Flag, name string) bool {
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			// Every urfave flag says so, wrapped ones (altsrc) included.
			if tv, ok := f.(interface{ TakesValue() bool }); ok {
				return tv.TakesValue()
			}
			return true
		}
	}
	return false
}
