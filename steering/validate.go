package steering

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// Validate checks everything the data plane relies on and returns a
// *[ValidationError] naming each offending field, or nil.
func (m *Map) Validate() error {
	_, err := m.validate()
	return err
}

// validate is Validate, returning also the index [Published.Apply] needs
// to check a change to a few tenants without checking the whole map again.
func (m *Map) validate() (*mapIndex, error) {
	var v validator
	lacks, nodes := m.checkServices(&v)
	ix := &mapIndex{lacks: lacks}
	m.checkOverlay(&v, nodes)
	var all []ownedPrefix
	names := slices.Sorted(maps.Keys(m.Tenants))
	for _, tname := range names {
		all = append(all, m.checkTenant(&v, tname, ix.lacks)...)
	}
	plain, zoned := v.overlaps(all)
	ix.ingress = map[string]string{}
	ix.tags = map[uint16]string{}
	ix.snat = map[netip.Addr]string{}
	for _, tname := range names {
		m.claimIngress(&v, tname, ix.ingress)
		m.claimTag(&v, tname, ix.tags)
		m.claimSNAT(&v, tname, ix.snat)
	}
	ix.prefixes, ix.zoned = plain, zoned
	return ix, v.err()
}

// claimSNAT records tenant tname as the owner of its snat address in
// owner, and refuses one another tenant there has already: the server's
// replies find their tenant by it.
func (m *Map) claimSNAT(v *validator, tname string, owner map[netip.Addr]string) {
	t := m.Tenants[tname]
	if t == nil || t.SNAT == "" {
		return
	}
	a, err := netip.ParseAddr(t.SNAT)
	if err != nil {
		return // checkTenant said so
	}
	if other, taken := owner[a]; taken && other != tname {
		v.add("tenants."+tname+".snat", fmt.Sprintf("%s is tenant %s's snat address already; each tenant leaves with its own", a, other))
		return
	}
	owner[a] = tname
}

// claimIngress records tenant tname as the owner of its ingress
// interfaces in owner (interface to tenant), and refuses an interface
// that another tenant there owns already: an interface belongs to one
// tenant.
func (m *Map) claimIngress(v *validator, tname string, owner map[string]string) {
	t := m.Tenants[tname]
	if t == nil {
		return
	}
	for i, iface := range t.Ingress {
		if other, taken := owner[iface]; taken && other != tname {
			v.add(fmt.Sprintf("tenants.%s.ingress[%d]", tname, i), fmt.Sprintf("interface %q is tenant %s's ingress already; an interface belongs to one tenant", iface, other))
			continue
		}
		owner[iface] = tname
	}
}

// claimTag records tenant tname as the owner of its tag in owner, and
// refuses a tag another tenant there has already.
func (m *Map) claimTag(v *validator, tname string, owner map[uint16]string) {
	t := m.Tenants[tname]
	if t == nil || t.Tag == 0 {
		return
	}
	if other, taken := owner[t.Tag]; taken && other != tname {
		v.add("tenants."+tname+".tag", fmt.Sprintf("%d is tenant %s's tag already; a tag names one tenant", t.Tag, other))
		return
	}
	owner[t.Tag] = tname
}

// mapIndex is what validating a map learnt that validating a change to its
// tenants needs again.
type mapIndex struct {
	// lacks[svc][f] lists, sorted, the instances of svc with no address of
	// family f.
	lacks map[string]*[2][]string
	// prefixes holds every tenant prefix, sorted by address and then
	// length. In a valid map no two overlap.
	prefixes *prefixIndex
	// ingress maps each tenant's ingress interface to the tenant, and
	// tags each tenant's tag to the tenant. They are never changed: a
	// change to the map makes its own copies.
	ingress map[string]string
	tags    map[uint16]string
	// zoned holds the prefixes of the tenants with a snat address, which
	// may overlap each other's (not the others'), sorted by address and
	// then length; snat maps each snat address to its tenant. Never
	// changed, as above.
	zoned []ownedPrefix
	snat  map[netip.Addr]string
}

// nodeAddrs checks the addresses of a node (noun: "instance" or
// "gateway") at field: IP addresses, unicast, at most one per family. It
// calls each with every address that parses and its field, and returns
// them by family (the zero Addr where there is none).
func (v *validator) nodeAddrs(field, noun string, addrs Addresses, each func(afield string, a netip.Addr)) [2]netip.Addr {
	var byFam [2]netip.Addr
	if len(addrs) == 0 {
		v.add(field, noun+" has no address")
	}
	for i, s := range addrs {
		afield := fmt.Sprintf("%s[%d]", field, i)
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			v.add(afield, fmt.Sprintf("%q is not an IP address", s))
			continue
		}
		a = a.Unmap()
		if !a.IsGlobalUnicast() && !a.IsPrivate() {
			v.add(afield, fmt.Sprintf("%s is not a unicast address", a))
		}
		f := familyIndex(a)
		if byFam[f].IsValid() {
			v.add(afield, fmt.Sprintf("second %s address; each %s has at most one per family", familyName(a), noun))
		}
		byFam[f] = a
		each(afield, a)
	}
	return byFam
}

