//go:build linux

package rules

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Linux is the Kernel of the caller's network namespace. Its methods are
// not safe for concurrent use: one agent owns one namespace's state.
type Linux struct {
	fams [2]family
	// applied is the last iptables rule set Apply installed: a map change
	// that only changes routing does not run iptables (milliseconds per
	// call) again.
	applied []Rule
	// appliedRules and appliedRoutes are the routing Apply last installed
	// in full: a map version that keeps every hop (a drain, a tenant
	// added) does not dump and compare thousands of rules and routes
	// again. Something else deleting them is not repaired until the hops
	// change or the agent restarts.
	appliedRules  []IPRule
	appliedRoutes []Route
	// appliedOverlay and appliedTags are the overlay and tags Apply last
	// installed, for the same reason.
	appliedOverlay *Overlay
	appliedTags    *Spec
	// overlayGone: an Apply without an overlay has removed any there was,
	// so the next ones need not ask the kernel again.
	overlayGone bool
}

type family struct {
	name   string // "IPv4" or "IPv6"
	ipt    chains // *iptables.IPTables
	save   string // iptables-save binary
	nft    bool   // the iptables binary is the nf_tables variant
	nftFam string // nft family of the table: ip or ip6
	nlFam  int
}

// version is the family's IP version, 4 or 6.
func (f family) version() int {
	if f.nlFam == netlink.FAMILY_V6 {
		return 6
	}
	return 4
}

// NewLinux finds the iptables binaries and returns the Kernel of the
// caller's network namespace.
func NewLinux() (*Linux, error) {
	var k Linux
	for i, p := range []struct {
		proto           iptables.Protocol
		name, bin, save string
		nftFam          string
		nlFam           int
	}{
		{iptables.ProtocolIPv4, "IPv4", "iptables", "iptables-save", "ip", netlink.FAMILY_V4},
		{iptables.ProtocolIPv6, "IPv6", "ip6tables", "ip6tables-save", "ip6", netlink.FAMILY_V6},
	} {
		ipt, err := iptables.New(iptables.IPFamily(p.proto), iptables.Timeout(10))
		if err != nil {
			return nil, fmt.Errorf("finding %s: %w", p.bin, err)
		}
		v, err := exec.Command(p.bin, "-V").Output()
		if err != nil {
			return nil, fmt.Errorf("running %s -V: %w", p.bin, err)
		}
		k.fams[i] = family{name: p.name, ipt: ipt, save: p.save, nft: bytes.Contains(v, []byte("nf_tables")), nftFam: p.nftFam, nlFam: p.nlFam}
	}
	return &k, nil
}

// Apply installs s, replacing whatever nfsteer had installed before.
func (k *Linux) Apply(s Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	s = s.WithDefaults()
	wantRules, wantRoutes := s.Routing()
	routed := k.appliedRoutes != nil && slices.Equal(wantRules, k.appliedRules) && slices.Equal(wantRoutes, k.appliedRoutes)
	if !routed {
		// Before anything changes: a refused spec leaves the node as it
		// was.
		for _, f := range k.fams {
			if err := f.checkPriorities(s.RulePriority); err != nil {
				return err
			}
		}
	}
	// nftables first: the iptables jump to NFSTEER-PRE wants the flag
	// the steer chain sets.
	if k.appliedTags == nil || !sameTags(s, *k.appliedTags) {
		k.appliedTags = nil
		if err := applyTags(s); err != nil {
			return err
		}
		k.appliedTags = &s
	}
	var all []Rule
	for _, fam := range []int{4, 6} {
		jumps, own := s.IPTablesRules(fam)
		all = append(append(all, jumps...), own...)
	}
	if !slices.EqualFunc(all, k.applied, func(a, b Rule) bool { return a.Chain == b.Chain && slices.Equal(a.Args, b.Args) }) {
		k.applied = nil
		for _, f := range k.fams {
			jumps, own := s.IPTablesRules(f.version())
			if err := f.applyIPTables(jumps, own); err != nil {
				return fmt.Errorf("installing %s rules: %w", f.name, err)
			}
		}
		k.applied = all
	}
	// The device comes before the routes that use it, and goes after
	// they have left it.
	if s.Overlay != nil && !reflect.DeepEqual(s.Overlay, k.appliedOverlay) {
		k.appliedOverlay, k.overlayGone = nil, false
		if err := applyOverlay(s.Overlay); err != nil {
			return err
		}
		k.appliedOverlay = s.Overlay
	}
	if !routed {
		k.appliedRules, k.appliedRoutes = nil, nil
		if err := k.applyRouting(wantRules, wantRoutes); err != nil {
			return err
		}
		k.appliedRules, k.appliedRoutes = wantRules, wantRoutes
	}
	if s.Overlay == nil && !k.overlayGone {
		k.appliedOverlay = nil
		if err := removeOverlay(); err != nil {
			return err
		}
		k.overlayGone = true
	}
	return nil
}

