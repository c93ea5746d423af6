//go:build linux

package rules

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
)

// TestFromNetlinkRule reads rules back in the shape netlink.RuleList gives
// them, which leaves out a rule's action: a rule read back must equal the
// one nfsteer wants, or every apply deletes and adds it again (and, adding
// first, fails on the duplicate).
func TestFromNetlinkRule(t *testing.T) {
	listed := func(r IPRule) netlink.Rule {
		nr := *toNetlinkRule(netlink.FAMILY_V4, r)
		nr.Type = 0 // RuleList does not fill it in
		return nr
	}
	for _, want := range []IPRule{
		{Family: 4, Priority: 8000, Iif: "lo", Action: Goto, Target: 24387},
		{Family: 4, Priority: 8001, Mark: MarkReply, Mask: MarkReply, Action: Goto, Target: 16195},
		{Family: 4, Priority: 8002, Invert: true, Mark: 0, Mask: 0xff8, Action: Goto, Target: 24387},
		{Family: 4, Priority: 8017, Mark: 2, Mask: OrigMask | MarkReply, Action: Lookup, Table: 8001},
		{Family: 4, Priority: 16193, Action: Goto, Target: 24387},
		{Family: 4, Priority: 24387, Action: Nop},
	} {
		if diff := cmp.Diff(want, fromNetlinkRule(4, listed(want))); diff != "" {
			t.Errorf("%v read back (-want +got):\n%s", want, diff)
		}
	}
}
