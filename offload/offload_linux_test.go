//go:build linux

package offload

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/rules"
)

// TestAskOf decodes asks as the program writes them (struct ask: the
// addresses and ports in the packet's byte order, padding, then the time
// of the ask), into the connection ctnetlink is given; a record too short
// for an ask decodes to the zero ask rather than panicking.
func TestAskOf(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rec     []byte
		conn    rules.LiberalConn
		askedNs uint64
	}{
		{
			"ask",
			[]byte{10, 20, 1, 2, 10, 99, 0, 2, 0xac, 0x45, 0x14, 0x53, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0},
			rules.LiberalConn{Src: [4]byte{10, 20, 1, 2}, Dst: [4]byte{10, 99, 0, 2}, SrcPort: 44101, DstPort: 5203},
			0x0201,
		},
		{
			"extreme ports",
			[]byte{1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0xff, 0xff, 9, 9, 9, 9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
			rules.LiberalConn{Src: [4]byte{1, 2, 3, 4}, Dst: [4]byte{5, 6, 7, 8}, SrcPort: 1, DstPort: 65535},
			1<<64 - 1,
		},
		{"short", []byte{1, 2, 3}, rules.LiberalConn{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := askOf(tc.rec)
			if diff := cmp.Diff(tc.conn, a.conn); diff != "" || a.askedNs != tc.askedNs {
				t.Errorf("askOf: asked at %#x, want %#x; connection (-want +got):\n%s", a.askedNs, tc.askedNs, diff)
			}
		})
	}
}
