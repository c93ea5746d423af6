package steering

import "slices"

// prefixIndex holds every tenant prefix of a valid map, sorted by address
// and then length (no two overlap), in chunks that the versions built on
// one another share: a change to a few tenants copies the chunks it
// touches and the list of chunks, not the 10,000 prefixes of a big map.
// That copy was most of what a node allocated to apply a tenant delta.
// A prefixIndex is never changed once a Published holds it: a change
// works on a clone.
type prefixIndex struct {
	// chunks are non-empty and sorted; every prefix of a chunk sorts
	// before every prefix of the next.
	chunks [][]ownedPrefix
}

// prefixChunk is a chunk's size when built; a chunk that grows to twice
// that is split.
const prefixChunk = 64

// newPrefixIndex returns the index of sorted, which it keeps.
func newPrefixIndex(sorted []ownedPrefix) *prefixIndex {
	x := &prefixIndex{}
	for len(sorted) > 0 {
		k := min(prefixChunk, len(sorted))
		// Capped, so that growing a chunk copies it.
		x.chunks = append(x.chunks, sorted[:k:k])
		sorted = sorted[k:]
	}
	return x
}

// position is where a prefix is or would be inserted: chunk c, index i.
type position struct{ c, i int }

// search returns the position of the first prefix not before op.
func (x *prefixIndex) search(op ownedPrefix) position {
	c, _ := slices.BinarySearchFunc(x.chunks, op, func(ch []ownedPrefix, op ownedPrefix) int {
		return comparePrefix(ch[len(ch)-1], op)
	})
	if c == len(x.chunks) {
		// After every prefix: the end of the last chunk.
		if c == 0 {
			return position{}
		}
		return position{c - 1, len(x.chunks[c-1])}
	}
	i, _ := slices.BinarySearchFunc(x.chunks[c], op, comparePrefix)
	return position{c, i}
}

// around returns the prefixes just before pos and at it, if any.
func (x *prefixIndex) around(pos position) (before, at *ownedPrefix) {
	switch {
	case pos.i > 0:
		before = &x.chunks[pos.c][pos.i-1]
	case pos.c > 0:
		prev := x.chunks[pos.c-1]
		before = &prev[len(prev)-1]
	}
	switch {
	case pos.c < len(x.chunks) && pos.i < len(x.chunks[pos.c]):
		at = &x.chunks[pos.c][pos.i]
	case pos.c+1 < len(x.chunks):
		at = &x.chunks[pos.c+1][0]
	}
	return before, at
}

// clone returns a copy of x that shares its chunks: changes to the copy
// replace chunks, never write into them.
func (x *prefixIndex) clone() *prefixIndex {
	return &prefixIndex{chunks: slices.Clone(x.chunks)}
}

// insert puts op at pos (from search), copying the chunk it goes into.
func (x *prefixIndex) insert(pos position, op ownedPrefix) {
	if len(x.chunks) == 0 {
		x.chunks = [][]ownedPrefix{{op}}
		return
	}
	ch := slices.Insert(slices.Clip(x.chunks[pos.c]), pos.i, op)
	if len(ch) < 2*prefixChunk {
		x.chunks[pos.c] = ch
		return
	}
	half := len(ch) / 2
	x.chunks[pos.c] = ch[:half:half]
	x.chunks = slices.Insert(x.chunks, pos.c+1, ch[half:])
}

// remove deletes the prefix of tenant at op's place, if it is there.
func (x *prefixIndex) remove(op ownedPrefix, tenant string) {
	pos := x.search(op)
	if pos.c >= len(x.chunks) || pos.i >= len(x.chunks[pos.c]) {
		return
	}
	ch := x.chunks[pos.c]
	if comparePrefix(ch[pos.i], op) != 0 || ch[pos.i].tenant != tenant {
		return
	}
	if len(ch) == 1 {
		x.chunks = slices.Delete(x.chunks, pos.c, pos.c+1)
		return
	}
	x.chunks[pos.c] = slices.Delete(slices.Clone(ch), pos.i, pos.i+1)
}
