package steering

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// This file holds the edits an operator makes to a published map between
// versions. Each returns a new Published (the receiver is not changed) that
// the publisher validates and numbers like any other version.

// Clone returns a copy of p, unnumbered (the publisher numbers it), whose
// lists may be changed; the Map is shared and must not be changed. Use it,
// not a copy of the value, to make the next version from p.
func (p *Published) Clone() *Published {
	// An edit may go on to change the map: what it was made from (applied,
	// appliedTo, checked) says nothing of the result.
	q := &Published{Map: p.Map, IDs: p.IDs, Down: p.Down, Drained: p.Drained, Unhealthy: p.Unhealthy, Migrating: p.Migrating,
		mapSum: p.mapSum, mapValid: p.mapValid, index: p.index}
	for _, l := range q.lists() {
		*l.names = slices.Clone(*l.names)
	}
	return q
}

// namedList is one of a Published's lists of instances.
type namedList struct {
	field string // as in the JSON document
	names *[]string
}

// lists returns p's lists of instances taken out of new-flow steering.
func (p *Published) lists() []namedList {
	return []namedList{{"down", &p.Down}, {"drained", &p.Drained}, {"unhealthy", &p.Unhealthy}, {"migrating", &p.Migrating}}
}

// ServiceOf returns the name of the service instance belongs to in p's
// map, or an error wrapping [ErrUnknownName].
func (p *Published) ServiceOf(instance string) (string, error) {
	if p.Map != nil {
		if name, ok := p.Map.serviceOf(instance); ok {
			return name, nil
		}
	}
	return "", fmt.Errorf("%w: instance %q", ErrUnknownName, instance)
}

// serviceOf returns the service instance belongs to.
func (m *Map) serviceOf(instance string) (string, bool) {
	for name, svc := range m.Services {
		if svc == nil {
			continue
		}
		if _, ok := svc.Instances[instance]; ok {
			return name, true
		}
	}
	return "", false
}

// Drain returns p with instance drained: it takes no new flows, keeps the
// ones it has. Draining a drained instance changes nothing.
func (p *Published) Drain(instance string) (*Published, error) {
	if _, err := p.ServiceOf(instance); err != nil {
		return nil, err
	}
	q := p.Clone()
	if !slices.Contains(q.Drained, instance) {
		q.Drained = append(q.Drained, instance)
		slices.Sort(q.Drained)
	}
	return q, nil
}

// Migrate returns p with instance drained and its established flows moving
// to the instances that hold their slots' primary roles without it.
func (p *Published) Migrate(instance string) (*Published, error) {
	q, err := p.Drain(instance)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(q.Migrating, instance) {
		q.Migrating = append(q.Migrating, instance)
		slices.Sort(q.Migrating)
	}
	return q, nil
}

// Undrain returns p with instance taking new flows again (and no longer
// migrating).
func (p *Published) Undrain(instance string) (*Published, error) {
	if _, err := p.ServiceOf(instance); err != nil {
		return nil, err
	}
	q := p.Clone()
	q.Drained = slices.DeleteFunc(q.Drained, func(n string) bool { return n == instance })
	q.Migrating = slices.DeleteFunc(q.Migrating, func(n string) bool { return n == instance })
	return q, nil
}

// WithMap returns p carrying m instead of its map: unnumbered, with its
// lists (Down, Drained, ...) keeping only instances m still has. IDs are
// kept; the publisher assigns IDs to new instances and drops those of
// removed ones.
func (p *Published) WithMap(m *Map) *Published {
	q := &Published{Map: m, IDs: p.IDs}
	from := p.lists()
	for i, l := range q.lists() {
		for _, n := range *from[i].names {
			if m.hasInstance(n) {
				*l.names = append(*l.names, n)
			}
		}
	}
	return q
}

// KeepsInService returns an error wrapping [ErrNoneInService] when next
// leaves a service that some tenant's chain uses with no instance in
// service (every one down, drained, unhealthy or migrating) while p did
// not: its new flows would fall back to out-of-service instances
// ([ServiceInfo.Fallback]). The error names each such service, the
// tenants using it and why each instance is out.
func (p *Published) KeepsInService(next *Published) error {
	var problems []string
	for _, sname := range slices.Sorted(maps.Keys(next.Map.Services)) {
		users := next.Map.TenantsOf(sname)
		if len(users) == 0 || next.outOf(sname) == nil || (p.Map.Services[sname] != nil && p.outOf(sname) != nil) {
			continue
		}
		problems = append(problems, fmt.Sprintf("service %s (in the chain of %s) would have no instance in service: %s",
			sname, strings.Join(users, ", "), strings.Join(next.outOf(sname), ", ")))
	}
	if problems == nil {
		return nil
	}
	return fmt.Errorf("%w: %s; its new flows would go to instances that are out. Bring one back first, or give --force",
		ErrNoneInService, strings.Join(problems, "; "))
}

// outOf describes why each instance of service is out ("fw-2 down"), or
// returns nil if one is in service (or the service has none).
func (p *Published) outOf(service string) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(p.Map.Services[service].Instances)) {
		var why []string
		for _, l := range p.lists() {
			if slices.Contains(*l.names, name) {
				why = append(why, l.field)
			}
		}
		if why == nil {
			return nil
		}
		out = append(out, name+" "+strings.Join(why, "+"))
	}
	return out
}

