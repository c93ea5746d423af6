package steering

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
)

// Table is a compiled, immutable service map: what the packet path reads.
// It is safe for concurrent use. A new map is a new Table, swapped in whole.
type Table struct {
	version   uint64
	slots     uint32
	tenants   []TenantInfo
	services  []ServiceInfo
	instances []Instance
	byName    map[string]int
	byID      []int32 // instance index by ID, -1 where none
	// Tenants by index (see tenants.go: entries of removed tenants stay,
	// unreachable), how many of them are in the map, and whether this
	// table may append to the backing array.
	live  int
	arena *tenantArena
	names overlay[string]
	tags  overlay[uint16]
	// Tenant lookup: for each family, the distinct prefix lengths present,
	// longest first, and a map from masked prefix to tenant index. A lookup
	// masks the address once per length, which allocates nothing.
	lens     [2][]int
	prefixes overlay[netip.Prefix]
	// m is the map the table was compiled from, ids and out the IDs and
	// lists of instances out of new-flow steering (down, drained,
	// unhealthy, migrating) it was compiled with: CompileNext compares
	// them to reuse what did not change.
	m   *Map
	ids map[string]uint16
	out [4][]string
	// gateways says which gateway numbers the overlay has.
	gateways [MaxGateways + 1]bool
}

// TenantInfo is a compiled tenant.
type TenantInfo struct {
	Name string
	// Ingress is the gateway interfaces the tenant's traffic enters by
	// (none: it is told apart by its prefixes alone).
	Ingress  []string
	Prefixes []netip.Prefix
	// Chain holds indexes into the table's services, in chain order.
	Chain []int
	Allow []AllowRule
	// Tag is the tenant's number on the overlay (0: none).
	Tag uint16
	// SNAT is the address its flows leave with at the end of its chain
	// (none: their own). A tenant with one is zoned: it may share
	// addresses with other zoned tenants, so it is told apart by where it
	// enters and by its tag, never by its addresses (see [Table.TenantOf]).
	SNAT netip.Addr
	// Via is the router on its ingress link that a zoned tenant's
	// prefixes sit behind (none: they are on the link).
	Via netip.Addr
	// def is the definition compiled, which a later version reuses the
	// compiled tenant for while it holds the same one.
	def *Tenant
}

// ServiceInfo is a compiled service.
type ServiceInfo struct {
	Name     string
	Function string
	// Instances holds indexes into the table's instances, sorted by name.
	Instances []int
	// Roles has one entry per slot.
	Roles []Roles
	// skip is which instances held no role when Roles was computed.
	skip []bool
}

// Instance is one service instance. ID is its number, from the published
// map's IDs (stable across versions).
type Instance struct {
	Name    string
	Service int
	ID      uint16
	V4, V6  netip.Addr
	// Down: the controller found the instance dead. Drained: an operator
	// took it out of new-flow steering. Unhealthy: its health score is
	// below the controller's threshold. Any of them: it holds no role.
	Down, Drained, Unhealthy bool
	// Migrating: drained, and its established flows move off it too.
	Migrating bool
}

// Out reports whether the instance holds no role: new flows avoid it.
func (in *Instance) Out() bool { return in.Down || in.Drained || in.Unhealthy || in.Migrating }

// Leaving reports whether established flows move off the instance too:
// it is down, or migrating.
func (in *Instance) Leaving() bool { return in.Down || in.Migrating }

// States names every reason the instance holds no role ("down",
// "migrating", "drained", "unhealthy"), or is ["up"].
func (in *Instance) States() []string {
	var out []string
	for _, s := range []struct {
		on   bool
		name string
	}{{in.Down, "down"}, {in.Migrating, "migrating"}, {in.Drained, "drained"}, {in.Unhealthy, "unhealthy"}} {
		if s.on {
			out = append(out, s.name)
		}
	}
	if out == nil {
		out = []string{"up"}
	}
	return out
}

