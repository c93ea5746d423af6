package steering

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// This file holds what applying a whole map file over the live version may
// do: the changes it makes, the removals it needs permission for, and the
// lost update it must not make.

// ApplyOptions guard an apply.
type ApplyOptions struct {
	// Prune allows removing tenants, services and instances the live map
	// has and the file does not. Without it such an apply is refused.
	Prune bool
	// Base, when set, is what the file was made from: the apply is refused
	// if the live map has moved on since (see [Base]).
	Base Base
}

// Base is the live version a map file was made from.
type Base struct {
	// Version, when not 0, is the live version the file was made from; the
	// apply is refused unless the live version is still this one.
	Version uint64
	// Digest, when set, is the digest of the map the file was exported
	// from ([Published.MapDigest]), at version Exported; the apply is
	// refused if the live map is no longer that map. Versions that only
	// change the lists of instances out of steering (failovers, drains) do
	// not count.
	Digest   string
	Exported uint64
}

// exportHeader is the first line of `nfsteer map export`.
var exportHeader = regexp.MustCompile(`(?m)^# nfsteer map export of live version (\d+), map sha256:([0-9a-f]{64})\b`)

// ExportHeader is the comment `nfsteer map export` puts at the top of the
// file it writes, so that applying the file later can tell whether the
// live map moved on in between.
func ExportHeader(p *Published) string {
	return fmt.Sprintf("# nfsteer map export of live version %d, map sha256:%s\n"+
		"# apply refuses this file if someone changes the live map before it is\n"+
		"# applied; --base-version N overrides this line.\n", p.Version, p.MapDigest())
}

// BaseOf reads the export header in a map file, if it has one.
func BaseOf(file []byte) (Base, bool) {
	m := exportHeader.FindSubmatch(file)
	if m == nil {
		return Base{}, false
	}
	v, err := strconv.ParseUint(string(m[1]), 10, 64)
	if err != nil {
		return Base{}, false
	}
	return Base{Digest: string(m[2]), Exported: v}, true
}

// PlanApply returns the version that publishing m over live makes (live
// may be nil: the first map), unnumbered, and the changes it brings. It
// refuses, with an error wrapping [ErrWouldRemove] or [ErrMovedOn] that
// names what is at stake, an apply that removes something without
// o.Prune, or one made from a map the live version no longer is.
func PlanApply(live *Published, m *Map, o ApplyOptions) (*Published, []Change, error) {
	if live == nil {
		return &Published{Map: m}, Diff(nil, m), nil
	}
	if o.Base.Version != 0 && live.Version != o.Base.Version {
		return nil, nil, fmt.Errorf("%w: the file was made from version %d and the live map is at version %d: "+
			"export it again and redo the edit, or check with map diff and give --base-version %d",
			ErrMovedOn, o.Base.Version, live.Version, live.Version)
	}
	if o.Base.Digest != "" && live.MapDigest() != o.Base.Digest {
		return nil, nil, fmt.Errorf("%w: the file was exported from version %d and the map has changed since (live version %d): "+
			"export it again and redo the edit, or check with map diff and give --base-version %d",
			ErrMovedOn, o.Base.Exported, live.Version, live.Version)
	}
	changes := Diff(live.Map, m)
	if !o.Prune {
		var gone []string
		for _, c := range changes {
			if c.Op == "remove" {
				gone = append(gone, c.Kind+" "+c.Name)
			}
		}
		if len(gone) > 0 {
			return nil, nil, fmt.Errorf("%w: the file does not have %s: add them to the file, or give --prune to remove them",
				ErrWouldRemove, strings.Join(gone, ", "))
		}
	}
	return live.WithMap(m), changes, nil
}
