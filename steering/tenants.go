package steering

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// This file holds a Table's tenants in a form the next version can change
// a few of without copying the rest: a delta that adds one tenant to a map
// of 10,000 used to rebuild the tenant list and its prefix and name
// lookups whole (about 1.5 MB and 2 ms per node, then the collection of
// it), which was most of a node's switch.
//
// A tenant keeps its index from version to version: new and changed
// tenants are appended, and a removed tenant's entry stays where it was,
// reachable from no lookup. Lookups are an overlay: a base map shared by
// the versions built on it, and a small map of this version's changes to
// it, merged into a new base once it grows.

// overlay is an immutable map from K to an index: a shared base and the
// changes made to it since, in which -1 deletes a key.
type overlay[K comparable] struct {
	base, changes map[K]int32
}

// get looks k up. It allocates nothing.
func (o *overlay[K]) get(k K) (int32, bool) {
	if i, ok := o.changes[k]; ok {
		return i, i >= 0
	}
	i, ok := o.base[k]
	return i, ok
}

// with returns o with more changes (in the same form); o is not changed.
func (o overlay[K]) with(more map[K]int32) overlay[K] {
	if len(o.changes)+len(more) <= max(64, len(o.base)/16) {
		c := make(map[K]int32, len(o.changes)+len(more))
		maps.Copy(c, o.changes)
		maps.Copy(c, more)
		return overlay[K]{base: o.base, changes: c}
	}
	// Merge: the cost of a copy, once per many changes.
	b := maps.Clone(o.base)
	for _, c := range []map[K]int32{o.changes, more} {
		for k, i := range c {
			if i < 0 {
				delete(b, k)
			} else {
				b[k] = i
			}
		}
	}
	return overlay[K]{base: b}
}

// tenantArena says how much of a tenants backing array some table uses, so
// that a table built on another appends in place only if no other table
// did already (two versions built on one base must not share what they
// append).
type tenantArena struct {
	mu   sync.Mutex
	used int // guarded by mu
}

// appendTenants returns ts with add appended, sharing ts's backing array
// when the appended part is free.
func appendTenants(ts []TenantInfo, arena *tenantArena, add []TenantInfo) ([]TenantInfo, *tenantArena) {
	arena.mu.Lock()
	defer arena.mu.Unlock()
	if arena.used == len(ts) && cap(ts)-len(ts) >= len(add) {
		arena.used += len(add)
		return append(ts, add...), arena
	}
	out := make([]TenantInfo, len(ts), max(2*len(ts), len(ts)+len(add), 64))
	copy(out, ts)
	out = append(out, add...)
	return out, &tenantArena{used: len(out)}
}

// tenantsFresh compiles every tenant of t.m in name order, reusing prev's
// compiled tenant (prev may be nil) wherever the definition is the same
// object.
func (t *Table) tenantsFresh(prev *Table, svcIndex map[string]int) {
	m := t.m
	names := slices.Sorted(maps.Keys(m.Tenants))
	// Room to append the tenants of the next versions in place.
	t.tenants = make([]TenantInfo, 0, len(names)+len(names)/8+64)
	for _, name := range names {
		tm := m.Tenants[name]
		if prev != nil {
			if i := prev.TenantByName(name); i >= 0 && prev.tenants[i].def == tm {
				t.tenants = append(t.tenants, prev.tenants[i])
				continue
			}
		}
		t.tenants = append(t.tenants, compileTenant(name, tm, svcIndex))
	}
	t.arena = &tenantArena{used: len(t.tenants)}
	t.live = len(t.tenants)
	byName := make(map[string]int32, len(t.tenants))
	byTag := map[uint16]int32{}
	prefixes := make(map[netip.Prefix]int32, len(t.tenants))
	t.lens = [2][]int{}
	for i, ti := range t.tenants {
		byName[ti.Name] = int32(i)
		if ti.Tag != 0 {
			byTag[ti.Tag] = int32(i)
		}
		for _, p := range ti.lookedUp() {
			prefixes[p] = int32(i)
			t.addLen(p)
		}
	}
	t.names = overlay[string]{base: byName}
	t.tags = overlay[uint16]{base: byTag}
	t.prefixes = overlay[netip.Prefix]{base: prefixes}
	t.sortLens()
}

