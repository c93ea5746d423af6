//go:build !linux

package offload

import "context"

// Path is the flow offload; it exists on Linux only.
type Path struct{}

// Open returns ErrUnsupported.
func Open(Config) (*Path, error) { return nil, ErrUnsupported }

// Sync does nothing.
func (*Path) Sync([]string) error { return ErrUnsupported }

// Invalidate does nothing.
func (*Path) Invalidate() error { return ErrUnsupported }

// Stats returns nothing.
func (*Path) Stats() (Stats, error) { return Stats{}, ErrUnsupported }

// Occupancy returns nothing.
func (*Path) Occupancy() (Occupancy, error) { return Occupancy{}, ErrUnsupported }

// Run does nothing.
func (*Path) Run(context.Context) error { return ErrUnsupported }

// Close does nothing.
func (*Path) Close() error { return nil }
