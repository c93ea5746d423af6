package rules

import "errors"

// ErrForeignRule means an ip rule that is not nfsteer's sits among the
// priorities nfsteer's rules take (RulePriorities from the spec's
// RulePriority): packets walking nfsteer's rules would meet it. Apply
// refuses to install around it.
var ErrForeignRule = errors.New("a foreign ip rule is among nfsteer's priorities")
