package rules

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// chains is the part of go-iptables that keeps nfsteer's chains and the
// jumps to them in sync, in one family's mangle table:
// *iptables.IPTables in production, a fake in unit tests. Its List
// returns `iptables -S` lines.
type chains interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	ClearAndDeleteChain(table, chain string) error
	List(table, chain string) ([]string, error)
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	DeleteById(table, chain string, id int) error
	// ListWithCounters is List with each rule's "-c packets bytes".
	ListWithCounters(table, chain string) ([]string, error)
}

// countIn returns the packet count of the rules tagged comment among
// lines, as ListWithCounters prints them, summed (0 if none is there).
func countIn(lines []string, comment string) (uint64, error) {
	var total uint64
	for _, l := range lines {
		if !strings.Contains(l, comment) {
			continue
		}
		f := strings.Fields(l)
		i := slices.Index(f, "-c")
		if i < 0 || i+1 >= len(f) {
			return 0, fmt.Errorf("no counters in %q", l)
		}
		n, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("counters in %q: %v", l, err)
		}
		total += n
	}
	return total, nil
}

// syncChains makes nfsteer's own chains hold exactly own, then the
// built-in chains jump to them exactly as jumps say. Jumps go last, so
// packets never reach a half-built chain; new jumps go in before stale
// ones (an interface no longer outer, an earlier version's form) come
// out, so a jump being replaced leaves no moment without one. A packet
// meeting both takes the chain twice, which changes nothing. It is
// idempotent: when everything is in place it only reads.
func syncChains(ipt chains, jumps, own []Rule) error {
	for _, c := range ownChains {
		rules := argsOf(own, c)
		if len(rules) == 0 {
			continue // a chain with no rules is not kept (deleted below)
		}
		if err := syncChain(ipt, c, rules); err != nil {
			return fmt.Errorf("chain %s: %w", c, err)
		}
	}
	for _, builtin := range []string{"PREROUTING", "POSTROUTING"} {
		want := argsOf(jumps, builtin)
		// The jumps are the chain's first rules, in want's order: a
		// missing one goes in after those before it.
		at := 1
		for _, w := range want {
			ok, err := ipt.Exists(table, builtin, w...)
			if err != nil {
				return err
			}
			if !ok {
				if err := ipt.Insert(table, builtin, at, w...); err != nil {
					return fmt.Errorf("adding jump to %s: %w", builtin, err)
				}
			}
			at++
		}
		if err := deleteJumps(ipt, builtin, want); err != nil {
			return err
		}
	}
	// Chains with no rules go once nothing jumps to them any more (an
	// earlier version's anti-spoofing chain).
	for _, c := range ownChains {
		if len(argsOf(own, c)) > 0 {
			continue
		}
		ok, err := ipt.ChainExists(table, c)
		if err != nil {
			return err
		}
		if ok {
			if err := ipt.ClearAndDeleteChain(table, c); err != nil {
				return fmt.Errorf("deleting chain %s: %w", c, err)
			}
		}
	}
	return nil
}

// argsOf returns the arguments of the rules of chain, in order.
func argsOf(rs []Rule, chain string) [][]string {
	var out [][]string
	for _, r := range rs {
		if r.Chain == chain {
			out = append(out, r.Args)
		}
	}
	return out
}

// syncChain makes chain hold exactly want, in order. When it already does,
// nothing is written, so a repeated Apply does not open a window in which
// the chain is empty.
func syncChain(ipt chains, chain string, want [][]string) error {
	exists, err := ipt.ChainExists(table, chain)
	if err != nil {
		return err
	}
	if exists {
		have, err := ipt.List(table, chain)
		if err != nil {
			return err
		}
		same := len(have) == len(want)+1 // List starts with "-N chain"
		for i := 0; same && i < len(want); i++ {
			same, err = ipt.Exists(table, chain, want[i]...)
			if err != nil {
				return err
			}
		}
		if same {
			return nil
		}
	}
	if err := ipt.ClearChain(table, chain); err != nil { // creates it if missing
		return err
	}
	for _, args := range want {
		if err := ipt.Append(table, chain, args...); err != nil {
			return err
		}
	}
	return nil
}

// deleteJumps deletes every rule of a built-in chain that jumps to one of
// nfsteer's chains and is not in keep.
func deleteJumps(ipt chains, builtin string, keep [][]string) error {
	have, err := ipt.List(table, builtin)
	if err != nil {
		return err
	}
	// have[0] is the policy line; rule n is have[n]. Delete from the end so
	// the numbers of the rest stay valid.
	for n := len(have) - 1; n >= 1; n-- {
		if !strings.Contains(have[n], "-j NFSTEER-") {
			continue
		}
		if slices.ContainsFunc(keep, func(args []string) bool { return sameRule(have[n], builtin, args) }) {
			continue
		}
		if err := ipt.DeleteById(table, builtin, n); err != nil {
			return fmt.Errorf("deleting %q: %w", have[n], err)
		}
	}
	return nil
}

// sameRule compares an `iptables -S` line with rule arguments. The jumps are
// simple enough (interface, comment, target) that iptables prints them the
// way they were given, apart from quoting.
func sameRule(line, chain string, args []string) bool {
	return strings.ReplaceAll(line, `"`, "") == "-A "+chain+" "+strings.Join(args, " ")
}