// SameAs reports whether p and q say the same thing, whatever their
// numbers: the same map and the same instances out of new-flow steering.
// Publishing q over p would change nothing on any node.
func (p *Published) SameAs(q *Published) bool {
	if p.MapDigest() != q.MapDigest() {
		return false
	}
	for i, l := range q.lists() {
		a, b := slices.Sorted(slices.Values(*p.lists()[i].names)), slices.Sorted(slices.Values(*l.names))
		if !slices.Equal(a, b) {
			return false
		}
	}
	return true
}

// MapDigest is the SHA-256 of p's map as published (its JSON): two
// versions with the same digest carry the same map.
func (p *Published) MapDigest() string {
	if p.mapSum != "" {
		return p.mapSum
	}
	b, err := json.Marshal(p.Map)
	if err != nil {
		return ""
	}
	return digest(b)
}

func (m *Map) hasInstance(name string) bool {
	_, ok := m.serviceOf(name)
	return ok
}

// The edits below never change m: a Map may be shared by published
// versions and compiled tables. Each returns a new Map that shares what did
// not change, and does not validate it (the publisher does, like any map).

// shallow returns a copy of m whose Services and Tenants maps may be
// changed; the values are still m's.
func (m *Map) shallow() *Map {
	return &Map{Slots: m.Slots, Services: maps.Clone(m.Services), Tenants: maps.Clone(m.Tenants), Overlay: m.Overlay}
}

// AddTenant returns m with tenant name added.
func (m *Map) AddTenant(name string, t Tenant) (*Map, error) {
	if _, ok := m.Tenants[name]; ok {
		return nil, fmt.Errorf("tenant %q: %w", name, ErrExists)
	}
	n := m.shallow()
	if n.Tenants == nil {
		n.Tenants = map[string]*Tenant{}
	}
	n.Tenants[name] = &t
	return n, nil
}

// RemoveTenant returns m without tenant name.
func (m *Map) RemoveTenant(name string) (*Map, error) {
	if _, ok := m.Tenants[name]; !ok {
		return nil, fmt.Errorf("%w: tenant %q", ErrUnknownName, name)
	}
	n := m.shallow()
	delete(n.Tenants, name)
	return n, nil
}

// AddService returns m with service name added.
func (m *Map) AddService(name string, s Service) (*Map, error) {
	if _, ok := m.Services[name]; ok {
		return nil, fmt.Errorf("service %q: %w", name, ErrExists)
	}
	for inst := range s.Instances {
		if m.hasInstance(inst) {
			return nil, fmt.Errorf("instance %q: %w", inst, ErrExists)
		}
	}
	n := m.shallow()
	if n.Services == nil {
		n.Services = map[string]*Service{}
	}
	n.Services[name] = &s
	return n, nil
}

// RemoveService returns m without service name, which no tenant's chain
// may name.
func (m *Map) RemoveService(name string) (*Map, error) {
	if _, ok := m.Services[name]; !ok {
		return nil, fmt.Errorf("%w: service %q", ErrUnknownName, name)
	}
	if users := m.TenantsOf(name); len(users) > 0 {
		return nil, fmt.Errorf("service %q: %w: in the chain of tenant %s (change their chains first)", name, ErrInUse, strings.Join(users, ", "))
	}
	n := m.shallow()
	delete(n.Services, name)
	return n, nil
}

// TenantsOf returns, sorted, the tenants whose chain names service.
func (m *Map) TenantsOf(service string) []string {
	var out []string
	for name, t := range m.Tenants {
		if t != nil && slices.Contains(t.Chain, service) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// AddInstance returns m with instance name, at addrs, added to service.
func (m *Map) AddInstance(service, name string, addrs Addresses) (*Map, error) {
	svc, ok := m.Services[service]
	if !ok || svc == nil {
		return nil, fmt.Errorf("%w: service %q", ErrUnknownName, service)
	}
	if m.hasInstance(name) {
		return nil, fmt.Errorf("instance %q: %w", name, ErrExists)
	}
	n := m.shallow()
	s := *svc
	s.Instances = maps.Clone(svc.Instances)
	if s.Instances == nil {
		s.Instances = map[string]Addresses{}
	}
	s.Instances[name] = slices.Clone(addrs)
	n.Services[service] = &s
	return n, nil
}

// RemoveInstance returns m without instance name. The last instance of a
// service some chain names cannot go.
func (m *Map) RemoveInstance(name string) (*Map, error) {
	for sname, svc := range m.Services {
		if svc == nil {
			continue
		}
		if _, ok := svc.Instances[name]; !ok {
			continue
		}
		if len(svc.Instances) == 1 {
			if users := m.TenantsOf(sname); len(users) > 0 {
				return nil, fmt.Errorf("instance %q: %w: the last instance of service %q, which tenant %s need", name, ErrInUse, sname, strings.Join(users, ", "))
			}
		}
		n := m.shallow()
		s := *svc
		s.Instances = maps.Clone(svc.Instances)
		delete(s.Instances, name)
		n.Services[sname] = &s
		return n, nil
	}
	return nil, fmt.Errorf("%w: instance %q", ErrUnknownName, name)
}