// sameTags reports whether a and b install the same table inet nfsteer.
func sameTags(a, b Spec) bool {
	sa, ga := a.Steer()
	sb, gb := b.Steer()
	// The hops are in the table only on an overlay (its return set): a
	// hop going down elsewhere does not install it again.
	return ga == gb && reflect.DeepEqual(sa, sb) && reflect.DeepEqual(a.Tags, b.Tags) &&
		reflect.DeepEqual(a.Overlay, b.Overlay) && (a.Overlay == nil || reflect.DeepEqual(a.Hops, b.Hops))
}

func (f family) applyIPTables(jumps, own []Rule) error {
	exists, err := f.ipt.ChainExists(table, chainPre)
	if err != nil {
		return err
	}
	if !exists {
		// Remember whether the table is ours to delete again: an nf_tables
		// table that nobody had before stays visible in iptables-save after
		// its chains are gone.
		// Ask for all tables: with -t, the nf_tables iptables-save prints an
		// empty table even where none exists.
		out, err := exec.Command(f.save).Output()
		if err != nil {
			return fmt.Errorf("running %s: %w", f.save, err)
		}
		if !bytes.Contains(out, []byte("\n*"+table+"\n")) && !bytes.HasPrefix(out, []byte("*"+table+"\n")) {
			if err := f.ipt.NewChain(table, chainOwner); err != nil {
				return err
			}
		}
	}
	return syncChains(f.ipt, jumps, own)
}

// Remove deletes everything nfsteer owns in this namespace.
func (k *Linux) Remove() error {
	k.applied, k.appliedRules, k.appliedRoutes, k.appliedOverlay, k.appliedTags = nil, nil, nil, nil, nil
	k.overlayGone = false
	var errs []error
	for _, f := range k.fams {
		if err := f.remove(); err != nil {
			errs = append(errs, fmt.Errorf("removing %s rules: %w", f.name, err))
		}
	}
	if err := k.removeRouting(); err != nil {
		errs = append(errs, err)
	}
	if err := removeTags(); err != nil {
		errs = append(errs, err)
	}
	if err := removeOverlay(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (f family) remove() error {
	for _, builtin := range []string{"PREROUTING", "POSTROUTING"} {
		if err := deleteJumps(f.ipt, builtin, nil); err != nil {
			return err
		}
	}
	for _, c := range ownChains {
		ok, err := f.ipt.ChainExists(table, c)
		if err != nil {
			return err
		}
		if ok {
			if err := f.ipt.ClearAndDeleteChain(table, c); err != nil {
				return err
			}
		}
	}
	owned, err := f.ipt.ChainExists(table, chainOwner)
	if err != nil || !owned {
		return err
	}
	if err := f.ipt.DeleteChain(table, chainOwner); err != nil {
		return err
	}
	if !f.nft {
		return nil // a legacy table lives as long as its module; nothing to do
	}
	pristine, err := f.pristine()
	if err != nil || !pristine {
		return err
	}
	if out, err := exec.Command("nft", "delete", "table", f.nftFam, table).CombinedOutput(); err != nil {
		return fmt.Errorf("deleting the empty %s table nfsteer created: %v: %s", table, err, bytes.TrimSpace(out))
	}
	return nil
}

// pristine reports whether the table holds nothing but empty built-in
// chains with ACCEPT policies: the same, to every packet and to
// iptables-save's reader, as no table.
func (f family) pristine() (bool, error) {
	out, err := exec.Command(f.save).Output()
	if err != nil {
		return false, fmt.Errorf("running %s: %w", f.save, err)
	}
	in := false
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case l == "*"+table:
			in = true
		case !in || strings.HasPrefix(l, "#"):
		case l == "COMMIT":
			return true, nil
		case !strings.HasPrefix(l, ":") || !builtin.MatchString(l):
			return false, nil
		}
	}
	return !in, nil
}

