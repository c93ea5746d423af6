package agent

import (
	"github.com/nfsteer/nfsteer/metrics"
	"github.com/nfsteer/nfsteer/nfq"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/prometheus/client_golang/prometheus"
)

// collector exports the agent's counters to Prometheus. It reads them at
// scrape time, so the packet path only ever adds to atomics.
type collector struct {
	a *Agent
	// reader is the queue reader's counters, once Run has created it.
	reader func() *nfq.Stats
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("nfsteer_"+name, help, labels, nil)
}

var (
	descQueued      = desc("packets_queued_total", "Packets the kernel queued to userspace (the first of each flow and direction).")
	descVerdicts    = desc("verdicts_total", "Verdicts sent, by kind.", "verdict")
	descDecisions   = desc("decisions_total", "Steering decisions, by kind.", "kind")
	descSteered     = desc("steered_total", "New flows and directions steered to each next-hop instance.", "service_instance")
	descNewFlows    = desc("new_flows_total", "Flows this node decided first and recorded.")
	descReopened    = desc("reopened_flows_total", "New TCP connections on the 5-tuple of a closed one, decided afresh (counted in new_flows_total too).")
	descResumed     = desc("resumed_flows_total", "Live flows an earlier run of the agent decided that this run took back from Redis as it started, to refresh and end their sessions (an instance's).")
	descSessions    = desc("sessions_active", "Flows in the local session table.")
	descParseErrs   = desc("parse_errors_total", "Queued packets that could not be parsed (dropped if a tenant's, else let through undecided).")
	descFragments   = desc("fragments_total", "Queued fragments (dropped if a tenant's, else let through undecided).")
	descUndecidable = desc("undecidable_dropped_total", "Unparseable packets and fragments of a tenant, dropped rather than sent around its chain (counted in parse_errors_total or fragments_total too).")
	descMistagged   = desc("mistagged_dropped_total", "Packets an overlay node's agent dropped because their tag named no tenant, a tenant neither of their addresses belongs to, or a gateway the map does not have.")
	descFirewall    = desc("firewall_verdicts_total", "Firewall verdicts on flows new to this instance, by outcome.", "outcome")
	descLookups     = desc("session_lookups_total", "Redis session lookups for packets memory could not decide, by outcome.", "outcome")
	descKWaiting    = desc("kernel_queue_waiting", "Packets waiting in the kernel queues for a verdict.")
	descKDropped    = desc("kernel_queue_dropped_total", "Packets the kernel dropped because a queue was full (--overload drop). With --overload bypass they pass instead, uncounted here: see unsteered_flows_total.")
	descKUserDrop   = desc("kernel_queue_user_dropped_total", "Packets the kernel could not deliver to the agent's socket.")
	descUnsteered   = desc("unsteered_flows_total", "New flows forwarded without a steering decision (counted by a kernel rule): let around the chain by a full queue with --overload bypass, or by --fail open while no agent read the queues, or whose first packet the agent could not parse.")
	descSpoofed     = desc("spoofed_packets_total", "Packets dropped (by kernel rules) for entering where their source may not: outside the prefixes of the tenant bound to their ingress interface, or from a bound tenant's prefixes on another interface.")
	descUntagged    = desc("untagged_packets_total", "Packets an overlay node dropped (by kernel rules): on an instance host, for arriving with no tenant's tag, with a tag that names no tenant, or from outside the overlay; on a gateway with zoned tenants, for arriving with a tag of no tenant, or for going to a zoned tenant's addresses without coming back through its chain.")
	descMirrorDepth = desc("mirror_queue_depth", "Session operations waiting to be written to Redis.")
	descMirrorOps   = desc("mirror_operations_total", "Session operations by fate: queued, written, dropped (the queue full, or not written by the end of a stopping agent's flush), refused (by Redis, for good: a key of another type).", "fate")
	descMirrorFail  = desc("mirror_write_failures_total", "Batch writes to Redis that failed and were retried.")
	descMirrorSync  = desc("mirror_resyncs_total", "Times every local session was rewritten to Redis.")
	descMapVersion  = desc("map_version", "Version of the map this node steers by (0: a map file).")
	descMapSwitches = desc("map_switches_total", "Map versions installed after the first.")
	descMapRefused  = desc("map_refused_total", "Map versions refused: invalid, not signed by a trusted key, older than the node's, or changing the node's role.")
	descRepinned    = desc("repinned_total", "Established connections moved off instances a map took away.")
	descOffload     = desc("offload_packets_total", "A gateway's flow offload (--offload), by what it did with a packet: forwarded it itself (offloaded), learned its flow's hop from it (learned), or let it take the kernel's path to keep its connection alive in conntrack (refreshed).", "kind")
	descOffloadHeld = desc("offload_flows", "Flow directions (four a connection) a gateway's flow offload holds, counted every 30 s at the default size: live (learned since the last map switch, passing in the last two --offload-refresh intervals) and held (live, idle or from before the switch; the least recently used make room).", "state")
	descOffloadCap  = desc("offload_flows_capacity", "Flow directions a gateway's flow offload can hold (--offload-flows). With live ones near it, new flows evict passing ones, which take the kernel's path until learned again.")
	descLiberal     = desc("offload_liberal_total", "Connections a gateway's flow offload found in conntrack but not yet liberal about TCP windows (asked), and those the agent then made liberal (made) or could not (failed): the offload carries a connection only once it is.", "kind")
)

