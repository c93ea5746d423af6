package steering

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// updateRoles must give exactly what ranking every instance afresh gives,
// whatever instances leave and return, including ties' order and the
// all-skipped rule.
func TestUpdateRolesMatchesAssign(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 3, 7, 40} {
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("i%02d", i)
		}
		skip := make([]bool, n)
		roles := assignRoles("svc", names, skip, 256)
		for step := range 30 {
			next := make([]bool, n)
			for i := range next {
				// Mostly small changes, like a failover or a drain, and
				// sometimes everything out.
				next[i] = skip[i] != (rng.IntN(8) == 0) || step%11 == 10
			}
			want := assignRoles("svc", names, next, 256)
			got := updateRoles(roles, "svc", names, skip, next)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("%d instances, step %d, skip %v -> %v (-want +got):\n%s", n, step, skip, next, diff)
			}
			skip, roles = next, got
		}
	}
}
