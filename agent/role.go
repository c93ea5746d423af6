package agent

import (
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
)

// Role is what a node is on the map it runs: it decides what the node does
// with a new flow and what it mirrors to Redis. It is computed once per map
// version ([roleOf]) and read from there, never re-derived.
type Role uint8

// Roles.
const (
	// Gateway: the node is no instance of the map. Tenants' flows enter
	// the chain here; it creates their sessions in Redis, but for TCP
	// connections through a firewall (state.createOp).
	Gateway Role = iota
	// Forwarder: the host of an instance of a forward service. It steers
	// to the next hop and refreshes the sessions it carries.
	Forwarder
	// Firewall: the host of an instance of a firewall service. It admits
	// new flows by the tenant's allow rules, writes its verdict with the
	// session (creating the sessions of TCP connections), and takes flows
	// over from a dead peer.
	Firewall
	// Spare: a host started with --spare that no version names yet. It
	// lets every flow pass and becomes an instance when a version adds it.
	Spare
)

var roleNames = [...]string{"gateway", "forwarder", "firewall", "spare"}

func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return "role(?)"
}

// roleOf returns the role of node n on t; spare says the node is not in
// the map and was started as a spare.
func roleOf(t *steering.Table, n steering.Node, spare bool) Role {
	switch {
	case spare:
		return Spare
	case n.Instance < 0:
		return Gateway
	case t.Services()[t.Instances()[n.Instance].Service].Function == steering.FunctionFirewall:
		return Firewall
	}
	return Forwarder
}

// hostsInstance reports whether the node carries an instance of a service.
func (r Role) hostsInstance() bool { return r == Forwarder || r == Firewall }

// createOp is how the node mirrors a flow of tenant that it decided
// first: the operation (ok false: it writes nothing), and whether the
// operation indexes the session (an OpCreate always does). syn says the
// flow opened here with its TCP SYN.
//
// One node creates each session with its index entries:
//   - a gateway, except a TCP connection whose chain has a firewall: the
//     chain's first firewall meets the same SYN within a millisecond and
//     writes the same record, with its verdict. The verdict is the part a
//     failover needs (a firewall's secondary takes a flow over by it,
//     and without it drops the flow); a gateway's create as well would
//     cost Redis a command and the gateway a write per connection, and
//     would leave a session behind for a connection the firewall refuses;
//   - a firewall creates what it admits, with its verdict, and indexes it
//     when it is that first firewall of a TCP connection;
//   - a forwarder writes nothing: its flows were created in front of it.
//
// A flow that did not open here with a SYN (a datagram, or a connection
// met mid-stream after a failover) is created by the gateway, whose create
// also learns the pins a first writer gave it.
func (st *state) createOp(tenant int, syn bool) (kind sessions.OpKind, index, ok bool) {
	switch st.role {
	case Gateway:
		return sessions.OpCreate, true, !syn || st.table.FirstFirewall(tenant) < 0
	case Firewall:
		return sessions.OpCreateState, syn && st.table.FirstFirewall(tenant) == st.service, true
	}
	return 0, false, false
}

// resyncOp is how the node rewrites a session of tenant (-1: one the map
// no longer has) that it holds after Redis lost data: as it created it,
// or, on a forwarder, with a refresh. No node knows any more which of its
// flows opened with a SYN, so a gateway rewrites all its sessions and a
// firewall indexes all those of which it is the chain's first firewall: a
// create that finds the session already there costs only its command.
func (st *state) resyncOp(tenant int) (kind sessions.OpKind, index bool) {
	switch st.role {
	case Gateway:
		return sessions.OpCreate, true
	case Firewall:
		return sessions.OpCreateState, tenant >= 0 && st.table.FirstFirewall(tenant) == st.service
	}
	return sessions.OpRefresh, false
}

// refreshes reports whether the node keeps the sessions of its live flows
// alive in Redis: an instance holds their roles, a gateway only opens
// them.
func (r Role) refreshes() bool { return r.hostsInstance() }

// deletes reports whether the node deletes from Redis the session of a
// finished flow of the tenant called name: an instance that carries the
// whole flow, wherever it entered, and sees it end.
//   - A firewall deletes what it admitted, with its verdict.
//   - On a chain without a firewall, the instance of its first service
//     does. No instance creates those sessions (the gateway does:
//     createOp), but a gateway is the wrong node to end them: a flow that
//     leaves its conntrack may have moved to another gateway (an
//     upstream router's paths changed) and live on there.
//
// A session nobody deletes counts against its instances until its life
// runs out: a drain waits for it, and the instance cannot be removed. A
// tenant the map no longer has leaves its sessions to run out.
func (st *state) deletes(name string) bool {
	switch st.role {
	case Firewall:
		return true
	case Forwarder:
		t := st.table.TenantByName(name)
		return t >= 0 && st.table.FirstFirewall(t) < 0 && st.table.Tenants()[t].ChainPos(st.service) == 0
	}
	return false
}
