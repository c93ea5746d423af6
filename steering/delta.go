package steering

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync/atomic"
)

// Delta is the change from one published version to the next when that
// change touches only tenants and the lists of instances out of new-flow
// steering: what a tenant added, a drain or a failover publish. It is
// small enough to travel in the announcement itself, so a node that holds
// the base version switches without reading, decoding or validating the
// whole map (see [Published.Apply]). A node that does not hold the base
// reads the whole document instead.
type Delta struct {
	// Version is the version the delta makes; Base, the one it applies to
	// (always Version-1).
	Version uint64 `json:"version"`
	Base    uint64 `json:"base"`
	// MapSum is the digest of the new version's map as published, which
	// lets the node recognise that map when it next reads the document.
	MapSum string `json:"map_sum"`
	// Tenants holds the tenants added or changed, whole; Removed, the
	// names of those removed.
	Tenants map[string]*Tenant `json:"tenants,omitempty"`
	Removed []string           `json:"removed,omitempty"`
	// The new version's lists, whole (they are short).
	Down      []string `json:"down,omitempty"`
	Drained   []string `json:"drained,omitempty"`
	Unhealthy []string `json:"unhealthy,omitempty"`
	Migrating []string `json:"migrating,omitempty"`
}

// NewDelta returns the delta from prev to next, or false if next changes
// more than tenants and lists (services, slots, IDs or the overlay) or does not follow
// prev directly. next must have been encoded ([Published.Encode]), which
// gives it its map digest.
func NewDelta(prev, next *Published) (*Delta, bool) {
	if prev == nil || prev.Map == nil || next.Map == nil || next.mapSum == "" ||
		next.Version != prev.Version+1 || prev.Map.Slots != next.Map.Slots ||
		!maps.Equal(prev.IDs, next.IDs) || !reflect.DeepEqual(prev.Map.Services, next.Map.Services) ||
		!reflect.DeepEqual(prev.Map.Overlay, next.Map.Overlay) {
		return nil, false
	}
	d := &Delta{Version: next.Version, Base: prev.Version, MapSum: next.mapSum,
		Down: next.Down, Drained: next.Drained, Unhealthy: next.Unhealthy, Migrating: next.Migrating}
	for name, t := range next.Map.Tenants {
		if old, ok := prev.Map.Tenants[name]; !ok || old != t && !reflect.DeepEqual(old, t) {
			if d.Tenants == nil {
				d.Tenants = map[string]*Tenant{}
			}
			d.Tenants[name] = t
		}
	}
	for name := range prev.Map.Tenants {
		if _, ok := next.Map.Tenants[name]; !ok {
			d.Removed = append(d.Removed, name)
		}
	}
	slices.Sort(d.Removed)
	return d, true
}

// Apply returns the version d makes of p, validated: the tenants d
// changes are checked on their own and against the others' prefixes, and
// everything else is p's, shared (p is not changed). It returns an error
// wrapping [ErrNotBase] if p is not d's base or was not decoded from Redis
// (the caller then reads the whole document), or one wrapping
// [ErrInvalidMap] if the change is invalid.
func (p *Published) Apply(d *Delta) (*Published, error) {
	if d.Base != p.Version || d.Version != p.Version+1 || !p.mapValid || p.index == nil {
		return nil, fmt.Errorf("%w: delta from version %d to %d, node holds %d", ErrNotBase, d.Base, d.Version, p.Version)
	}
	q := &Published{Version: d.Version, Map: p.Map, IDs: p.IDs,
		Down: d.Down, Drained: d.Drained, Unhealthy: d.Unhealthy, Migrating: d.Migrating,
		mapSum: d.MapSum, mapValid: true, index: p.index}
	var v validator
	if len(d.Tenants)+len(d.Removed) > 0 {
		var tenants map[string]*Tenant
		if spare := p.spare.tenants.Swap(nil); spare != nil {
			tenants = *spare // Prepare's copy, now this Apply's own
		} else {
			tenants = maps.Clone(p.Map.Tenants)
		}
		m := &Map{Slots: p.Map.Slots, Services: p.Map.Services, Tenants: tenants, Overlay: p.Map.Overlay}
		for i, name := range d.Removed {
			if _, ok := m.Tenants[name]; !ok {
				v.add(fmt.Sprintf("removed[%d]", i), fmt.Sprintf("no tenant %q to remove", name))
			}
			delete(m.Tenants, name)
		}
		maps.Copy(m.Tenants, d.Tenants)
		q.Map, q.index = m, m.checkChange(&v, p.Map, p.index, d)
		q.applied, q.appliedTo = d, p.Map
	}
	// The services, hence the instances and their IDs, are p's, which
	// were valid: only the lists can name an unknown instance.
	q.checkLists(&v, p.Map.hasInstance)
	if err := v.err(); err != nil {
		return nil, err
	}
	q.checked = true
	return q, nil
}

