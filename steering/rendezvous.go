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
	base := make([]uint64, len(instances))
	for i, name := range instances {
		base[i] = instanceBase(service, name)
	}
	for s := range roles {
		first, second := uint16(NoInstance), uint16(NoInstance)
		var w1, w2 uint64
		for i, b := range base {
			if skip != nil && skip[i] {
				continue
			}
			w := weight(b, uint32(s))
			switch {
			case first == NoInstance || w > w1:
				second, w2 = first, w1
				first, w1 = uint16(i), w
			case second == NoInstance || w > w2:
				second, w2 = uint16(i), w
			}
		}
		roles[s] = Roles{Primary: first, Secondary: second}
	}
	return roles
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
