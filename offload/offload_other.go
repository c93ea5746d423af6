//go:build !linux

package offload

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

// Close does nothing.
func (*Path) Close() error { return nil }
