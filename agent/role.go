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
	// the chain here; it creates their sessions in Redis.
	Gateway Role = iota
	// Forwarder: the host of an instance of a forward service. It steers
	// to the next hop and refreshes the sessions it carries.
	Forwarder
	// Firewall: the host of an instance of a firewall service. It admits
	// new flows by the tenant's allow rules, writes its verdict with the
	// session, and takes flows over from a dead peer.
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

// createOp is the operation that mirrors a flow the node decided first:
// a gateway creates the session, a firewall creates it with its verdict.
// A forwarder's flows were created by the gateway in front of it, and it
// writes nothing (ok false).
func (r Role) createOp() (kind sessions.OpKind, ok bool) {
	switch r {
	case Gateway:
		return sessions.OpCreate, true
	case Firewall:
		return sessions.OpCreateState, true
	}
	return 0, false
}

// resyncOp is the operation that rewrites a session the node holds after
// Redis lost data: what created it, or, on a forwarder, a refresh.
func (r Role) resyncOp() sessions.OpKind {
	if k, ok := r.createOp(); ok {
		return k
	}
	return sessions.OpRefresh
}

// refreshes reports whether the node keeps the sessions of its live flows
// alive in Redis: an instance holds their roles, a gateway only opens
// them.
func (r Role) refreshes() bool { return r.hostsInstance() }

// deletes reports whether the node deletes a finished flow's session from
// Redis: the firewall, whose verdict the session carries.
func (r Role) deletes() bool { return r == Firewall }
