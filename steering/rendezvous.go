package steering

import "slices"

// Roles of one slot of one service: the index (into the service's sorted
// instance list) of the instance holding the primary role and of the one
// holding the secondary role. NoInstance marks a role nobody holds (a
// service with one instance has no secondary).
type Roles struct {
	Primary, Secondary uint16
}

// NoInstance marks an empty role.
const NoInstance = 0xffff

// assignRoles gives every slot of a service its primary and secondary by
// rendezvous (highest random weight) hashing: each instance scores
// weight(service, instance, slot) and the two highest scores win.
//
// Why rendezvous: the score of an instance for a slot does not depend on the
// other instances, so adding an instance moves exactly the slots it now wins
// and removing one moves exactly the slots it held; and when a primary is
// taken out, the instance that becomes primary is the one that was already
// secondary, which is the one holding the mirrored state. Every node computes
// the same table from the same names.
//
// weight = splitmix64(FNV-1a-64(service "\x00" instance "\x00" slot as 4
// big-endian bytes)); ties (vanishingly rare) go to the lower index, which is
// the lexically smaller name.
//
// Instances with skip set take no role; if that leaves none, skip is
// ignored (a service whose instances are all out still gets roles, and its
// traffic still goes somewhere, rather than around it).
func assignRoles(service string, instances []string, skip []bool, slots int) []Roles {
	if !slices.Contains(skip, false) {
		skip = nil
	}
	roles := make([]Roles, slots)
	base := bases(service, instances)
	for s := range roles {
		roles[s] = slotRoles(base, skip, uint32(s))
	}
	return roles
}

func bases(service string, instances []string) []uint64 {
	base := make([]uint64, len(instances))
	for i, name := range instances {
		base[i] = instanceBase(service, name)
	}
	return base
}

// slotRoles ranks every instance not skipped for one slot.
func slotRoles(base []uint64, skip []bool, slot uint32) Roles {
	r := Roles{NoInstance, NoInstance}
	var w1, w2 uint64
	for i, b := range base {
		if skip != nil && skip[i] {
			continue
		}
		w := weight(b, slot)
		switch {
		case r.Primary == NoInstance || w > w1:
			r.Secondary, w2 = r.Primary, w1
			r.Primary, w1 = uint16(i), w
		case r.Secondary == NoInstance || w > w2:
			r.Secondary, w2 = uint16(i), w
		}
	}
	return r
}

// updateRoles is assignRoles for a service whose instances are the same
// as when prev was assigned with prevSkip, and only which of them are
// skipped changed: the same result, found without ranking every instance
// for every slot. A slot whose primary or secondary is newly skipped is
// ranked again; in every other slot a newly returned instance only has to
// beat the two role holders. A failover or a drain thus costs a few
// weights per slot instead of one per instance.
func updateRoles(prev []Roles, service string, instances []string, prevSkip, skip []bool) []Roles {
	if !slices.Contains(skip, false) || !slices.Contains(prevSkip, false) {
		// The all-skipped rule ignores skip: rank afresh.
		return assignRoles(service, instances, skip, len(prev))
	}
	var gone, back []int
	for i := range skip {
		switch {
		case skip[i] && !prevSkip[i]:
			gone = append(gone, i)
		case !skip[i] && prevSkip[i]:
			back = append(back, i)
		}
	}
	base := bases(service, instances)
	roles := slices.Clone(prev)
	for s := range roles {
		r := &roles[s]
		if slices.Contains(gone, int(r.Primary)) || slices.Contains(gone, int(r.Secondary)) {
			*r = slotRoles(base, skip, uint32(s))
			continue
		}
		for _, i := range back {
			r.offer(base, uint16(i), uint32(s))
		}
	}
	return roles
}

// offer gives instance i the primary or secondary role of slot s if its
// weight beats the holder's, ties going to the lower index as in
// slotRoles.
func (r *Roles) offer(base []uint64, i uint16, s uint32) {
	w := weight(base[i], s)
	beats := func(j uint16) bool {
		if j == NoInstance {
			return true
		}
		wj := weight(base[j], s)
		return w > wj || w == wj && i < j
	}
	switch {
	case beats(r.Primary):
		r.Secondary, r.Primary = r.Primary, i
	case beats(r.Secondary):
		r.Secondary = i
	}
}

// instanceBase is the part of an instance's weight that does not depend on
// the slot.
func instanceBase(service, instance string) uint64 {
	h := fnvString(uint64(fnvOffset), service)
	h = fnvByte(h, 0)
	h = fnvString(h, instance)
	return fnvByte(h, 0)
}

func weight(base uint64, slot uint32) uint64 {
	h := fnvByte(base, byte(slot>>24))
	h = fnvByte(h, byte(slot>>16))
	h = fnvByte(h, byte(slot>>8))
	h = fnvByte(h, byte(slot))
	return mix64(h)
}
