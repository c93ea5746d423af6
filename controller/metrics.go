package controller

import (
	"slices"

	"github.com/nfsteer/nfsteer/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// Collector returns a Prometheus collector of the controller's counters,
// read at scrape time.
func (c *Controller) Collector() prometheus.Collector { return collector{c} }

type collector struct{ c *Controller }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("nfsteer_controller_"+name, help, labels, nil)
}

var (
	descActive     = desc("active", "1 while this controller holds the lease and acts; 0 on a standby.")
	descFailovers  = desc("failovers_total", "Instances marked down (their slots went to their secondaries).")
	descRecoveries = desc("recoveries_total", "Instances marked up again.")
	descTakenOut   = desc("unhealthy_total", "Instances taken out of new-flow steering for a low health score.")
	descPutBack    = desc("healthy_again_total", "Instances put back into new-flow steering.")
	descPublishes  = desc("publishes_total", "Map versions published for health changes.")
	descScore      = desc("instance_health_score", "Each instance's health score (0-100) from its last report.", "service_instance")
	descDown       = desc("instance_down", "1 while the live map has the instance down (its heartbeats stopped).", "service_instance")
	descUnhealthy  = desc("instance_unhealthy", "1 while the live map keeps the instance out of new-flow steering for its health score.", "service_instance")
	descMapVersion = desc("map_version", "Live map version as last read.")
	descRefused    = desc("maps_refused_total", "Live map versions refused (invalid, or not signed by a trusted key); the controller acts on none of them.")
)

func (c collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	ctl := c.c
	ch <- metrics.Gauge(descActive, flag(ctl.Active.Load()))
	ch <- metrics.Counter(descFailovers, ctl.Failovers.Load())
	ch <- metrics.Counter(descRecoveries, ctl.Recoveries.Load())
	ch <- metrics.Counter(descTakenOut, ctl.TakenOut.Load())
	ch <- metrics.Counter(descPutBack, ctl.PutBack.Load())
	ch <- metrics.Counter(descPublishes, ctl.Publishes.Load())
	ch <- metrics.Counter(descRefused, ctl.MapsRefused.Load())
	for name, s := range ctl.Scores() {
		ch <- metrics.Gauge(descScore, float64(s), name)
	}
	live := ctl.live.Load()
	if live == nil {
		return
	}
	ch <- metrics.Gauge(descMapVersion, float64(live.Version))
	for _, svc := range live.Map.Services {
		for name := range svc.Instances {
			ch <- metrics.Gauge(descDown, flag(slices.Contains(live.Down, name)), name)
			ch <- metrics.Gauge(descUnhealthy, flag(slices.Contains(live.Unhealthy, name)), name)
		}
	}
}

func flag(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