// Prepare copies p's tenants ahead of the next delta, for [Published.Apply]
// to change into the next version's instead of copying them while the
// node waits for that version: with 10,000 tenants the copy is most of a
// tenant delta's work (BenchmarkBigMap). A node calls it between
// versions. It does nothing for a version no delta applies to (not
// decoded from Redis nor made by Apply) or one already prepared. The copy
// serves one Apply. Safe for concurrent use with Apply.
func (p *Published) Prepare() {
	if !p.mapValid || p.index == nil || p.spare.tenants.Load() != nil {
		return
	}
	tenants := maps.Clone(p.Map.Tenants)
	p.spare.tenants.CompareAndSwap(nil, &tenants)
}

// spareTenants holds what [Published.Prepare] made for the next Apply.
type spareTenants struct {
	// tenants is a copy of Map.Tenants, or nil; whoever swaps it out owns
	// it and may change it.
	tenants atomic.Pointer[map[string]*Tenant]
}

// checkChange checks the tenants d adds or changes in m (whose other
// tenants were valid with index ix, the index of old) and returns m's
// index. Every tenant is checked on its own as [Map.Validate] does; each
// new prefix is checked against the others through the sorted, disjoint
// prefix index: only its neighbours there can overlap it.
func (m *Map) checkChange(v *validator, old *Map, ix *mapIndex, d *Delta) *mapIndex {
	next := &mapIndex{lacks: ix.lacks, prefixes: ix.prefixes.clone(), ingress: maps.Clone(ix.ingress), tags: maps.Clone(ix.tags),
		zoned: ix.zoned, snat: maps.Clone(ix.snat)}
	changed := slices.Sorted(maps.Keys(d.Tenants))
	// Out with the prefixes, ingress interfaces, tags and snat addresses
	// of the tenants removed or changed...
	gone := map[string]bool{}
	for _, name := range slices.Concat(d.Removed, changed) {
		t := old.Tenants[name]
		if t == nil {
			continue
		}
		gone[name] = true
		for _, s := range t.Prefixes {
			if p, err := netip.ParsePrefix(s); err == nil && t.SNAT == "" { // it was valid
				next.prefixes.remove(ownedPrefix{p: p}, name)
			}
		}
		for _, iface := range t.Ingress {
			if next.ingress[iface] == name {
				delete(next.ingress, iface)
			}
		}
		if next.tags[t.Tag] == name {
			delete(next.tags, t.Tag)
		}
		if a, err := netip.ParseAddr(t.SNAT); err == nil && next.snat[a] == name {
			delete(next.snat, a)
		}
	}
	if len(next.zoned) > 0 && len(gone) > 0 {
		next.zoned = slices.DeleteFunc(slices.Clone(next.zoned), func(op ownedPrefix) bool { return gone[op.tenant] })
	}
	// ...and in with those of the tenants added or changed, if they
	// overlap nothing they may not.
	var zoned []ownedPrefix
	for _, name := range changed {
	prefixes:
		for _, op := range m.checkTenant(v, name, ix.lacks) {
			if op.zoned {
				zoned = append(zoned, op)
				continue
			}
			pos := next.prefixes.search(op)
			before, at := next.prefixes.around(pos)
			for _, other := range [2]*ownedPrefix{before, at} {
				if other != nil && other.p.Overlaps(op.p) {
					v.overlap(op, *other)
					continue prefixes
				}
			}
			for _, other := range next.zoned {
				if other.p.Overlaps(op.p) {
					v.add(op.field, fmt.Sprintf("%s overlaps %s (%s), a tenant with a snat address: only tenants with one may share addresses", op.p, other.p, other.field))
					continue prefixes
				}
			}
			next.prefixes.insert(pos, op)
		}
	}
	if len(zoned) > 0 {
		next.zoned = slices.Concat(next.zoned, zoned)
		slices.SortFunc(next.zoned, comparePrefix)
		for _, op := range zoned {
			v.zonedOverlaps(op, next.prefixes, zoned)
		}
	}
	for _, name := range changed {
		m.claimIngress(v, name, next.ingress)
		m.claimTag(v, name, next.tags)
		m.claimSNAT(v, name, next.snat)
	}
	return next
}
