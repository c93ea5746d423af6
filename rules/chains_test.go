package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeIPTables is one family's mangle table in memory, printing rules as
// `iptables -S` does (without quoting, which sameRule ignores). It counts
// the calls that write.
type fakeIPTables struct {
	chains map[string][]string // chain -> rules, each its arguments joined by spaces
	writes int
	// afterWrite, if set, is called after every write: a test checks
	// what packets would meet at each step.
	afterWrite func()
}

func (f *fakeIPTables) wrote() {
	f.writes++
	if f.afterWrite != nil {
		f.afterWrite()
	}
}

var _ chains = (*fakeIPTables)(nil)

func newFakeIPTables() *fakeIPTables {
	return &fakeIPTables{chains: map[string][]string{"PREROUTING": nil, "POSTROUTING": nil}}
}

func builtinChain(c string) bool { return c == "PREROUTING" || c == "POSTROUTING" }

func (f *fakeIPTables) ChainExists(_, chain string) (bool, error) {
	_, ok := f.chains[chain]
	return ok, nil
}

func (f *fakeIPTables) NewChain(_, chain string) error {
	if _, ok := f.chains[chain]; ok {
		return fmt.Errorf("chain %s already exists", chain)
	}
	f.chains[chain] = nil
	f.wrote()
	return nil
}

func (f *fakeIPTables) ClearChain(_, chain string) error {
	f.chains[chain] = nil
	f.wrote()
	return nil
}

func (f *fakeIPTables) DeleteChain(_, chain string) error {
	if len(f.chains[chain]) > 0 {
		return fmt.Errorf("chain %s is not empty", chain)
	}
	delete(f.chains, chain)
	f.wrote()
	return nil
}

func (f *fakeIPTables) ClearAndDeleteChain(_, chain string) error {
	delete(f.chains, chain)
	f.wrote()
	return nil
}

func (f *fakeIPTables) List(_, chain string) ([]string, error) {
	rs, ok := f.chains[chain]
	if !ok {
		return nil, fmt.Errorf("no chain %s", chain)
	}
	head := "-N " + chain
	if builtinChain(chain) {
		head = "-P " + chain + " ACCEPT"
	}
	out := []string{head}
	for _, r := range rs {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

func (f *fakeIPTables) Exists(_, chain string, spec ...string) (bool, error) {
	return slices.Contains(f.chains[chain], strings.Join(spec, " ")), nil
}

func (f *fakeIPTables) Insert(_, chain string, pos int, spec ...string) error {
	f.chains[chain] = slices.Insert(f.chains[chain], pos-1, strings.Join(spec, " "))
	f.wrote()
	return nil
}

func (f *fakeIPTables) Append(_, chain string, spec ...string) error {
	f.chains[chain] = append(f.chains[chain], strings.Join(spec, " "))
	f.wrote()
	return nil
}

func (f *fakeIPTables) DeleteById(_, chain string, id int) error {
	rs := f.chains[chain]
	if id < 1 || id > len(rs) {
		return fmt.Errorf("no rule %d in %s", id, chain)
	}
	f.chains[chain] = slices.Delete(rs, id-1, id)
	f.wrote()
	return nil
}

// TestSyncChains: nfsteer's chains and jumps end exactly as the spec says,
// whatever was there; other rules in the built-in chains are kept; a
// second sync with nothing changed writes nothing.
func TestSyncChains(t *testing.T) {
	jump := func(in string) Rule {
		return Rule{Chain: "PREROUTING", Args: []string{"-i", in, "-j", chainPre}}
	}
	post := Rule{Chain: "POSTROUTING", Args: []string{"-j", chainPost}}
	own := []Rule{
		{Chain: chainPre, Args: []string{"-j", "CONNMARK", "--restore-mark"}},
		{Chain: chainPre, Args: []string{"-m", "mark", "--mark", "0", "-j", "NFQUEUE", "--queue-num", "0"}},
		{Chain: chainPost, Args: []string{"-j", "CONNMARK", "--save-mark"}},
	}
	foreign := "-i eth9 -j ACCEPT"
	// onCA0 is where a sync to steer ca0 ends, whatever it started from.
	onCA0 := map[string][]string{
		"PREROUTING":  {strings.Join(jump("ca0").Args, " "), foreign},
		"POSTROUTING": {strings.Join(post.Args, " ")},
		chainPre:      {"-j CONNMARK --restore-mark", "-m mark --mark 0 -j NFQUEUE --queue-num 0"},
		chainPost:     {"-j CONNMARK --save-mark"},
	}
	for _, tc := range []struct {
		name  string
		start map[string][]string
		jumps []Rule
		want  map[string][]string
	}{
		{
			name:  "from nothing",
			jumps: []Rule{jump("ca0"), jump("srv0"), post},
			want: map[string][]string{
				"PREROUTING":  {strings.Join(jump("ca0").Args, " "), strings.Join(jump("srv0").Args, " ")},
				"POSTROUTING": {strings.Join(post.Args, " ")},
				chainPre:      {"-j CONNMARK --restore-mark", "-m mark --mark 0 -j NFQUEUE --queue-num 0"},
				chainPost:     {"-j CONNMARK --save-mark"},
			},
		},
		{
			name: "a stale jump and a stale rule replaced; a foreign rule kept",
			start: map[string][]string{
				"PREROUTING":  {foreign, strings.Join(jump("old0").Args, " ")},
				"POSTROUTING": nil,
				chainPre:      {"-j CONNMARK --restore-mark", "-j NFQUEUE --queue-num 7"},
				chainPost:     {"-j CONNMARK --save-mark"},
			},
			jumps: []Rule{jump("ca0"), post},
			want:  onCA0,
		},
		{
			name: "an earlier version's jumps, with a comment, replaced",
			start: map[string][]string{
				"PREROUTING":  {"-i ca0 -m comment --comment nfsteer -j NFSTEER-PRE", foreign},
				"POSTROUTING": {"-m comment --comment nfsteer -j NFSTEER-POST"},
				chainPre:      {"-j CONNMARK --restore-mark", "-m mark --mark 0 -j NFQUEUE --queue-num 0"},
				chainPost:     {"-j CONNMARK --save-mark"},
			},
			jumps: []Rule{jump("ca0"), post},
			want:  onCA0,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeIPTables()
			for c, rs := range tc.start {
				f.chains[c] = slices.Clone(rs)
			}
			if err := syncChains(f, tc.jumps, own); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, f.chains); diff != "" {
				t.Errorf("chains after sync (-want +got):\n%s", diff)
			}
			f.writes = 0
			if err := syncChains(f, tc.jumps, own); err != nil {
				t.Fatal(err)
			}
			if f.writes != 0 {
				t.Errorf("a second sync of the same spec wrote %d times; want none (a rewrite opens a window with an empty chain)", f.writes)
			}
		})
	}
}

