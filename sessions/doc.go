// Package sessions owns what a node remembers of the flows it decided and
// how that is shared with the other nodes:
//
//   - [Flows], the node's local table: for each flow, the tenant, the
//     affinity code and the instance pinned at every position of the
//     tenant's chain. It keeps a flow's two directions on the same
//     instances on one node even if the map changes between its first
//     packet and its first reply. A flow is keyed by its 5-tuple and, on
//     an overlay, its tenant's tag ([Key]): two tenants' flows on one
//     5-tuple are two sessions.
//   - [Record], the session as nodes share it through Redis, by instance
//     name and role (primary, secondary), with the translations between a
//     session and its record, and the firewall's state codec.
//   - [Mirror], which writes sessions to Redis off the packet path, through
//     a bounded queue, in batches, behind the narrow [Writer] interface.
//
// It is in-memory, needs no privilege and is safe for concurrent use.
package sessions