// builtin matches a built-in chain of the mangle table with the default
// policy, as iptables-save prints it.
var builtin = regexp.MustCompile(`^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT( \[\d+:\d+\])?$`)

func (k *Linux) applyRouting(wantRules []IPRule, wantRoutes []Route) error {
	overlay := 0 // the overlay device's index, if it has one
	if link, err := overlayLink(); err != nil {
		return err
	} else if link != nil {
		overlay = link.Index
	}
	// Each device is looked up once: a hop's route has none, and a
	// gateway has a route per zoned tenant on its ingress.
	index := map[string]int{"": 0, OverlayDevice: overlay}
	ifindex := func(name string) int {
		i, ok := index[name]
		if !ok {
			if l, err := netlink.LinkByName(name); err == nil {
				i = l.Attrs().Index
			}
			index[name] = i
		}
		return i
	}
	names := map[int]string{overlay: OverlayDevice}
	wantRoutes = slices.Clone(wantRoutes)
	for i, r := range wantRoutes {
		if r.Dev == OverlayDevice && overlay == 0 {
			return fmt.Errorf("route via %s in table %d: no device %s", r.Via, r.Table, r.Dev)
		}
		dev := ifindex(r.Dev)
		if r.Dst.IsValid() && dev == 0 {
			// A zoned tenant's ingress missing on this gateway: its
			// replies are dropped, never routed by the main table.
			wantRoutes[i].Unreachable, wantRoutes[i].Dev = true, ""
		} else if r.Dev != "" {
			names[dev] = r.Dev
		}
		nr := toNetlinkRoute(wantRoutes[i], dev)
		if err := netlink.RouteReplace(nr); err != nil {
			return fmt.Errorf("adding route %s in table %d: %w", wantRoutes[i], r.Table, err)
		}
	}
	for _, f := range k.fams {
		have, err := ourRoutes(f.nlFam)
		if err != nil {
			return err
		}
		for _, h := range have {
			if !slices.Contains(wantRoutes, fromNetlinkRoute(h, names)) {
				if err := netlink.RouteDel(&h); err != nil && !errors.Is(err, unix.ESRCH) {
					return fmt.Errorf("deleting stale route in table %d: %w", h.Table, err)
				}
			}
		}
		if err := f.syncRules(wantRules); err != nil {
			return err
		}
	}
	return nil
}

// checkPriorities refuses an ip rule of someone else's among the
// priorities nfsteer's rules take from first: packets walking nfsteer's
// rules would meet it (see the tries' layout in routing.go).
func (f family) checkPriorities(first int) error {
	all, err := netlink.RuleList(f.nlFam)
	if err != nil {
		return fmt.Errorf("listing %s ip rules: %w", f.name, err)
	}
	for _, r := range all {
		if r.Protocol != RouteProtocol && r.Priority >= first && r.Priority < first+RulePriorities {
			return fmt.Errorf("%w: %s rule at priority %d (protocol %d) is among nfsteer's priorities %d-%d; move it or choose another --rule-priority",
				ErrForeignRule, f.name, r.Priority, r.Protocol, first, first+RulePriorities-1)
		}
	}
	return nil
}

