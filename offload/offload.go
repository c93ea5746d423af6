package offload

import (
	"log/slog"
	"time"
)

// DefaultFlows is how many flow directions the offload holds unless
// [Config].Flows says otherwise: 32,768 connections.
const DefaultFlows = 131072

// Config is what [Open] loads the offload with.
type Config struct {
	// Flows bounds how many flow directions the offload holds, each of
	// their two passes through the gateway counted (DefaultFlows; 4 per
	// connection). The least recently used make room for new ones, and
	// take the kernel's path until learned again.
	Flows int
	// Refresh is how often an offloaded flow sends one packet the
	// kernel's way (default 1s): conntrack keeps the connection alive by it, and a
	// changed hop is learned again within it.
	Refresh time.Duration
	// HopMask is the part of the packet mark that carries nfsteer's hops
	// (rules.HopMask): a packet entering by a steered interface is learned
	// only with a hop there.
	HopMask uint32
	// OwnMark is a mark bit that no packet leaves netfilter with
	// (rules.MarkSteered): the offload marks its own packets with it on
	// their way out, for an instant.
	OwnMark uint32
	// Logger is told when connections cannot be made liberal in conntrack
	// (at most once a minute); default slog.Default().
	Logger *slog.Logger
}

func (c *Config) defaults() {
	if c.Flows <= 0 {
		c.Flows = DefaultFlows
	}
	if c.Refresh <= 0 {
		c.Refresh = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// failureLogEvery is how often at most [Path.Run] logs that it cannot make
// connections liberal: a conntrack that refuses every update would
// otherwise log every batch.
const failureLogEvery = time.Minute

// Stats counts what the offload did since it was opened.
type Stats struct {
	// Offloaded is the packets it forwarded itself.
	Offloaded uint64
	// Learned is the flow directions it learned (again, after an
	// invalidation or a changed hop).
	Learned uint64
	// Refreshed is the packets of offloaded flows it let take the
	// kernel's path, to refresh them.
	Refreshed uint64
	// Asked is the connections the programs found tracked but not yet
	// liberal, and asked [Path.Run] to make so (again, a second later,
	// if it did not).
	Asked uint64
	// Made is the connections Run made liberal in conntrack, and Failed
	// those it could not (conntrack refused the update).
	Made, Failed uint64
}

// Occupancy is how full the offload's flow table is, in flow directions
// (four a connection).
type Occupancy struct {
	// Live is those learned since the last invalidation that let a
	// packet take the kernel's path within the last two refresh
	// intervals: flows that are passing now.
	Live int
	// Held is every one the table holds: live, idle (a UDP flow that
	// went quiet) or stale (learned before an invalidation). Idle and
	// stale ones are the least recently used, and the first to make
	// room.
	Held int
	// Capacity is how many the table holds at most ([Config].Flows).
	Capacity int
}

// Full reports whether live flows take nine places in ten of the table
// or more: a new flow may then evict one that is passing, which takes the
// kernel's path until learned again. A table full of idle and stale
// flows is not full.
func (o Occupancy) Full() bool { return o.Capacity > 0 && o.Live*10 >= o.Capacity*9 }

// settle is how long after an invalidation the offload invalidates once
// more: a packet that entered the kernel's path just before the agent
// moved its flow's mark can reach the egress program just after, and
// teach it the old hop; it has left the gateway long before settle is up.
const settle = 20 * time.Millisecond