// tenantsDelta builds t's tenants from prev's, whose map d was applied to:
// only the tenants d adds, changes or removes are touched. It reports
// false, doing nothing, when removed tenants' entries would make up too
// much of the list: the caller then compiles them afresh.
func (t *Table) tenantsDelta(prev *Table, d *Delta, svcIndex map[string]int) bool {
	removed, replaced := 0, 0
	for _, name := range d.Removed {
		if prev.TenantByName(name) >= 0 {
			removed++
		}
	}
	for name := range d.Tenants {
		if prev.TenantByName(name) >= 0 {
			replaced++
		}
	}
	if dead := len(prev.tenants) - prev.live + removed + replaced; dead > prev.live/4+64 {
		return false
	}
	names := map[string]int32{}
	tags := map[uint16]int32{}
	prefixes := map[netip.Prefix]int32{}
	drop := func(name string) {
		i := prev.TenantByName(name)
		if i < 0 {
			return
		}
		names[name] = -1
		if tag := prev.tenants[i].Tag; tag != 0 {
			tags[tag] = -1
		}
		for _, p := range prev.tenants[i].lookedUp() {
			prefixes[p] = -1
		}
	}
	// Every drop before any addition: a prefix or a tag may move from one
	// tenant to another.
	changed := slices.Sorted(maps.Keys(d.Tenants))
	for _, name := range slices.Concat(d.Removed, changed) {
		drop(name)
	}
	var add []TenantInfo
	next := int32(len(prev.tenants))
	for _, name := range changed {
		ti := compileTenant(name, d.Tenants[name], svcIndex)
		names[name] = next
		if ti.Tag != 0 {
			tags[ti.Tag] = next
		}
		for _, p := range ti.lookedUp() {
			prefixes[p] = next
		}
		add = append(add, ti)
		next++
	}
	t.tenants, t.arena = appendTenants(prev.tenants, prev.arena, add)
	t.live = prev.live - removed + len(d.Tenants) - replaced
	t.names = prev.names.with(names)
	t.tags = prev.tags.with(tags)
	t.prefixes = prev.prefixes.with(prefixes)
	// The prefix lengths are prev's unless an added prefix brings a new
	// one: then they are copied, never appended to in place.
	t.lens = prev.lens
	newLen := func(p netip.Prefix) bool { return !slices.Contains(prev.lens[familyIndex(p.Addr())], p.Bits()) }
	if slices.ContainsFunc(add, func(ti TenantInfo) bool { return slices.ContainsFunc(ti.lookedUp(), newLen) }) {
		t.lens = [2][]int{slices.Clone(prev.lens[0]), slices.Clone(prev.lens[1])}
		for _, ti := range add {
			for _, p := range ti.lookedUp() {
				t.addLen(p)
			}
		}
		t.sortLens()
	}
	// Lengths whose last prefix went stay listed: one lookup more per
	// packet for them, until the next fresh build.
	return true
}

// lookedUp returns the prefixes [Table.TenantOf] finds the tenant by: none
// for a zoned tenant.
func (ti *TenantInfo) lookedUp() []netip.Prefix {
	if ti.Zoned() {
		return nil
	}
	return ti.Prefixes
}

func (t *Table) addLen(p netip.Prefix) {
	f := familyIndex(p.Addr())
	if !slices.Contains(t.lens[f], p.Bits()) {
		t.lens[f] = append(t.lens[f], p.Bits())
	}
}

// sortLens puts the longest prefix lengths first: the longest match wins.
func (t *Table) sortLens() {
	for f := range t.lens {
		slices.Sort(t.lens[f])
		slices.Reverse(t.lens[f])
	}
}

// LiveTenants returns the tenants of the map, in name order. It copies
// them: for output and tests, not for the packet path.
func (t *Table) LiveTenants() []TenantInfo {
	out := make([]TenantInfo, 0, t.live)
	for i, ti := range t.tenants {
		if t.TenantByName(ti.Name) == i {
			out = append(out, ti)
		}
	}
	slices.SortFunc(out, func(a, b TenantInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}
