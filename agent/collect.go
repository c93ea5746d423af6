package agent

import (
	"context"
	"runtime"
	"runtime/metrics"
	"time"
)

// This file holds the work a node does between map versions rather than
// inside a switch: preparing the held version for the next delta, and
// collecting garbage.
//
// Preparing ([steering.Published.Prepare]) copies the 10,000-entry tenant
// map that a tenant delta would otherwise copy while the node waits for
// the new version.
//
// The agent decides when it collects its garbage. Map switches are
// most of what an agent allocates (the packet path allocates nothing), and
// the runtime would start a collection inside a switch, stretching it from
// a fraction of a millisecond to tens. So the agent collects between
// versions instead: a little after a switch, when the next few switches
// could otherwise start a collection.
//
// "A little after" is for hosts that run several nodes, as the lab does:
// their agents switch each version within milliseconds of one another,
// and a collection takes every idle CPU, so one node collecting right
// after its switch slows the others'. BenchmarkMapPropagation, 40 tenant
// deltas: agents' own work p99 21 ms with collections left to the
// runtime, 5-11 ms collecting between versions (see BENCHMARKS.md).

// gcSettle is how long after a switch the agent waits to collect.
const gcSettle = 20 * time.Millisecond

// switchCollector runs work between map switches. Its methods are safe
// for concurrent use: the map watch reports switches, [run] does the work.
type switchCollector struct {
	// switched carries the allocation count at the start of a switch; it
	// holds one, the earliest not yet handled.
	switched chan uint64
	// prepare readies the node's current version for the next switch.
	prepare func()
}

func newSwitchCollector(prepare func()) *switchCollector {
	return &switchCollector{switched: make(chan uint64, 1), prepare: prepare}
}

// allocated returns how much the process has allocated since it started.
func allocated() uint64 {
	s := [1]metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s[:])
	return s[0].Value.Uint64()
}

// afterSwitch tells the collector a switch that began when allocated() was
// since is done. It never blocks.
func (c *switchCollector) afterSwitch(since uint64) {
	select {
	case c.switched <- since:
	default: // an earlier switch is waiting: it measures from further back
	}
}

// run prepares for the next switch and collects after switches until ctx
// is done.
func (c *switchCollector) run(ctx context.Context) error {
	for {
		var since uint64
		select {
		case <-ctx.Done():
			return nil
		case since = <-c.switched:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(gcSettle):
		}
		c.prepare()
		if near(since) {
			runtime.GC()
		}
	}
}

// near reports whether four more switches like the one that began when
// allocated() was since (and all allocated after it) could start a
// collection. The runtime starts one 70% to 95% of the way from the live
// heap to the goal, depending on the last cycles; this takes the earliest.
func near(since uint64) bool {
	s := [...]metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"}, // the heap now, garbage included
		{Name: "/gc/heap/live:bytes"},                // what the last collection kept
		{Name: "/gc/heap/goal:bytes"},
	}
	metrics.Read(s[:])
	return nearTrigger(s[0].Value.Uint64()-since, s[1].Value.Uint64(), s[2].Value.Uint64(), s[3].Value.Uint64())
}

// nearTrigger is near's arithmetic: a switch allocated perSwitch bytes; the
// heap holds heap bytes, live of them kept by the last collection, whose
// goal is goal.
func nearTrigger(perSwitch, heap, live, goal uint64) bool {
	return goal > live && heap+4*perSwitch >= live+(goal-live)*7/10
}
