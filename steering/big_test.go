package steering

import (
	"encoding/json"
	"fmt"
	"testing"
)

// BigMap returns a map of instances instances spread over 10 services and
// tenants tenants with 3-service chains, all IPv6: instances on
// fd00:200::/64, one /64 per tenant in fd10::/48. 1,000 and 10,000 is the
// size the propagation target is set for.
func bigMap(instances, tenants int) *Map {
	m := &Map{Slots: 4096, Services: map[string]*Service{}, Tenants: map[string]*Tenant{}}
	const services = 10
	for s := 0; s < services; s++ {
		m.Services[fmt.Sprintf("svc%d", s)] = &Service{Instances: map[string]Addresses{}}
	}
	for i := 0; i < instances; i++ {
		m.Services[fmt.Sprintf("svc%d", i%services)].Instances[fmt.Sprintf("i%04d", i)] = Addresses{fmt.Sprintf("fd00:200::1:%x", i)}
	}
	for t := 0; t < tenants; t++ {
		m.Tenants[fmt.Sprintf("t%05d", t)] = &Tenant{
			Prefixes: []string{fmt.Sprintf("fd10:0:0:%x::/64", t)},
			Chain:    []string{fmt.Sprintf("svc%d", t%services), fmt.Sprintf("svc%d", (t+1)%services), fmt.Sprintf("svc%d", (t+2)%services)},
		}
	}
	return m
}

func BenchmarkBigMap(b *testing.B) {
	p, err := Local(bigMap(1000, 10000))
	if err != nil {
		b.Fatal(err)
	}
	doc, _ := json.Marshal(p)
	b.Logf("document: %d bytes", len(doc))
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			if _, err := DecodePublished(doc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("compile", func(b *testing.B) {
		for b.Loop() {
			if _, err := CompilePublished(p); err != nil {
				b.Fatal(err)
			}
		}
	})
	// What a node does with an announced delta: apply it to the version it
	// holds, then compile against its table. Each version follows the one
	// before, as on a node: the tenant comes and goes, the instance is
	// drained and undrained. A prepared version is one whose tenants were
	// copied between versions, as agents do, outside the timed part.
	p.Version = 1
	held, err := DecodePublished(doc)
	if err != nil {
		b.Fatal(err)
	}
	table, err := CompilePublished(held)
	if err != nil {
		b.Fatal(err)
	}
	extra := &Tenant{Prefixes: []string{"fd20::/64"}, Chain: []string{"svc0"}}
	tenantAdded := func(on bool) *Delta {
		if on {
			return &Delta{Tenants: map[string]*Tenant{"extra": extra}}
		}
		return &Delta{Removed: []string{"extra"}}
	}
	for _, tt := range []struct {
		name    string
		prepare bool
		next    func(on bool) *Delta
	}{
		{"delta-tenant-added", false, tenantAdded},
		{"delta-tenant-added-prepared", true, tenantAdded},
		{"delta-drain", false, func(on bool) *Delta {
			if on {
				return &Delta{Drained: []string{"i0100"}}
			}
			return &Delta{}
		}},
	} {
		b.Run(tt.name, func(b *testing.B) {
			on := true
			for b.Loop() {
				d := tt.next(on)
				d.Base, d.Version = held.Version, held.Version+1
				q, err := held.Apply(d)
				if err != nil {
					b.Fatal(err)
				}
				if table, err = CompileNext(table, q); err != nil {
					b.Fatal(err)
				}
				held, on = q, !on
				if tt.prepare {
					b.StopTimer()
					held.Prepare()
					b.StartTimer()
				}
			}
		})
	}
}
