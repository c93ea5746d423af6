// Package steering owns nfsteer's decision: the service map (tenants, their
// ordered chains of services, and each service's instances), its validation,
// the stream affinity code of a flow, the deterministic assignment of a
// primary and a secondary instance to every affinity slot, and the next hop a
// node gives a new flow. It also owns how one published version of the map
// follows another: the [Delta] of tenants and out-lists that nodes apply
// without reading the whole map, checked and compiled for what it changes
// only. A map may carry its service network in an [Overlay], where every
// tenant has a tag ([Table.TenantByTag], [Table.DecideTagged]), and where
// tenants with a SNAT address may share addresses ([TenantInfo.Zoned]):
// they are told apart by their ingress and tag, never by their addresses.
// The overlay's gateways have IDs of their own ([GatewayNumber]).
//
// Everything here is pure computation over an immutable compiled [Table]: it
// needs no privilege, touches no kernel state and is safe for concurrent use.
// The same map gives the same decision on every node, which is what lets a
// gateway and the service-instance hosts steer one flow consistently without
// talking to each other.
package steering