// syncRules makes nfsteer's ip rules of family f exactly those of want
// that are of that family: missing ones are added first, then stale ones
// go. At every step a packet finds its instance's table or none, never
// another's (see the tries' layout in routing.go), and adding first
// leaves no moment in which an instance's flows have no rule at all: an
// upgrade from one rule per instance keeps the old rules, met first at
// their priority, until the tries are complete.
func (f family) syncRules(want []IPRule) error {
	fam := f.version()
	ours, err := ourRules(f.nlFam)
	if err != nil {
		return err
	}
	have := map[IPRule]bool{}
	for _, r := range ours {
		have[fromNetlinkRule(fam, r)] = true
	}
	wanted := map[IPRule]bool{}
	for _, w := range want {
		if w.Family == fam {
			wanted[w] = true
		}
	}
	for _, w := range want {
		if w.Family != fam || have[w] {
			continue
		}
		if err := netlink.RuleAdd(toNetlinkRule(f.nlFam, w)); err != nil {
			return fmt.Errorf("adding ip rule %v: %w", w, err)
		}
	}
	for _, h := range ours {
		if r := fromNetlinkRule(fam, h); !wanted[r] {
			if err := netlink.RuleDel(&h); err != nil {
				return fmt.Errorf("deleting stale ip rule %v: %w", r, err)
			}
		}
	}
	return nil
}

