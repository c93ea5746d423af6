package signing

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func sessionKeyOf(t testing.TB, b byte) *SessionKey {
	t.Helper()
	k, err := NewSessionKey(bytes.Repeat([]byte{b}, SessionKeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSessionKeys: which seals a node's keys trust, and how they are
// named.
func TestSessionKeys(t *testing.T) {
	k1, k2, k3 := sessionKeyOf(t, 1), sessionKeyOf(t, 2), sessionKeyOf(t, 3)
	if k1.ID() == k2.ID() || len(k1.ID()) != 16 || k1.ID() != sessionKeyOf(t, 1).ID() {
		t.Fatalf("IDs %q, %q: want 16 hex digits, the same for the same key and distinct for others", k1.ID(), k2.ID())
	}
	mac1, mac3 := k1.MAC("record", "f", "{}"), k3.MAC("record", "f", "{}")
	for _, tc := range []struct {
		name           string
		ks             SessionKeys
		checks         bool
		trustsUnsealed bool
		ids            []string
		trusts1        bool // a seal of k1
	}{
		{"none", SessionKeys{}, false, true, nil, false},
		{"accept k1", SessionKeys{Accept: []*SessionKey{k1}}, true, true, []string{k1.ID()}, true},
		{"seal k1, unsealed too", SessionKeys{Seal: k1, Unsealed: true}, true, true, []string{k1.ID()}, true},
		{"seal k1", SessionKeys{Seal: k1}, true, false, []string{k1.ID()}, true},
		{"seal k2, accept k1 and k2 again", SessionKeys{Seal: k2, Accept: []*SessionKey{k1, k2}}, true, false, []string{k2.ID(), k1.ID()}, true},
		{"seal k2", SessionKeys{Seal: k2}, true, false, []string{k2.ID()}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.ks.Checks(); got != tc.checks {
				t.Errorf("Checks() = %t; want %t", got, tc.checks)
			}
			if got := tc.ks.TrustsUnsealed(); got != tc.trustsUnsealed {
				t.Errorf("TrustsUnsealed() = %t; want %t", got, tc.trustsUnsealed)
			}
			if diff := cmp.Diff(tc.ids, tc.ks.IDs()); diff != "" {
				t.Errorf("IDs() (-want +got):\n%s", diff)
			}
			if got := tc.ks.Check(mac1, "record", "f", "{}"); got != tc.trusts1 {
				t.Errorf("Check(a seal of k1) = %t; want %t", got, tc.trusts1)
			}
			if tc.ks.Check(mac3, "record", "f", "{}") || tc.ks.Check(mac1, "record", "g", "{}") {
				t.Errorf("Check trusted a seal of a key it does not hold, or of other content")
			}
		})
	}
}
