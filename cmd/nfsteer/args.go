package main

import (
	"fmt"
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

// closest returns the candidate nearest to word by edit distance, if it is
// near enough to be what was meant (a typo: at most a third of the word
// wrong), or "".
func closest(word string, candidates []string) string {
	best, bestD := "", max(1, len(word)/3)+1
	for _, c := range candidates {
		if d := editDistance(word, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, with an
// adjacent swap counting one (Damerau's transposition): "redsi" is one
// from "redis".
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// commandWords calls visit with the index of each word of args that stands
// where a command name goes, and the commands it may name, skipping flags
// and their values. The walk follows the command visit returns, and ends
// at "--", at a leaf command's arguments, or when visit returns nil.
func commandWords(app *cli.App, args []string, visit func(i int, cmds []*cli.Command) *cli.Command) {
	flags, cmds := app.Flags, app.Commands
	for i := 1; i < len(args) && len(cmds) > 0; i++ {
		a := args[i]
		switch {
		case a == "--":
			return
		case strings.HasPrefix(a, "-") && a != "-":
			if !strings.Contains(a, "=") && takesValue(flags, strings.TrimLeft(a, "-")) {
				i++
			}
			continue
		}
		c := visit(i, cmds)
		if c == nil {
			return
		}
		flags, cmds = c.Flags, c.Subcommands
	}
}

// helpWords turns "help" where a command is expected into --help at the
// end: "nfsteer help tenant list" and "nfsteer tenant help list" become
// "nfsteer tenant list --help", which shows that command's own help.
// urfave/cli's help command takes only the next word, so "help tenant
// list" showed tenant's help, without its subcommands. A leaf command's
// argument "help" is left alone.
func helpWords(app *cli.App, args []string) []string {
	out := args
	commandWords(app, args, func(i int, cmds []*cli.Command) *cli.Command {
		if args[i] == "help" {
			out = append(append(slices.Clone(args[:i]), args[i+1:]...), "--help")
			return nil
		}
		return command(cmds, args[i]) // nil (unknown): commandPath names it
	})
	return out
}

// commandPath checks the words of args that name commands, before the
// parser sees them: a word where a subcommand is expected must be one, or
// the error says which word is wrong and suggests the command meant.
// Without it, "nfsteer instnce list --redis URL" blamed the flag --redis.
// It runs after helpWords, so "help TOPIC..." is checked the same way.
func commandPath(app *cli.App, args []string) error {
	path := "nfsteer"
	var err error
	commandWords(app, args, func(i int, cmds []*cli.Command) *cli.Command {
		a := args[i]
		c := command(cmds, a)
		if c == nil {
			var names []string
			for _, c := range cmds {
				names = append(names, c.Name)
			}
			msg := fmt.Sprintf("unknown command %q for %s", a, path)
			if near := closest(a, names); near != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", near)
			}
			err = fmt.Errorf("%s; the commands are %s", msg, strings.Join(names, ", "))
			return nil
		}
		path += " " + c.Name
		return c
	})
	return err
}