// Fallback reports whether every instance of the service is out (down,
// drained, unhealthy or migrating). Its roles then fall back to all its
// instances, out or not: a tenant's flows must cross the service, and
// dropping them is a policy nfsteer does not make up, so they go to
// instances that may be dead. `nfsteer instance drain` and `remove`
// refuse to cause this without --force, and trace, instance list and
// status show it.
func (s *ServiceInfo) Fallback() bool { return len(s.skip) > 0 && !slices.Contains(s.skip, false) }

// State names why an instance holds no role, or "up".
func (in *Instance) State() string {
	switch {
	case in.Down:
		return "down"
	case in.Migrating:
		return "migrating"
	case in.Drained:
		return "drained"
	case in.Unhealthy:
		return "unhealthy"
	}
	return "up"
}

// Addr returns the instance's address in the family of a, if it has one.
func (in *Instance) Addr(is4 bool) (netip.Addr, bool) {
	if is4 {
		return in.V4, in.V4.IsValid()
	}
	return in.V6, in.V6.IsValid()
}

// Compile validates m and builds its Table, numbering instances afresh
// (see [Local]). Nodes sharing a map through Redis use [CompilePublished].
func Compile(m *Map) (*Table, error) {
	p, err := Local(m)
	if err != nil {
		return nil, err
	}
	return CompilePublished(p)
}

// CompilePublished validates p and builds its Table.
func CompilePublished(p *Published) (*Table, error) { return CompileNext(nil, p) }

// CompileNext is CompilePublished for the version after prev (which may be
// nil). What p shares with prev is reused, not recomputed: the tenants
// when the map is the same (only IDs or the instance lists changed), every
// tenant whose definition is the same object as before when only tenants
// changed (see [Published.Apply]), and a service's roles when its
// instances and which of them are out are the same. When only which
// instances are out changed, roles are updated, not ranked afresh (see
// updateRoles): a failover costs a few weights per slot of one service.
// prev is not changed; tables share only what they never change.
func CompileNext(prev *Table, p *Published) (*Table, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	m := p.Map
	same := prev != nil && prev.m == m
	sameServices := same || prev != nil && sharesServices(prev.m, m)
	t := &Table{m: m, version: p.Version, slots: uint32(m.SlotCount()), ids: p.IDs}
	for i, l := range p.lists() {
		t.out[i] = *l.names
	}
	if m.Overlay != nil {
		for name := range m.Overlay.Gateways {
			t.gateways[GatewayNumber(p.IDs[name])] = true
		}
		t.gateways[0] = false
	}
	if sameServices && sameMap(prev.ids, p.IDs) {
		t.instancesAfter(prev)
	} else {
		t.compileInstances(p, prev, sameServices)
	}
	svcIndex := make(map[string]int, len(t.services))
	for i, si := range t.services {
		svcIndex[si.Name] = i
	}
	switch {
	case same:
		t.tenants, t.live, t.arena, t.names, t.tags, t.prefixes, t.lens = prev.tenants, prev.live, prev.arena, prev.names, prev.tags, prev.prefixes, prev.lens
	case sameServices && p.applied != nil && prev.m == p.appliedTo && t.tenantsDelta(prev, p.applied, svcIndex):
	case sameServices:
		t.tenantsFresh(prev, svcIndex)
	default:
		t.tenantsFresh(nil, svcIndex)
	}
	return t, nil
}

