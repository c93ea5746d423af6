// Package sessions owns the node's local flow table: for each flow it has
// decided, the tenant, the affinity code and the instance pinned at every
// position of the tenant's chain. The table is what keeps a flow's two
// directions on the same instances on one node even if the map changes
// between its first packet and its first reply; the next step mirrors it to
// Redis by primary and secondary role.
//
// It is in-memory, needs no privilege and is safe for concurrent use.
package sessions
