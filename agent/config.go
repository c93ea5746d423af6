package agent

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/signing"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
)

// Config is an agent's configuration.
type Config struct {
	// Node is this node's name: an instance name from the map makes the
	// node that instance's host; any other name makes it a gateway.
	Node string
	// Spare lets a node the map does not name yet, with no outer
	// interfaces, run as a spare: it steers nothing until a version adds
	// it as an instance (elastic scale-out). Without Spare such a node is
	// refused, since a mistyped instance name would otherwise steer
	// nothing silently.
	Spare bool
	// MapFile is the service map for a node without Redis, and the map a
	// node with Redis starts on when Redis is unreachable or empty.
	MapFile string
	// RedisURL, if set, makes the node share the map and its sessions
	// through Redis (see package store).
	RedisURL string
	// RedisTLS names the files of a rediss:// RedisURL's connections.
	RedisTLS store.TLSFiles
	// SessionKeys seal the session records the node writes, and the node
	// trusts only records they seal (see store.Store.SealSessions): a
	// takeover never follows a forged one. The zero value seals nothing.
	SessionKeys signing.SessionKeys
	// Trust, if not nil, holds the keys whose signature a map version from
	// Redis must carry: any other version is refused, logged and counted,
	// and the node keeps its last good map. Without it, maps from Redis
	// are not authenticated, which the agent logs once at start.
	Trust *signing.Verifier
	// NoMirror keeps sessions out of Redis (the map still comes from
	// there). A session has one creator (a gateway, or for a TCP
	// connection through a firewall the chain's first firewall): without
	// its mirror, no secondary anywhere on the flow's chain can take the
	// flow over.
	NoMirror bool
	// MirrorLinger is how long the mirror waits for a batch to fill once
	// it holds a session operation (default 10ms; negative: not at all):
	// fewer round trips to Redis at a high rate of new flows, against a
	// session reaching Redis that much later (a failover within it finds
	// the session unmirrored).
	MirrorLinger time.Duration
	// RedisSessionTTL is how long a session lives in Redis unless its
	// primary refreshes it (default 2m).
	RedisSessionTTL time.Duration
	// RefreshInterval is how often the node checks conntrack for its live
	// flows (default 10s). A live session is refreshed once three
	// intervals or less are left of its RedisSessionTTL.
	RefreshInterval time.Duration
	// IndexPruneInterval is how often an instance forgets the session
	// indexes it shared with instances the map no longer has, once they
	// are gone (default 10 minutes).
	IndexPruneInterval time.Duration
	// HeartbeatInterval is how often the node tells Redis it is alive
	// (default 25ms, which the controller's default of 4 misses turns into
	// a failover in about 100ms). It reports its health every
	// store.ReportEvery.
	HeartbeatInterval time.Duration
	// MapPoll is how often the node checks the map version besides the
	// announcements (default 1s).
	MapPoll time.Duration
	// OpenOffload, if not nil, opens the flow offload that takes a
	// gateway's established TCP packets off its netfilter and routing
	// path (package offload). A gateway's Run opens it and closes it on
	// the way out, and gives it the node's logger; an instance host never
	// calls it.
	OpenOffload func(*slog.Logger) (Offload, error)
	// OffloadRequired makes a gateway whose offload cannot open or attach
	// (an older kernel, no CAP_BPF) refuse to start: the operator asked
	// for it. Otherwise the gateway logs why and steers without it.
	OffloadRequired bool
	// Rules holds everything about the kernel side except the hops, which
	// come from the map.
	Rules rules.Spec
	// KeepRules leaves the rules installed on exit: established flows keep
	// their path and, failing closed, new flows are dropped until an agent
	// reads again, so a restart lets no flow around its chain. With Redis,
	// the stopping agent also tells the controller it will be back within
	// RestartGrace (default 10s; negative: say nothing), so a restart
	// fails nothing over.
	KeepRules    bool
	RestartGrace time.Duration
	// MetricsAddr, if set, is where the agent serves Prometheus metrics
	// (/metrics).
	MetricsAddr string
	// LogFlows logs every decision (off the packet path, best effort).
	LogFlows bool
	// SessionTTL bounds how long a decided flow's pins are remembered.
	SessionTTL time.Duration
	Logger     *slog.Logger
}