// compileInstances builds t's services and instances from p, reusing a
// service's roles from prev (which may be nil) when its instances and
// which of them are out are the same, and updating them when only which
// are out changed (sameServices).
func (t *Table) compileInstances(p *Published, prev *Table, sameServices bool) {
	m := p.Map
	t.byName = map[string]int{}
	t.byID = make([]int32, MaxID+1)
	for i := range t.byID {
		t.byID[i] = -1
	}
	for _, sname := range slices.Sorted(maps.Keys(m.Services)) {
		svc := m.Services[sname]
		si := ServiceInfo{Name: sname, Function: svc.FunctionName()}
		names := slices.Sorted(maps.Keys(svc.Instances))
		skip := make([]bool, len(names))
		for i, iname := range names {
			in := Instance{Name: iname, Service: len(t.services), ID: p.IDs[iname],
				Down: slices.Contains(p.Down, iname), Drained: slices.Contains(p.Drained, iname),
				Unhealthy: slices.Contains(p.Unhealthy, iname), Migrating: slices.Contains(p.Migrating, iname)}
			skip[i] = in.Out()
			for _, s := range svc.Instances[iname] {
				a := netip.MustParseAddr(s).Unmap() // validated above
				if a.Is4() {
					in.V4 = a
				} else {
					in.V6 = a
				}
			}
			t.byName[iname] = len(t.instances)
			t.byID[in.ID] = int32(len(t.instances))
			si.Instances = append(si.Instances, len(t.instances))
			t.instances = append(t.instances, in)
		}
		si.skip = skip
		switch {
		case !sameServices:
			si.Roles = assignRoles(sname, names, skip, int(t.slots))
		case slices.Equal(skip, prev.services[len(t.services)].skip):
			si.Roles = prev.services[len(t.services)].Roles
		default:
			ps := &prev.services[len(t.services)]
			si.Roles = updateRoles(ps.Roles, sname, names, ps.skip, skip)
		}
		t.services = append(t.services, si)
	}
}

// instancesAfter builds t's services and instances from prev's, whose
// services and IDs t's map shares: only which instances are out can
// differ. Unchanged, they are prev's; otherwise the instances are copied
// with their new states, and the roles of services whose out instances
// changed are updated.
func (t *Table) instancesAfter(prev *Table) {
	t.byName, t.byID = prev.byName, prev.byID
	if listsEqual(t.out, prev.out) {
		t.instances, t.services = prev.instances, prev.services
		return
	}
	t.instances = slices.Clone(prev.instances)
	for i := range t.instances {
		in := &t.instances[i]
		in.Down, in.Drained, in.Unhealthy, in.Migrating = false, false, false, false
	}
	for l, names := range t.out { // in the order of Published.lists
		for _, name := range names {
			in := &t.instances[t.byName[name]] // validated: every name is an instance
			*[...]*bool{&in.Down, &in.Drained, &in.Unhealthy, &in.Migrating}[l] = true
		}
	}
	t.services = slices.Clone(prev.services)
	for s := range t.services {
		si := &t.services[s]
		skip := make([]bool, len(si.Instances))
		for k, ii := range si.Instances {
			skip[k] = t.instances[ii].Out()
		}
		if !slices.Equal(skip, si.skip) {
			names := make([]string, len(si.Instances))
			for k, ii := range si.Instances {
				names[k] = t.instances[ii].Name
			}
			si.Roles = updateRoles(si.Roles, si.Name, names, si.skip, skip)
		}
		si.skip = skip
	}
}