// nodeSet is what checking the services learnt of the instances that
// checking the overlay needs again: their names, each one's field and
// well-formed addresses by family, and the field of each address's owner.
type nodeSet struct {
	names map[string]bool
	nodes []checkedNode
	owner map[netip.Addr]string
}

// checkedNode is a node's field in the map and its addresses by family.
type checkedNode struct {
	field string
	addrs [2]netip.Addr
}

// checkServices checks the slot count and the services, and returns, per
// service and family, the instances without an address of that family
// (computed once here, not per tenant), and the instances as nodes.
func (m *Map) checkServices(v *validator) (map[string]*[2][]string, *nodeSet) {
	v.slots(m.Slots)
	ns := &nodeSet{names: map[string]bool{}, owner: map[netip.Addr]string{}}
	addrOwner := ns.owner
	instOwner := map[string]string{}
	lacks := map[string]*[2][]string{}
	total := 0
	for _, sname := range slices.Sorted(maps.Keys(m.Services)) {
		svc := m.Services[sname]
		field := "services." + sname
		v.name(field, sname)
		if svc == nil {
			v.add(field, "is empty")
			continue
		}
		switch svc.Function {
		case "", FunctionForward, FunctionFirewall:
		default:
			v.add(field+".function", fmt.Sprintf("unknown function %q (known: %s, %s)", svc.Function, FunctionForward, FunctionFirewall))
		}
		if len(svc.Instances) == 0 {
			v.add(field+".instances", "service has no instances")
		}
		for _, iname := range slices.Sorted(maps.Keys(svc.Instances)) {
			ifield := field + ".instances." + iname
			v.name(ifield, iname)
			if other, dup := instOwner[iname]; dup {
				v.add(ifield, fmt.Sprintf("instance name is also used in service %q (instance names are node names and must be unique)", other))
			}
			instOwner[iname] = sname
			total++
			byFam := v.nodeAddrs(ifield, "instance", svc.Instances[iname], func(afield string, a netip.Addr) {
				if owner, dup := addrOwner[a]; dup {
					v.add(afield, fmt.Sprintf("duplicate instance address %s (also %s)", a, owner))
				}
				addrOwner[a] = ifield
			})
			ns.names[iname] = true
			ns.nodes = append(ns.nodes, checkedNode{ifield, byFam})
			for f, a := range byFam {
				if !a.IsValid() {
					if lacks[sname] == nil {
						lacks[sname] = &[2][]string{}
					}
					lacks[sname][f] = append(lacks[sname][f], iname)
				}
			}
		}
	}
	if total > MaxInstances {
		v.add("services", fmt.Sprintf("%d instances; at most %d fit in a node's mark", total, MaxInstances))
	}
	return lacks, ns
}

// checkTenant checks tenant tname of m on its own (everything but overlaps
// with other tenants) and returns its well-formed prefixes.
func (m *Map) checkTenant(v *validator, tname string, lacks map[string]*[2][]string) []ownedPrefix {
	t := m.Tenants[tname]
	field := "tenants." + tname
	own, fam := checkTenantAlone(v, tname, t)
	if t == nil {
		return nil
	}
	if t.Tag == 0 && m.Overlay != nil {
		v.add(field+".tag", fmt.Sprintf("tenant has no tag; with an overlay every tenant needs one, 1 to %d", MaxTag))
	}
	if t.SNAT != "" && m.Overlay == nil {
		v.add(field+".snat", "a tenant with a snat address needs the map's overlay: instance hosts tell it apart by its tag, not by its addresses")
	}
	for i, sname := range t.Chain {
		cfield := fmt.Sprintf("%s.chain[%d]", field, i)
		svc, ok := m.Services[sname]
		if !ok {
			v.add(cfield, fmt.Sprintf("unknown service %q", sname))
			continue
		}
		if svc == nil {
			continue
		}
		for f, need := range fam {
			if !need || lacks[sname] == nil {
				continue
			}
			for _, iname := range lacks[sname][f] {
				v.add(cfield, fmt.Sprintf("tenant has %s prefixes but instance %q of service %q has no %s address", famNames[f], iname, sname, famNames[f]))
			}
		}
	}
	// Only a firewall enforces allow rules: on a chain without one they
	// would read as a policy that nothing applies.
	if len(t.Allow) > 0 && !slices.ContainsFunc(t.Chain, func(s string) bool {
		svc := m.Services[s]
		return svc == nil || svc.Function == FunctionFirewall
	}) {
		v.add(field+".allow", fmt.Sprintf("allow rules, but no service of the chain %v is a firewall: only a firewall applies them; add one to the chain or remove the rules", t.Chain))
	}
	return own
}