// SpecFor returns the complete rules for node on t: base with the hops the
// node may steer to, which is every instance but its own.
func SpecFor(t *steering.Table, node string, base rules.Spec) (rules.Spec, error) {
	s := base
	s.Hops = nil
	self := t.NodeFor(node)
	gateway := roleOf(t, self, false) == Gateway
	if gateway && len(base.Outer) == 0 {
		return s, fmt.Errorf("node %q: %w, so it is a gateway: give its --outer interfaces (or --spare for a host about to be added)", node, ErrNotInMap)
	}
	if !gateway && len(base.Outer) > 0 {
		return s, fmt.Errorf("node %q is an instance host: it steers on every interface, --outer does not apply", node)
	}
	for i, in := range t.Instances() {
		if i == self.Instance {
			continue
		}
		s.Hops = append(s.Hops, rules.Hop{ID: in.ID, Name: in.Name, V4: in.V4, V6: in.V6})
	}
	var err error
	if s.Overlay, err = overlayFor(t, node); err != nil {
		return s, err
	}
	if s.Overlay != nil && !gateway {
		// The chain hands a zoned tenant's flows back to the gateway
		// they entered by: an instance host routes to the gateways too.
		_, nodes := t.OverlayNodes()
		for _, n := range nodes {
			if steering.GatewayNumber(n.ID) != 0 {
				s.Hops = append(s.Hops, rules.Hop{ID: n.ID, Name: n.Name, V4: n.V4, V6: n.V6},
					rules.Hop{ID: steering.ReturnID(n.ID), Name: n.Name, V4: n.V4, V6: n.V6, Return: true})
			}
		}
	}
	s.Ingress, s.Tags = tenantRules(t, gateway, s.Overlay != nil)
	return s, s.Validate()
}

// tenantRules returns the part of a node's rules that follows from t's
// tenants: on a gateway the ingress bindings, sorted by tenant, and on an
// overlay the tenants' tags, sorted by tag. A version that changes only
// tenants changes only these. It reads nothing on a node that needs
// neither.
func tenantRules(t *steering.Table, gateway, overlay bool) (ingress []rules.Binding, tags []rules.TenantTag) {
	if !gateway && !overlay {
		return nil, nil
	}
	for i, tn := range t.Tenants() {
		if t.TenantByName(tn.Name) != i {
			continue // removed in a later version
		}
		if gateway && len(tn.Ingress) > 0 {
			ingress = append(ingress, rules.Binding{Tenant: tn.Name, Ifaces: tn.Ingress, Prefixes: tn.Prefixes})
		}
		if overlay {
			tt := rules.TenantTag{Tag: tn.Tag, Prefixes: tn.Prefixes}
			if tn.Zoned() {
				tt.Ingress, tt.SNAT, tt.Via = tn.Ingress[0], tn.SNAT, tn.Via
			}
			tags = append(tags, tt)
		}
	}
	slices.SortFunc(ingress, func(a, b rules.Binding) int { return strings.Compare(a.Tenant, b.Tenant) })
	slices.SortFunc(tags, func(a, b rules.TenantTag) int { return int(a.Tag) - int(b.Tag) })
	return ingress, tags
}

// overlayFor returns node's part of t's overlay: its tunnel endpoint and
// every other node as a peer, or nil if t has no overlay.
func overlayFor(t *steering.Table, node string) (*rules.Overlay, error) {
	o, nodes := t.OverlayNodes()
	if o == nil {
		return nil, nil
	}
	ov := &rules.Overlay{VNI: o.VNI, Port: o.PortOrDefault()}
	for _, n := range nodes {
		if n.Name == node {
			ov.Local, ov.V4, ov.Gateway = n.Underlay, n.V4, steering.GatewayNumber(n.ID)
			continue
		}
		ov.Peers = append(ov.Peers, rules.Peer{Name: n.Name, Underlay: n.Underlay, V4: n.V4})
	}
	if !ov.Local.IsValid() {
		return nil, fmt.Errorf("node %q: the map's overlay does not name it: a gateway needs its address in overlay.gateways", node)
	}
	return ov, nil
}

// Task is one long-running part of the agent. It returns nil when ctx is
// done, or an error that stops the others.
type Task func(ctx context.Context) error

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = 5 * time.Minute
	}
	if c.RedisSessionTTL == 0 {
		c.RedisSessionTTL = 2 * time.Minute
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = 10 * time.Second
	}
	if c.IndexPruneInterval == 0 {
		c.IndexPruneInterval = 10 * time.Minute
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 25 * time.Millisecond
	}
	if c.RestartGrace == 0 {
		c.RestartGrace = 10 * time.Second
	}
	if c.MapPoll == 0 {
		c.MapPoll = time.Second
	}
}

// LoadSpec reads and compiles the map file at path and returns the complete
// rules for node: what the agent installs, and what `rules install` installs
// without an agent.
func LoadSpec(path, node string, base rules.Spec) (rules.Spec, error) {
	m, err := steering.LoadFile(path)
	if err != nil {
		return base, err
	}
	t, err := steering.Compile(m)
	if err != nil {
		return base, err
	}
	return SpecFor(t, node, base)
}