func (c collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

// newHistograms makes the agent's duration histograms.
func (a *Agent) newHistograms() {
	a.switchSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "nfsteer_map_switch_seconds", Help: "Time from reading a new map version to having it installed.", Buckets: metrics.DurationBuckets,
	})
	a.mirrorSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "nfsteer_mirror_write_seconds", Help: "Duration of the session mirror's successful batch writes to Redis.", Buckets: metrics.DurationBuckets,
	})
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	a, k := c.a, &c.a.Counters
	ctr := func(d *prometheus.Desc, v uint64, l ...string) { ch <- metrics.Counter(d, v, l...) }
	if c.reader != nil {
		if s := c.reader(); s != nil {
			ctr(descQueued, s.Packets.Load())
			ctr(descVerdicts, s.Accepted.Load(), "accept")
			ctr(descVerdicts, s.Dropped.Load(), "drop")
			ctr(descVerdicts, s.Deferred.Load(), "defer")
		}
	}
	for kind := range k.Decisions {
		ctr(descDecisions, k.Decisions[kind].Load(), steering.Kind(kind).String())
	}
	st := a.state.Load()
	for _, in := range st.table.Instances() {
		if int(in.ID) < len(k.Steered) {
			ctr(descSteered, k.Steered[in.ID].Load(), in.Name)
		}
	}
	ctr(descNewFlows, k.NewFlows.Load())
	ctr(descReopened, k.Reopened.Load())
	ctr(descResumed, k.Resumed.Load())
	ch <- metrics.Gauge(descSessions, float64(a.flows.Len()))
	ctr(descParseErrs, k.ParseError.Load())
	ctr(descFragments, k.Fragments.Load())
	ctr(descUndecidable, k.Undecidable.Load())
	ctr(descMistagged, k.Mistagged.Load())
	ctr(descFirewall, k.Admitted.Load(), "admitted")
	ctr(descFirewall, k.Denied.Load(), "denied")
	ctr(descFirewall, k.TakenOver.Load(), "taken_over")
	ctr(descFirewall, k.Unknown.Load(), "unknown")
	ctr(descLookups, k.Joined.Load(), "joined")
	ctr(descLookups, k.LookupErrors.Load(), "error")
	ctr(descLookups, k.LookupsShed.Load(), "shed")
	if q, ok := kernelQueues(); ok {
		ch <- metrics.Gauge(descKWaiting, float64(q.waiting))
		ctr(descKDropped, q.dropped)
		ctr(descKUserDrop, q.userDropped)
	}
	ctr(descUnsteered, k.Unsteered.Load())
	ctr(descSpoofed, k.Spoofed.Load())
	ctr(descUntagged, k.Untagged.Load())
	if m := a.mirror; m != nil {
		ch <- metrics.Gauge(descMirrorDepth, float64(m.Stats.Depth.Load()))
		ctr(descMirrorOps, m.Stats.Queued.Load(), "queued")
		ctr(descMirrorOps, m.Stats.Written.Load(), "written")
		ctr(descMirrorOps, m.Stats.Dropped.Load(), "dropped")
		ctr(descMirrorOps, m.Stats.Refused.Load(), "refused")
		ctr(descMirrorFail, m.Stats.Failures.Load())
		ctr(descMirrorSync, m.Stats.Resyncs.Load())
	}
	ch <- metrics.Gauge(descMapVersion, float64(st.table.Version()))
	ctr(descMapSwitches, k.Maps.Load())
	ctr(descMapRefused, k.MapsRefused.Load())
	a.switchSeconds.Collect(ch)
	if a.mirror != nil {
		a.mirrorSeconds.Collect(ch)
	}
	ctr(descRepinned, k.Repinned.Load())
	if o := a.offload; o != nil {
		if fs, err := o.Stats(); err == nil {
			ctr(descOffload, fs.Offloaded, "offloaded")
			ctr(descOffload, fs.Learned, "learned")
			ctr(descOffload, fs.Refreshed, "refreshed")
			ctr(descLiberal, fs.Asked, "asked")
			ctr(descLiberal, fs.Made, "made")
			ctr(descLiberal, fs.Failed, "failed")
		}
		if held := a.offloadHeld.Load(); held != nil {
			ch <- metrics.Gauge(descOffloadHeld, float64(held.Live), "live")
			ch <- metrics.Gauge(descOffloadHeld, float64(held.Held), "held")
			ch <- metrics.Gauge(descOffloadCap, float64(held.Capacity))
		}
	}
}

// queueTotals sums the kernel's counters over this namespace's queues.
type queueTotals struct{ waiting, dropped, userDropped uint64 }

// kernelQueues reads the kernel's queue counters; ok is false if they
// cannot be read (no queue bound yet, or no nfnetlink_queue).
func kernelQueues() (t queueTotals, ok bool) {
	qs, err := nfq.ReadKernelQueueStats()
	if err != nil {
		return t, false
	}
	for _, q := range qs {
		t.waiting += uint64(q.Waiting)
		t.dropped += uint64(q.QueueDropped)
		t.userDropped += uint64(q.UserDropped)
	}
	return t, true
}