// TestSyncChainsReplacesJumpsWithoutAGap: replacing an earlier version's
// jumps (with a comment) by today's, at no step of the sync is a steered
// interface or POSTROUTING left without a jump to nfsteer's chain, which
// would let its packets past the chain unsteered.
func TestSyncChainsReplacesJumpsWithoutAGap(t *testing.T) {
	own := []Rule{
		{Chain: chainPre, Args: []string{"-j", "CONNMARK", "--restore-mark"}},
		{Chain: chainPost, Args: []string{"-j", "CONNMARK", "--save-mark"}},
	}
	f := newFakeIPTables()
	f.chains["PREROUTING"] = []string{"-i ca0 -m comment --comment nfsteer -j NFSTEER-PRE", "-i srv0 -m comment --comment nfsteer -j NFSTEER-PRE"}
	f.chains["POSTROUTING"] = []string{"-m comment --comment nfsteer -j NFSTEER-POST"}
	f.chains[chainPre] = []string{"-j CONNMARK --restore-mark"}
	f.chains[chainPost] = []string{"-j CONNMARK --save-mark"}
	jumped := func(chain, in, to string) bool {
		return slices.ContainsFunc(f.chains[chain], func(r string) bool {
			return strings.HasPrefix(r, in) && strings.HasSuffix(r, "-j "+to)
		})
	}
	step := 0
	f.afterWrite = func() {
		step++
		for _, in := range []string{"-i ca0", "-i srv0"} {
			if !jumped("PREROUTING", in, chainPre) {
				t.Errorf("after write %d, PREROUTING has no jump for %s: %q", step, in, f.chains["PREROUTING"])
			}
		}
		if !jumped("POSTROUTING", "", chainPost) {
			t.Errorf("after write %d, POSTROUTING has no jump: %q", step, f.chains["POSTROUTING"])
		}
	}
	jumps := []Rule{
		{Chain: "PREROUTING", Args: []string{"-i", "ca0", "-j", chainPre}},
		{Chain: "PREROUTING", Args: []string{"-i", "srv0", "-j", chainPre}},
		{Chain: "POSTROUTING", Args: []string{"-j", chainPost}},
	}
	if err := syncChains(f, jumps, own); err != nil {
		t.Fatal(err)
	}
	want := []string{"-i ca0 -j NFSTEER-PRE", "-i srv0 -j NFSTEER-PRE"}
	if diff := cmp.Diff(want, f.chains["PREROUTING"]); diff != "" {
		t.Errorf("PREROUTING after the sync (-want +got):\n%s", diff)
	}
	if step == 0 {
		t.Error("the sync wrote nothing: the test proves nothing")
	}
}

