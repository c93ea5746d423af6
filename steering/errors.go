package steering

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidMap is wrapped by every error that refuses a map, so callers can
// tell a bad map (keep the last good one) from an I/O failure.
var ErrInvalidMap = errors.New("invalid service map")

// Errors of map edits (see edit.go); each is wrapped with the name at fault.
var (
	// ErrUnknownName: the edit names a tenant, service or instance the map
	// does not have.
	ErrUnknownName = errors.New("no such name in the map")
	// ErrExists: the edit adds a name the map already has.
	ErrExists = errors.New("already in the map")
	// ErrInUse: the edit removes something the rest of the map still needs.
	ErrInUse = errors.New("still in use")
	// ErrNoneInService: the edit would leave a service that tenants'
	// chains use with no instance in service.
	ErrNoneInService = errors.New("no instance left in service")
)

// Errors of a whole-map apply (see apply.go).
var (
	// ErrWouldRemove: the file lacks names the live map has, and removing
	// them was not asked for.
	ErrWouldRemove = errors.New("apply would remove")
	// ErrMovedOn: the live map changed after the file was made from it.
	ErrMovedOn = errors.New("the live map has moved on")
)

// ErrSpoofed is wrapped by [Table.TenantAt] for a packet a gateway drops
// for entering where its source may not.
var ErrSpoofed = errors.New("dropped as spoofed")

// ErrNotBase is wrapped by [Published.Apply] when the delta does not
// follow the version it is applied to: the caller reads the whole map.
var ErrNotBase = errors.New("delta does not apply to this version")

// FieldError names one field of a map and why it is refused.
type FieldError struct {
	// Field is a dotted path into the map, such as "tenants.acme.chain[1]".
	Field  string
	Reason string
}

func (e FieldError) Error() string { return e.Field + ": " + e.Reason }

// ValidationError lists every problem found in a map. It wraps
// [ErrInvalidMap].
type ValidationError struct {
	Problems []FieldError
}

// maxProblemsShown bounds the message of a ValidationError: a map with one
// systematic mistake can have thousands of problems, and the first few say
// what is wrong. Problems holds them all.
const maxProblemsShown = 10

func (e *ValidationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v: ", ErrInvalidMap)
	for i, p := range e.Problems {
		if i == maxProblemsShown {
			fmt.Fprintf(&b, "; and %d more", len(e.Problems)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.Error())
	}
	return b.String()
}

func (e *ValidationError) Unwrap() error { return ErrInvalidMap }