// CheckTenant checks tenant t, named name, by itself: what [Map.Validate]
// would refuse of it in any map (its name, prefixes, addresses, interface
// names, tag, chain's length and repeats, allow rules). It returns a
// *[ValidationError] or nil. What depends on the rest of a map (services
// the chain names, overlaps with other tenants, the overlay) is left to
// Validate: a tool checks its input with it before it reads the map.
func CheckTenant(name string, t Tenant) error {
	var v validator
	checkTenantAlone(&v, name, &t)
	return v.err()
}

// CheckService checks service s, named name, by itself: what
// [Map.Validate] would refuse of it in any map (its name, function,
// instances' names and addresses). It returns a *[ValidationError] or nil.
// Names and addresses shared with other services are left to Validate.
func CheckService(name string, s Service) error {
	var v validator
	(&Map{Services: map[string]*Service{name: &s}}).checkServices(&v)
	return v.err()
}

// checkTenantAlone is CheckTenant into v; it returns the tenant's
// well-formed prefixes and the families they are of.
func checkTenantAlone(v *validator, tname string, t *Tenant) (own []ownedPrefix, fam [2]bool) {
	field := "tenants." + tname
	v.name(field, tname)
	if t == nil {
		v.add(field, "is empty")
		return nil, fam
	}
	if len(t.Prefixes) == 0 {
		v.add(field+".prefixes", "tenant has no prefixes")
	}
	if t.Tag > MaxTag {
		v.add(field+".tag", fmt.Sprintf("%d: want 1 to %d", t.Tag, MaxTag))
	}
	for i, s := range t.Prefixes {
		pfield := fmt.Sprintf("%s.prefixes[%d]", field, i)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			v.add(pfield, fmt.Sprintf("%q is not a CIDR prefix", s))
			continue
		}
		if p.Addr().Is4In6() {
			v.add(pfield, fmt.Sprintf("%s: write IPv4 prefixes in dotted form", p))
			continue
		}
		if p != p.Masked() {
			v.add(pfield, fmt.Sprintf("%s has host bits set (did you mean %s?)", p, p.Masked()))
			continue
		}
		fam[familyIndex(p.Addr())] = true
		own = append(own, ownedPrefix{p: p, field: pfield, tenant: tname, zoned: t.SNAT != ""})
	}
	if t.SNAT != "" {
		checkSNAT(v, field, t, fam)
	} else if t.Via != "" {
		v.add(field+".via", "only a tenant with a snat address has a router of its own: the others' replies follow the gateway's main routing table")
	}
	seenIface := map[string]bool{}
	for i, iface := range t.Ingress {
		ifield := fmt.Sprintf("%s.ingress[%d]", field, i)
		switch {
		case iface == "" || len(iface) > 15 || strings.ContainsAny(iface, " /:\t"):
			v.add(ifield, fmt.Sprintf("%q is not an interface name (1 to 15 characters, no spaces, '/' or ':')", iface))
		case seenIface[iface]:
			v.add(ifield, fmt.Sprintf("interface %q appears twice", iface))
		}
		seenIface[iface] = true
	}
	if len(t.Chain) == 0 {
		v.add(field+".chain", "chain is empty")
	}
	if len(t.Chain) > MaxChain {
		v.add(field+".chain", fmt.Sprintf("%d services; a chain has at most %d", len(t.Chain), MaxChain))
	}
	for i, a := range t.Allow {
		compileAllow(v, fmt.Sprintf("%s.allow[%d]", field, i), a)
	}
	seen := map[string]bool{}
	for i, sname := range t.Chain {
		if seen[sname] {
			v.add(fmt.Sprintf("%s.chain[%d]", field, i), fmt.Sprintf("service %q appears twice in the chain", sname))
		}
		seen[sname] = true
	}
	return own, fam
}

// checkSNAT checks the snat address of tenant t (at field), whose
// prefixes are of the families fam says: an address of their one family,
// and what telling the tenant apart by where it enters needs of the tenant,
// one ingress interface (and of the map, an overlay: checkTenant).
func checkSNAT(v *validator, field string, t *Tenant, fam [2]bool) {
	checkTenantAddr(v, field+".snat", t.SNAT, fam, false, ": their flows would leave with their own addresses")
	if t.Via != "" {
		checkTenantAddr(v, field+".via", t.Via, fam, true, "")
	}
	if len(t.Ingress) != 1 {
		// The tag on the service network has room for the tenant and the
		// gateway, not for the interface: replies leave by the tenant's.
		v.add(field+".snat", fmt.Sprintf("a tenant with a snat address has exactly one ingress interface, not %d", len(t.Ingress)))
	}
}