// TestDeleteJumps: removing nfsteer deletes its jumps, and only them.
func TestDeleteJumps(t *testing.T) {
	f := newFakeIPTables()
	f.chains["PREROUTING"] = []string{"-i a -j NFSTEER-PRE", "-i eth9 -j ACCEPT", `-i b -m comment --comment "nfsteer" -j NFSTEER-PRE`, "-j MARK --set-mark 1"}
	if err := deleteJumps(f, "PREROUTING", nil); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"-i eth9 -j ACCEPT", "-j MARK --set-mark 1"}, f.chains["PREROUTING"]); diff != "" {
		t.Errorf("PREROUTING after deleting the jumps (-want +got):\n%s", diff)
	}
}

func (f *fakeIPTables) ListWithCounters(table, chain string) ([]string, error) {
	lines, err := f.List(table, chain)
	for i := range lines {
		if strings.HasPrefix(lines[i], "-A ") {
			lines[i] += " -c 0 0"
		}
	}
	return lines, err
}

func TestCountIn(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lines   []string
		want    uint64
		wantErr bool
	}{
		{"counted", []string{"-N NFSTEER-POST", "-A NFSTEER-POST -j CONNMARK --save-mark -c 900 1000", `-A NFSTEER-POST -m mark --mark 0x0/0xfff -m comment --comment "nfsteer-unsteered" -c 42 3360`}, 42, false},
		{"summed", []string{`-A X -m comment --comment nfsteer-unsteered -c 2 0`, `-A X -m comment --comment nfsteer-unsteered -c 3 0`}, 5, false},
		{"no such rule (rules of an older version)", []string{"-N NFSTEER-POST"}, 0, false},
		{"no counters", []string{`-A NFSTEER-POST -m comment --comment nfsteer-unsteered`}, 0, true},
		{"bad counters", []string{`-A NFSTEER-POST -m comment --comment nfsteer-unsteered -c x 0`}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := countIn(tc.lines, UnsteeredComment)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Errorf("countIn = %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestSyncChainsUpgradeSpoof: a gateway installed by a version that
// checked sources in iptables (a jump per steered interface to
// NFSTEER-SPOOF and to NFSTEER-PRE) gets the one jump of this version,
// and NFSTEER-SPOOF goes; someone else's rule stays.
func TestSyncChainsUpgradeSpoof(t *testing.T) {
	f := newFakeIPTables()
	f.chains["PREROUTING"] = []string{
		"-i ca0 -m addrtype --dst-type UNICAST -m addrtype ! --dst-type LOCAL -j " + chainSpoof,
		"-i cx0 -m addrtype --dst-type UNICAST -m addrtype ! --dst-type LOCAL -j " + chainSpoof,
		"-i ca0 -j " + chainPre,
		"-i cx0 -j " + chainPre,
		"-i eth9 -j ACCEPT",
	}
	f.chains[chainSpoof] = []string{"-s 10.10.1.0/24 -i ca0 -j RETURN", "-i ca0 -m comment --comment nfsteer-spoof -j DROP"}
	f.chains[chainPre] = []string{"-j CONNMARK --restore-mark"}
	jumps, own := Spec{Outer: []string{"cx0"}, Ingress: []Binding{{Tenant: "acme", Ifaces: []string{"ca0"},
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.10.1.0/24")}}}}.IPTablesRules(4)
	var pre []Rule
	for _, j := range jumps {
		if j.Chain == "PREROUTING" {
			pre = append(pre, j)
		}
	}
	if err := syncChains(f, jumps, own); err != nil {
		t.Fatal(err)
	}
	want := []string{strings.Join(pre[0].Args, " "), "-i eth9 -j ACCEPT"}
	if diff := cmp.Diff(want, f.chains["PREROUTING"]); diff != "" {
		t.Errorf("PREROUTING after the upgrade (-want +got):\n%s", diff)
	}
	if _, ok := f.chains[chainSpoof]; ok {
		t.Errorf("%s is still there: %q", chainSpoof, f.chains[chainSpoof])
	}
}