func (k *Linux) removeRouting() error {
	var errs []error
	for _, f := range k.fams {
		rules, err := ourRules(f.nlFam)
		if err != nil {
			errs = append(errs, err)
		}
		for _, r := range rules {
			if err := netlink.RuleDel(&r); err != nil {
				errs = append(errs, fmt.Errorf("deleting ip rule to table %d: %w", r.Table, err))
			}
		}
		routes, err := ourRoutes(f.nlFam)
		if err != nil {
			errs = append(errs, err)
		}
		for _, r := range routes {
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("deleting route in table %d: %w", r.Table, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Unsteered reads the counters of the rule counting new flows that left
// without a decision. Call it from a slow path: with iptables-nft it is
// one netlink dump per family, with legacy iptables it runs iptables.
func (k *Linux) Unsteered() (uint64, error) { return k.counted(chainPost, UnsteeredComment) }

// Spoofed reads the count of packets the gateway dropped because they
// entered where their source may not (see [Steer]). Like Unsteered, call
// it from a slow path.
func (k *Linux) Spoofed() (uint64, error) { return tableCounter(SpoofedCounter) }

// counted sums, over both families, the packet counters of chain's rules
// tagged comment (0 where the chain is not there).
func (k *Linux) counted(chain, comment string) (uint64, error) {
	var total uint64
	for _, f := range k.fams {
		n, err := f.counted(chain, comment)
		if err != nil {
			return total, fmt.Errorf("reading %s counters: %w", f.name, err)
		}
		total += n
	}
	return total, nil
}

// counted is Linux.counted for one family. With iptables-nft it reads the
// rules from nf_tables over netlink: running iptables every second, in
// every agent, took about 5% of a core per agent and showed in the chain's
// throughput on a 2-core host. iptables-nft keeps a rule's comment as an
// xt match or in its user data, and gives every rule a counter
// expression.
func (f family) counted(chain, comment string) (uint64, error) {
	if !f.nft {
		ok, err := f.ipt.ChainExists(table, chain)
		if err != nil || !ok {
			return 0, err
		}
		lines, err := f.ipt.ListWithCounters(table, chain)
		if err != nil {
			return 0, err
		}
		return countIn(lines, comment)
	}
	conn, err := nftables.New()
	if err != nil {
		return 0, err
	}
	fam := nftables.TableFamilyIPv4
	if f.nlFam == netlink.FAMILY_V6 {
		fam = nftables.TableFamilyIPv6
	}
	rs, err := conn.GetRules(&nftables.Table{Name: table, Family: fam}, &nftables.Chain{Name: chain})
	if errors.Is(err, unix.ENOENT) {
		return 0, nil // no such table or chain: nothing counted yet
	}
	if err != nil {
		return 0, err
	}
	var total uint64
	for _, r := range rs {
		if nftComment(r) != comment {
			continue
		}
		for _, e := range r.Exprs {
			if n, ok := e.(*expr.Counter); ok {
				total += n.Packets
			}
		}
	}
	return total, nil
}

// nftComment returns the comment iptables-nft gave rule r: an xt comment
// match (iptables 1.8.9, Debian 12) or the rule's user data (later
// versions).
func nftComment(r *nftables.Rule) string {
	for _, e := range r.Exprs {
		if m, ok := e.(*expr.Match); ok && m.Name == "comment" {
			if c, ok := m.Info.(*xt.Comment); ok {
				return string(*c)
			}
		}
	}
	c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return c
}

// Show lists nfsteer's chains, jumps, ip rules and routes.
func (k *Linux) Show() ([]string, error) {
	var out []string
	for _, f := range k.fams {
		for _, c := range append([]string{"PREROUTING", "POSTROUTING"}, ownChains...) {
			ok, err := f.ipt.ChainExists(table, c)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			lines, err := f.ipt.List(table, c)
			if err != nil {
				return nil, err
			}
			for _, l := range lines {
				if strings.HasPrefix(l, "-A ") && (strings.HasPrefix(c, "NFSTEER-") || strings.Contains(l, "-j NFSTEER-")) {
					out = append(out, fmt.Sprintf("%s mangle %s", f.name, l))
				}
			}
		}
		rules, err := ourRules(f.nlFam)
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			out = append(out, fmt.Sprintf("%s rule %v proto %d", f.name, fromNetlinkRule(f.version(), r), r.Protocol))
		}
		routes, err := ourRoutes(f.nlFam)
		if err != nil {
			return nil, err
		}
		names := map[int]string{}
		for _, r := range routes {
			if _, ok := names[r.LinkIndex]; !ok && r.LinkIndex != 0 {
				if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
					names[r.LinkIndex] = l.Attrs().Name
				}
			}
			out = append(out, fmt.Sprintf("%s route %s table %d proto %d", f.name, fromNetlinkRoute(r, names), r.Table, r.Protocol))
		}
	}
	ov, err := showOverlay()
	if err != nil {
		return nil, err
	}
	tags, err := showTags()
	return append(append(out, ov...), tags...), err
}

// Untagged reads the count of packets an instance host on an overlay
// dropped for arriving untagged (see [TenantTag]); 0 without an overlay.
func (k *Linux) Untagged() (uint64, error) { return tableCounter(UntaggedCounter) }

// ReversePathDrops implements [Kernel]. The kernel filters on a device
// by the higher of its own and the host-wide rp_filter, and a loose
// filter drops a packet whose source the node cannot route at all: the
// first lookup of the filter is the one `ip route get SRC` makes. IPv6
// has no such filter.
func (k *Linux) ReversePathDrops(srcs []netip.Prefix) ([]netip.Prefix, error) {
	on := false
	for _, dev := range []string{"all", OverlayDevice} {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + dev + "/rp_filter")
		if err != nil {
			return nil, fmt.Errorf("reading %s's rp_filter: %w", dev, err)
		}
		on = on || strings.TrimSpace(string(b)) != "0"
	}
	if !on {
		return nil, nil
	}
	var drops []netip.Prefix
	for _, p := range srcs {
		if !p.Addr().Is4() {
			continue
		}
		if _, err := netlink.RouteGet(net.IP(p.Addr().AsSlice())); err != nil {
			drops = append(drops, p)
		}
	}
	return drops, nil
}

func ourRules(fam int) ([]netlink.Rule, error) {
	all, err := netlink.RuleList(fam)
	if err != nil {
		return nil, fmt.Errorf("listing ip rules: %w", err)
	}
	var ours []netlink.Rule
	for _, r := range all {
		if r.Protocol == RouteProtocol {
			ours = append(ours, r)
		}
	}
	return ours, nil
}

func ourRoutes(fam int) ([]netlink.Route, error) {
	routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_UNSPEC},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	return routes, nil
}