func listsEqual(a, b [4][]string) bool {
	for i := range a {
		if !slices.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// sameMap reports whether a and b are the very same map object.
func sameMap[K comparable, V any](a, b map[K]V) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// sharesServices reports whether a and b have the same slot count and
// the very same services (one map object, as [Published.Apply] leaves
// them): a Map is never changed once compiled, so the same object means
// the same services.
func sharesServices(a, b *Map) bool {
	return a.Slots == b.Slots && reflect.ValueOf(a.Services).UnsafePointer() == reflect.ValueOf(b.Services).UnsafePointer()
}

// compileTenant compiles a validated tenant.
func compileTenant(name string, tm *Tenant, svcIndex map[string]int) TenantInfo {
	ti := TenantInfo{Name: name, Ingress: tm.Ingress, Tag: tm.Tag, def: tm}
	if tm.SNAT != "" {
		ti.SNAT = netip.MustParseAddr(tm.SNAT)
	}
	if tm.Via != "" {
		ti.Via = netip.MustParseAddr(tm.Via)
	}
	for _, s := range tm.Prefixes {
		ti.Prefixes = append(ti.Prefixes, netip.MustParsePrefix(s))
	}
	for _, sname := range tm.Chain {
		ti.Chain = append(ti.Chain, svcIndex[sname])
	}
	var v validator
	for i, a := range tm.Allow {
		ti.Allow = append(ti.Allow, compileAllow(&v, fmt.Sprint(i), a))
	}
	return ti
}

// Version returns the version of the published map the table was compiled
// from (0 for a map read from a file).
func (t *Table) Version() uint64 { return t.version }

// Slots returns the number of affinity slots.
func (t *Table) Slots() uint32 { return t.slots }

// SlotOf returns the slot of an affinity code: the code modulo the number
// of slots, which is a power of two.
func (t *Table) SlotOf(code uint32) uint32 { return code & (t.slots - 1) }

// Instances returns every instance, in order of service name and then
// instance name. The slice must not be modified.
func (t *Table) Instances() []Instance { return t.instances }

// Services returns every service. The slice must not be modified.
func (t *Table) Services() []ServiceInfo { return t.services }

// Tenants returns the tenants by index, as [Table.TenantOf] and
// [Table.TenantByName] give it. The slice may also hold entries of tenants
// a later version removed, which no lookup reaches: to list the map's
// tenants use [Table.LiveTenants]. The slice must not be modified.
func (t *Table) Tenants() []TenantInfo { return t.tenants }

// TenantCount returns the number of tenants in the map.
func (t *Table) TenantCount() int { return t.live }

// SameInstances reports whether t has the very instances of u, with the
// same IDs and addresses (which of them are out aside), and the same
// overlay: t was compiled, by CompileNext, from u's services and IDs, and
// the nodes' tunnels are u's.
func (t *Table) SameInstances(u *Table) bool {
	return u != nil && len(t.byID) > 0 && len(u.byID) > 0 && &t.byID[0] == &u.byID[0] &&
		(t.m.Overlay == u.m.Overlay || reflect.DeepEqual(t.m.Overlay, u.m.Overlay))
}

// SameTenants reports whether t has u's tenants, shared whole: t was
// compiled, by CompileNext, from u's very map, and only which instances
// are out, or their IDs, changed (a failover, a drain).
func (t *Table) SameTenants(u *Table) bool { return u != nil && t.m == u.m }

// InstanceByName returns the instance called name.
func (t *Table) InstanceByName(name string) (*Instance, bool) {
	i, ok := t.byName[name]
	if !ok {
		return nil, false
	}
	return &t.instances[i], true
}

// InstanceByID returns the instance numbered id.
func (t *Table) InstanceByID(id uint16) (*Instance, bool) {
	if int(id) >= len(t.byID) || t.byID[id] < 0 {
		return nil, false
	}
	return &t.instances[t.byID[id]], true
}

// TenantOf returns the index of the tenant whose prefixes hold a, or -1.
// Zoned tenants' prefixes are not looked up: they may be several
// tenants'.
func (t *Table) TenantOf(a netip.Addr) int {
	a = a.Unmap()
	for _, bits := range t.lens[familyIndex(a)] {
		p, _ := a.Prefix(bits)
		if i, ok := t.prefixes.get(p); ok {
			return int(i)
		}
	}
	return -1
}

// RolesFor returns which instances of service svc hold the primary and
// secondary roles for slot.
func (t *Table) RolesFor(svc int, slot uint32) (primary, secondary *Instance) {
	s := &t.services[svc]
	r := s.Roles[slot%t.slots]
	if r.Primary != NoInstance {
		primary = &t.instances[s.Instances[r.Primary]]
	}
	if r.Secondary != NoInstance {
		secondary = &t.instances[s.Instances[r.Secondary]]
	}
	return primary, secondary
}

// Node says who is deciding: a gateway, or the host of one instance.
type Node struct {
	// Instance is the index of the node's instance in the table, or -1 for
	// a gateway.
	Instance int
}

// NodeFor returns the role of the node called name on t: the instance of
// that name, or a gateway.
func (t *Table) NodeFor(name string) Node {
	if i, ok := t.byName[name]; ok {
		return Node{Instance: i}
	}
	return Node{Instance: -1}
}

// Kind is what a decision tells the node to do with a new flow.
type Kind uint8

// Decision kinds.
const (
	// NoTenant: neither address belongs to a tenant; route normally.
	NoTenant Kind = iota
	// EndOfChain: this node is the last service of the chain in this
	// direction; route normally.
	EndOfChain
	// Steer: send the flow to Decision.Instance.
	Steer
	// NotInChain: this node's service is not in the tenant's chain (a
	// misrouted packet); route normally.
	NotInChain
	// NoAddress: the next instance has no address of the flow's family.
	// Validation prevents it; kept so the packet path never guesses.
	NoAddress
)

var kindNames = [...]string{"no-tenant", "end-of-chain", "steer", "not-in-chain", "no-address"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Pins records, for each position of a tenant's chain, the ID of the
// instance a flow was given there (0: none yet). A flow keeps its pins for
// its whole life, whatever later maps say.
type Pins [MaxChain]uint16

// Decision is the outcome of [Table.Decide].
type Decision struct {
	Kind    Kind
	Tenant  int  // index into Tenants, or -1
	Reverse bool // the packet travels the chain backwards (towards the tenant)
	Code    uint32
	Slot    uint32
	// Hop is the position in the tenant's chain of the next service.
	Hop int
	// Instance is the next hop when Kind is Steer.
	Instance *Instance
}

// Decide tells node n what to do with the first packet of f in one
// direction. reply says the packet belongs to the reply direction of its
// connection as the kernel tracks it; it breaks the tie when both addresses
// belong to tenants, and is otherwise only a hint: a packet whose source
// belongs to a tenant travels the chain forwards, one whose destination
// does travels it backwards.
//
// pins, when not nil, are the flow's earlier choices; a pinned instance
// still in the table wins over the slot's current primary.
//
// Decide allocates nothing.
func (t *Table) Decide(n Node, f *Flow, reply bool, pins *Pins) Decision {
	d := Decision{Tenant: -1}
	d.Tenant, d.Reverse = t.tenantFor(f, reply)
	if d.Tenant < 0 {
		return d
	}
	return t.decideFor(n, f, d, pins)
}

// tenantFor returns the tenant Decide steers f's packet for, by its
// addresses (-1: none), and whether the packet travels the tenant's chain
// backwards.
func (t *Table) tenantFor(f *Flow, reply bool) (tenant int, reverse bool) {
	src, dst := t.TenantOf(f.Src), t.TenantOf(f.Dst)
	switch {
	case src >= 0 && (dst < 0 || !reply):
		return src, false
	case dst >= 0:
		return dst, true
	}
	return -1, false
}

// TagOf returns the tag of the tenant Decide steers f's packet for (0:
// none, or a tenant without a tag). It allocates nothing.
func (t *Table) TagOf(f *Flow, reply bool) uint16 {
	if ti, _ := t.tenantFor(f, reply); ti >= 0 {
		return t.tenants[ti].Tag
	}
	return 0
}

// DecideTagged is Decide for a packet whose tenant the overlay's tag names
// (tenant, an index; -1: none): the tenant is not looked up from the
// addresses. They only say which way the packet travels the chain: the one
// in the tenant's prefixes is the tenant's side. A packet neither of whose
// addresses is the tenant's has no tenant. It allocates nothing.
func (t *Table) DecideTagged(n Node, f *Flow, tenant int, reply bool, pins *Pins) Decision {
	d := Decision{Tenant: -1}
	if tenant < 0 || tenant >= len(t.tenants) {
		return d
	}
	own := func(a netip.Addr) bool {
		a = a.Unmap()
		for _, p := range t.tenants[tenant].Prefixes {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	src, dst := own(f.Src), own(f.Dst)
	switch {
	case src && (!dst || !reply):
		d.Tenant = tenant
	case dst:
		d.Tenant, d.Reverse = tenant, true
	default:
		return d
	}
	return t.decideFor(n, f, d, pins)
}

// decideFor completes d, whose tenant and direction are known, for node n.
func (t *Table) decideFor(n Node, f *Flow, d Decision, pins *Pins) Decision {
	chain := t.tenants[d.Tenant].Chain
	d.Code = AffinityCode(f)
	d.Slot = t.SlotOf(d.Code)

	// Position of this node in the chain, in travel order.
	pos := -1
	if n.Instance >= 0 {
		svc := t.instances[n.Instance].Service
		pos = slices.Index(chain, svc)
		if pos < 0 {
			d.Kind = NotInChain
			return d
		}
	}
	var next int
	if d.Reverse {
		if pos < 0 {
			next = len(chain) - 1
		} else {
			next = pos - 1
		}
	} else {
		next = pos + 1
	}
	if next < 0 || next >= len(chain) {
		d.Kind = EndOfChain
		return d
	}
	d.Hop = next
	var in *Instance
	if pins != nil && pins[next] != 0 {
		if p, ok := t.InstanceByID(pins[next]); ok && p.Service == chain[next] {
			in = p
		}
	}
	if in == nil {
		in, _ = t.RolesFor(chain[next], d.Slot)
	}
	d.Instance = in
	if _, ok := in.Addr(f.Dst.Unmap().Is4()); !ok {
		d.Kind = NoAddress
		return d
	}
	d.Kind = Steer
	return d
}

// Zoned reports whether the tenant is told apart by where it enters and
// its tag alone (it has a snat address).
func (ti *TenantInfo) Zoned() bool { return ti.SNAT.IsValid() }

// GatewayID returns the ID of the overlay's gateway called name, or 0.
func (t *Table) GatewayID(name string) uint16 {
	if o := t.m.Overlay; o != nil {
		if _, ok := o.Gateways[name]; ok {
			return t.ids[name]
		}
	}
	return 0
}

// HasGateway reports whether the overlay has a gateway numbered n (see
// [GatewayNumber]). It allocates nothing.
func (t *Table) HasGateway(n uint16) bool { return n >= 1 && n <= MaxGateways && t.gateways[n] }

// PinsFor returns the instances currently holding the primary role for slot
// along tenant's whole chain.
func (t *Table) PinsFor(tenant int, slot uint32) Pins {
	var p Pins
	for i, svc := range t.tenants[tenant].Chain {
		in, _ := t.RolesFor(svc, slot)
		p[i] = in.ID
	}
	return p
}

// ChainPos returns the position of service svc in the tenant's chain, or
// -1.
func (ti *TenantInfo) ChainPos(svc int) int { return slices.Index(ti.Chain, svc) }

// FirstFirewall returns the index of the first service of the tenant's
// chain whose function is FunctionFirewall, or -1 if the chain has none.
// That service's instances admit the tenant's new flows, and they create
// the sessions of its TCP connections in Redis (see the agent's roles).
func (t *Table) FirstFirewall(tenant int) int {
	for _, svc := range t.tenants[tenant].Chain {
		if t.services[svc].Function == FunctionFirewall {
			return svc
		}
	}
	return -1
}

// ServiceByName returns the index of the service called name, or -1.
func (t *Table) ServiceByName(name string) int {
	return slices.IndexFunc(t.services, func(s ServiceInfo) bool { return s.Name == name })
}

// TenantByName returns the index of the tenant called name, or -1.
func (t *Table) TenantByName(name string) int {
	if i, ok := t.names.get(name); ok {
		return int(i)
	}
	return -1
}

// TenantByTag returns the index of the tenant whose tag is tag, or -1. It
// allocates nothing.
func (t *Table) TenantByTag(tag uint16) int {
	if i, ok := t.tags.get(tag); ok && tag != 0 {
		return int(i)
	}
	return -1
}
