package steering

import (
	"errors"
	"fmt"
	"slices"
)

// ErrUnknownName is wrapped by edits that name a tenant, service or
// instance the map does not have.
var ErrUnknownName = errors.New("no such name in the map")

// This file holds the edits an operator makes to a published map between
// versions. Each returns a new Published (the receiver is not changed) that
// the publisher validates and numbers like any other version.

// clone returns a copy of p, unnumbered (the publisher numbers it), whose
// lists may be changed; the Map is shared.
func (p *Published) clone() *Published {
	q := *p
	q.Version = 0
	q.Down = slices.Clone(p.Down)
	q.Drained = slices.Clone(p.Drained)
	return &q
}

// ServiceOf returns the name of the service instance belongs to in p's
// map, or an error wrapping [ErrUnknownName].
func (p *Published) ServiceOf(instance string) (string, error) {
	if p.Map != nil {
		for name, svc := range p.Map.Services {
			if svc == nil {
				continue
			}
			if _, ok := svc.Instances[instance]; ok {
				return name, nil
			}
		}
	}
	return "", fmt.Errorf("%w: instance %q", ErrUnknownName, instance)
}

// Drain returns p with instance drained: it takes no new flows, keeps the
// ones it has. Draining a drained instance changes nothing.
func (p *Published) Drain(instance string) (*Published, error) {
	if _, err := p.ServiceOf(instance); err != nil {
		return nil, err
	}
	q := p.clone()
	if !slices.Contains(q.Drained, instance) {
		q.Drained = append(q.Drained, instance)
		slices.Sort(q.Drained)
	}
	return q, nil
}

// Undrain returns p with instance taking new flows again.
func (p *Published) Undrain(instance string) (*Published, error) {
	if _, err := p.ServiceOf(instance); err != nil {
		return nil, err
	}
	q := p.clone()
	q.Drained = slices.DeleteFunc(q.Drained, func(n string) bool { return n == instance })
	return q, nil
}