// toNetlinkRoute is r as netlink writes it; dev is the index of r.Dev.
func toNetlinkRoute(r Route, dev int) *netlink.Route {
	dst := r.Dst
	if !dst.IsValid() {
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		if r.Via.Is4() {
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
	}
	fam := netlink.FAMILY_V6
	if dst.Addr().Is4() {
		fam = netlink.FAMILY_V4
	}
	nr := &netlink.Route{
		Family:   fam,
		Dst:      &net.IPNet{IP: net.IP(dst.Addr().AsSlice()), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
		Table:    r.Table,
		Protocol: RouteProtocol,
	}
	switch {
	case r.Unreachable:
		nr.Type = unix.RTN_UNREACHABLE
	case r.Via.IsValid():
		nr.Gw = net.IP(r.Via.AsSlice())
		if r.Dev != "" {
			nr.LinkIndex = dev
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
	default:
		nr.LinkIndex = dev
		nr.Scope = netlink.SCOPE_LINK
	}
	return nr
}

// fromNetlinkRoute is the Route h is, naming its device by names (index
// to name).
func fromNetlinkRoute(h netlink.Route, names map[int]string) Route {
	r := Route{Table: h.Table, Via: addrOf(h.Gw)}
	// A hop's default route has a next hop; a tenant's routes have a
	// destination, which may be a default one.
	switch {
	case h.Dst != nil:
		if ones, _ := h.Dst.Mask.Size(); ones > 0 || !r.Via.IsValid() {
			r.Dst = netip.PrefixFrom(addrOf(h.Dst.IP), ones)
		}
	case !r.Via.IsValid() && h.Family == netlink.FAMILY_V4:
		r.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	case !r.Via.IsValid():
		r.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	switch {
	case h.Type == unix.RTN_UNREACHABLE:
		r.Unreachable = true
	case r.Dst.IsValid() || h.Flags&int(netlink.FLAG_ONLINK) != 0:
		r.Dev = names[h.LinkIndex]
		if r.Dev == "" {
			r.Dev = fmt.Sprintf("if%d", h.LinkIndex)
		}
	}
	return r
}

func (r Route) String() string {
	dst := "default"
	if r.Dst.IsValid() {
		dst = r.Dst.String()
	}
	switch {
	case r.Unreachable:
		return "unreachable " + dst
	case r.Via.IsValid() && r.Dev != "":
		return fmt.Sprintf("%s via %s dev %s onlink", dst, r.Via, r.Dev)
	case r.Via.IsValid():
		return fmt.Sprintf("%s via %s", dst, r.Via)
	}
	return fmt.Sprintf("%s dev %s", dst, r.Dev)
}

func toNetlinkRule(fam int, r IPRule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = fam
	nr.Priority = r.Priority
	nr.Protocol = RouteProtocol
	nr.Invert = r.Invert
	nr.IifName = r.Iif
	if r.Mask != 0 {
		nr.Mark = r.Mark
		mask := r.Mask
		nr.Mask = &mask
	}
	switch r.Action {
	case Lookup:
		nr.Table = r.Table
	case Goto:
		nr.Goto = r.Target
	case Nop:
		nr.Type = frActNop
	}
	return nr
}

// frActNop is the kernel's FR_ACT_NOP: a rule that does nothing.
const frActNop = 3

func fromNetlinkRule(fam int, r netlink.Rule) IPRule {
	ir := IPRule{Family: fam, Priority: r.Priority, Invert: r.Invert, Iif: r.IifName, Mark: r.Mark}
	if r.Mask != nil {
		ir.Mask = *r.Mask
	}
	switch {
	case r.Goto >= 0:
		ir.Action, ir.Target = Goto, r.Goto
	case r.Table == 0:
		// netlink.RuleList does not report a rule's action (the
		// message's type); of nfsteer's rules, only a nop has no table
		// and no target.
		ir.Action = Nop
	default:
		ir.Table = r.Table
	}
	return ir
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

var _ chains = (*iptables.IPTables)(nil)