// checkTenantAddr checks s, an address of a tenant (at field) whose
// prefixes are of the families fam says: an IP address of their one
// family, with no zone, and unicast (link-local too with linkLocal). why
// ends the complaint of a family that is not theirs.
func checkTenantAddr(v *validator, field, s string, fam [2]bool, linkLocal bool, why string) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		v.add(field, fmt.Sprintf("%q is not an IP address", s))
	case a.Is4In6() || a.Zone() != "":
		v.add(field, fmt.Sprintf("%s: write an IPv4 address in dotted form, with no zone", a))
	case !a.IsGlobalUnicast() && !a.IsPrivate() && !(linkLocal && a.IsLinkLocalUnicast()):
		v.add(field, fmt.Sprintf("%s is not a unicast address", a))
	case fam[1-familyIndex(a)]:
		v.add(field, fmt.Sprintf("%s is %s, but the tenant has %s prefixes%s", a, familyName(a), famNames[1-familyIndex(a)], why))
	}
}

type ownedPrefix struct {
	p      netip.Prefix
	field  string
	tenant string
	// zoned: the tenant has a snat address, so the prefix may overlap
	// those of other such tenants.
	zoned bool
}

type validator struct{ problems []FieldError }

func (v *validator) add(field, reason string) {
	v.problems = append(v.problems, FieldError{Field: field, Reason: reason})
}

func (v *validator) err() error {
	if len(v.problems) == 0 {
		return nil
	}
	return &ValidationError{Problems: v.problems}
}

func (v *validator) slots(n int) {
	if n == 0 {
		return
	}
	if n < 1 || n > MaxSlots || n&(n-1) != 0 {
		v.add("slots", fmt.Sprintf("%d is not a power of two between 1 and %d", n, MaxSlots))
	}
}

// name refuses names that would be ambiguous in logs, keys and CLI output.
func (v *validator) name(field, name string) {
	if name == "" || len(name) > 64 || strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) >= 0 {
		v.add(field, fmt.Sprintf("name %q must be 1-64 letters, digits, '-', '_' or '.'", name))
	}
}

// overlaps reports every pair of overlapping prefixes, except two of
// different tenants with snat addresses (zoned), which are told apart by
// where they enter. It returns the others (plain), indexed, and the
// zoned ones, sorted. Among plain prefixes, which may not overlap, any overlap
// shows up between neighbours after sorting by address and then length,
// because a prefix's addresses are contiguous.
func (v *validator) overlaps(all []ownedPrefix) (plain *prefixIndex, zoned []ownedPrefix) {
	slices.SortFunc(all, comparePrefix)
	var others []ownedPrefix
	for _, op := range all {
		if op.zoned {
			zoned = append(zoned, op)
		} else {
			others = append(others, op)
		}
	}
	for i := 1; i < len(others); i++ {
		if others[i-1].p.Overlaps(others[i].p) {
			v.overlap(others[i], others[i-1])
		}
	}
	plain = newPrefixIndex(others)
	for _, op := range zoned {
		v.zonedOverlaps(op, plain, zoned)
	}
	return plain, zoned
}

// zonedOverlaps reports the prefixes op (a zoned tenant's) overlaps: any
// in plain (disjoint, so only op's neighbours there can), and its own
// tenant's others in zoned.
func (v *validator) zonedOverlaps(op ownedPrefix, plain *prefixIndex, zoned []ownedPrefix) {
	before, at := plain.around(plain.search(op))
	for _, other := range [2]*ownedPrefix{before, at} {
		if other != nil && other.p.Overlaps(op.p) {
			v.add(op.field, fmt.Sprintf("%s overlaps %s (%s), a tenant without a snat address: only tenants with one may share addresses", op.p, other.p, other.field))
		}
	}
	for _, other := range zoned {
		if other.tenant == op.tenant && other.field < op.field && other.p.Overlaps(op.p) {
			v.overlap(op, other)
		}
	}
}

// overlap reports that p overlaps other.
func (v *validator) overlap(p, other ownedPrefix) {
	v.add(p.field, fmt.Sprintf("%s overlaps %s (%s)", p.p, other.p, other.field))
}

// comparePrefix orders prefixes by address and then length.
func comparePrefix(a, b ownedPrefix) int {
	if c := a.p.Addr().Compare(b.p.Addr()); c != 0 {
		return c
	}
	return a.p.Bits() - b.p.Bits()
}

var famNames = [2]string{"IPv4", "IPv6"}

func familyIndex(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func familyName(a netip.Addr) string { return famNames[familyIndex(a)] }
