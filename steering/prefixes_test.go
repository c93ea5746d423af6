package steering

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// all returns every prefix of x, in order.
func (x *prefixIndex) all() []ownedPrefix { return slices.Concat(x.chunks...) }

// TestPrefixIndexMatchesSortedList inserts and removes random prefixes,
// version after version, and checks each version against a plain sorted
// list, and that no version changed the one it was built on.
func TestPrefixIndexMatchesSortedList(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	owned := func(i int) ownedPrefix {
		return ownedPrefix{p: netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)), tenant: fmt.Sprintf("t%d", i)}
	}
	var want []ownedPrefix
	for i := 0; i < 1000; i += 2 {
		want = append(want, owned(i))
	}
	x := newPrefixIndex(slices.Clone(want))
	type version struct {
		x    *prefixIndex
		want []ownedPrefix
	}
	var versions []version
	for v := 0; v < 300; v++ {
		next := x.clone()
		for range rng.IntN(8) {
			i := rng.IntN(1100)
			op := owned(i)
			at, found := slices.BinarySearchFunc(want, op, comparePrefix)
			if found {
				next.remove(op, "someone else") // not theirs: stays
				next.remove(op, op.tenant)
				want = slices.Delete(slices.Clone(want), at, at+1)
				continue
			}
			pos := next.search(op)
			before, after := next.around(pos)
			if before != nil && comparePrefix(*before, op) >= 0 || after != nil && comparePrefix(*after, op) <= 0 {
				t.Fatalf("version %d: %s is not between its neighbours %v and %v", v, op.p, before, after)
			}
			next.insert(pos, op)
			want = slices.Insert(slices.Clone(want), at, op)
		}
		versions = append(versions, version{next, want})
		x = next
	}
	// Checked at the end, the early versions show whether a later one
	// wrote into a chunk it shared.
	for v, old := range versions {
		if diff := cmp.Diff(old.want, old.x.all(), cmp.AllowUnexported(ownedPrefix{}), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
			t.Fatalf("version %d's prefixes (-want +got):\n%s", v, diff)
		}
	}
	for _, ch := range x.chunks {
		if len(ch) == 0 || len(ch) >= 2*prefixChunk {
			t.Errorf("chunk of %d prefixes", len(ch))
		}
	}
}
