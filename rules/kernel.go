package rules

import "net/netip"

// Kernel installs and removes nfsteer's kernel state in one network
// namespace. Implementations must make Apply idempotent (applying the same
// Spec twice changes nothing the second time, and applying a new Spec
// replaces the old one) and Remove complete (it removes whatever any Spec
// installed, and is safe to call when nothing is installed).
type Kernel interface {
	Apply(Spec) error
	Remove() error
	// Show describes what nfsteer owns right now, one item per line.
	Show() ([]string, error)
	// Unsteered returns how many new flows were forwarded without a
	// steering decision since the rules were installed, in both families.
	Unsteered() (uint64, error)
	// Spoofed returns how many packets the anti-spoofing rules dropped
	// (see [Binding]), in both families.
	Spoofed() (uint64, error)
	// Untagged returns how many packets an instance host on an overlay
	// dropped for arriving with no tenant's tag (see [TenantTag]).
	Untagged() (uint64, error)
	// ReversePathDrops returns the IPv4 prefixes among srcs whose
	// packets the kernel's reverse-path filter drops when the chain hands
	// them back through the overlay: the filter is on for the overlay
	// device (loose at least; see [OverlayDevice]), and the node routes
	// no address of theirs for its own traffic. A zoned tenant's
	// prefixes (see [TenantTag]) are routed in tables of their own, which
	// that check does not read.
	ReversePathDrops(srcs []netip.Prefix) ([]netip.Prefix, error)
}
