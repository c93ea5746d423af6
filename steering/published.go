package steering

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
)

// Published is one version of the map as nfsteer shares it between nodes:
// the operator's map plus what the publisher adds to it. It is the unit of
// change: nodes swap from one Published to the next whole.
type Published struct {
	// Version increases by one with every change; nodes never go back.
	Version uint64 `json:"version"`
	// Map is the operator's map.
	Map *Map `json:"map"`
	// IDs numbers every instance of Map (1 to MaxID), and every gateway
	// of its overlay (FirstGatewayID to MaxGatewayID). Numbers are kept
	// from version to version, because they live on in the conntrack
	// marks and routing tables of established flows.
	IDs map[string]uint16 `json:"ids"`
	// Down lists instances the controller has found dead: they hold no
	// role, so their slots go to their secondaries, but flows pinned to
	// them keep their pins until a node moves them.
	Down []string `json:"down,omitempty"`
	// Drained lists instances that take no new flows (an operator's
	// decision); they keep the flows they have.
	Drained []string `json:"drained,omitempty"`
	// Unhealthy lists instances whose health score fell below the
	// controller's threshold: like drained ones they take no new flows and
	// keep the ones they have, but the controller puts them back.
	Unhealthy []string `json:"unhealthy,omitempty"`
	// Migrating lists drained instances whose established flows move too:
	// every node re-pins them, as for a down instance, to the slot's
	// primary, which the operator's tool handed their sessions to first.
	Migrating []string `json:"migrating,omitempty"`

	// mapSum is the SHA-256 of Map's JSON as published ("" if unknown),
	// mapValid says Map passed validation, and index is what validating it
	// learnt (nil if unknown). Only decoding, Encode and Apply set them,
	// and a Map is never changed once decoded: edits that change the map
	// build a new one. A version that changes only IDs or the lists (a
	// failover, a drain) then costs neither decoding nor validating the
	// map again, and one that changes a few tenants costs validating
	// those.
	mapSum   string
	mapValid bool
	index    *mapIndex
	// applied is the delta Apply made this version with, from a version
	// whose map was appliedTo: what changed, so that compiling it against
	// that version's table touches only the changed tenants.
	applied   *Delta
	appliedTo *Map
	// checked says Apply made this version from a valid one and checked
	// all it changed: it is valid whole.
	checked bool
	// spare is the copy of Map.Tenants that Prepare made for Apply.
	spare spareTenants
}

// MaxID is the highest instance ID: the mark has 12 bits per direction,
// value 1 means "pass" and value ID+1 means "steer to ID", and the IDs
// above MaxID are the overlay's gateways'.
const MaxID = 4063

// The IDs of the overlay's gateways: an instance host on an overlay sends
// a flow of a tenant with `snat` back to the gateway it entered by when it
// leaves the chain, and routes to a gateway as to an instance, by its ID
// (on its way out) or by its [ReturnID] (on its way back to the tenant,
// so that the gateway can tell the two apart). A gateway's number,
// ID-MaxID (1 to MaxGateways), rides in the overlay's tag (see package
// rules).
const (
	FirstGatewayID = MaxID + 1
	MaxGateways    = 15
	MaxGatewayID   = MaxID + MaxGateways
)

// GatewayIDFor is the ID of the gateway numbered n (see GatewayNumber).
func GatewayIDFor(n uint16) uint16 { return MaxID + n }

// ReturnID is the hop ID by which an instance host hands a zoned flow
// back to the gateway with ID id on its way back to the tenant.
func ReturnID(id uint16) uint16 { return id + MaxGateways }

// GatewayNumber is the number of the gateway whose ID is id (0 if id is
// not a gateway's).
func GatewayNumber(id uint16) uint16 {
	if id < FirstGatewayID || id > MaxGatewayID {
		return 0
	}
	return id - MaxID
}

// AssignIDs returns IDs for every instance of m and every gateway of its
// overlay: a node keeps its ID from prev, new ones get the lowest free IDs
// of their range in order of name.
func AssignIDs(m *Map, prev map[string]uint16) (map[string]uint16, error) {
	ids := map[string]uint16{}
	var instances, gateways []string
	for _, svc := range m.Services {
		if svc != nil {
			instances = slices.AppendSeq(instances, maps.Keys(svc.Instances))
		}
	}
	if m.Overlay != nil {
		gateways = slices.Collect(maps.Keys(m.Overlay.Gateways))
	}
	for _, r := range []struct {
		names    []string
		noun     string
		first, n uint16
	}{{instances, "instance", 1, MaxID}, {gateways, "gateway", FirstGatewayID, MaxGatewayID}} {
		used := map[uint16]bool{}
		var fresh []string
		for _, name := range r.names {
			if id, ok := prev[name]; ok && id >= r.first && id <= r.n && !used[id] {
				ids[name] = id
				used[id] = true
			} else {
				fresh = append(fresh, name)
			}
		}
		slices.Sort(fresh)
		next := r.first
		for _, name := range fresh {
			for used[next] {
				next++
			}
			if next > r.n {
				return nil, fmt.Errorf("%w: no free %s ID for %q (%d to %d)", ErrInvalidMap, r.noun, name, r.first, r.n)
			}
			ids[name] = next
			used[next] = true
		}
	}
	return ids, nil
}

// Validate checks the map and that IDs, Down and Drained agree with it.
func (p *Published) Validate() error {
	if p.Map == nil {
		return fmt.Errorf("%w: version %d has no map", ErrInvalidMap, p.Version)
	}
	if p.checked {
		return nil
	}
	if !p.mapValid {
		if err := p.Map.Validate(); err != nil {
			return err
		}
	}
	var v validator
	seen := map[uint16]string{}
	names := map[string]bool{}
	gateways := map[string]bool{}
	// checkID checks the ID of the node called name, a noun, in range.
	checkID := func(name, noun string, lo, hi uint16) {
		id, ok := p.IDs[name]
		switch {
		case !ok:
			v.add("ids."+name, noun+" has no ID")
		case id < lo || id > hi:
			v.add("ids."+name, fmt.Sprintf("%s ID %d out of range %d-%d", noun, id, lo, hi))
		case seen[id] != "":
			v.add("ids."+name, fmt.Sprintf("ID %d is also %s's", id, seen[id]))
		default:
			seen[id] = name
		}
	}
	for _, svc := range p.Map.Services {
		for name := range svc.Instances {
			names[name] = true
			checkID(name, "instance", 1, MaxID)
		}
	}
	if o := p.Map.Overlay; o != nil {
		for name := range o.Gateways {
			gateways[name] = true
			checkID(name, "gateway", FirstGatewayID, MaxGatewayID)
		}
	}
	for name := range p.IDs {
		if !names[name] && !gateways[name] {
			v.add("ids."+name, "no such instance or overlay gateway in the map")
		}
	}
	p.checkLists(&v, func(name string) bool { return names[name] })
	return v.err()
}

// checkLists checks that every instance p's lists name exists.
func (p *Published) checkLists(v *validator, exists func(string) bool) {
	for _, l := range p.lists() {
		for i, name := range *l.names {
			if !exists(name) {
				v.add(fmt.Sprintf("%s[%d]", l.field, i), fmt.Sprintf("no instance %q in the map", name))
			}
		}
	}
}

// document is a Published as JSON, the one layout both Encode and
// DecodePublished use. The map stays raw: its digest is taken over the
// bytes published.
type document struct {
	Version   uint64            `json:"version"`
	Map       json.RawMessage   `json:"map"`
	IDs       map[string]uint16 `json:"ids"`
	Down      []string          `json:"down,omitempty"`
	Drained   []string          `json:"drained,omitempty"`
	Unhealthy []string          `json:"unhealthy,omitempty"`
	Migrating []string          `json:"migrating,omitempty"`
}

// DecodeJSON decodes one JSON value into v as strictly as [Parse] reads a
// map file: an unknown field or anything after the value is an error. What
// comes from Redis (documents, deltas, the log) is read with it, so that
// no way into the map is looser than another.
func DecodeJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON value")
	}
	return nil
}

// DecodePublished decodes and validates a published map (JSON).
func DecodePublished(b []byte) (*Published, error) { return DecodePublishedAfter(b, nil) }

// DecodePublishedAfter is DecodePublished for the version that follows
// prev (which may be nil): if its map is byte for byte prev's (the same
// digest), prev's decoded and validated Map is reused.
func DecodePublishedAfter(b []byte, prev *Published) (*Published, error) {
	var raw document
	if err := DecodeJSON(b, &raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidMap, err)
	}
	p := &Published{Version: raw.Version, IDs: raw.IDs, Down: raw.Down, Drained: raw.Drained, Unhealthy: raw.Unhealthy, Migrating: raw.Migrating}
	switch {
	case len(raw.Map) == 0 || string(raw.Map) == "null":
	default:
		p.mapSum = digest(raw.Map)
		if prev != nil && prev.mapValid && prev.index != nil && prev.mapSum == p.mapSum {
			p.Map, p.mapValid, p.index = prev.Map, true, prev.index
			break
		}
		p.Map = new(Map)
		if err := DecodeJSON(raw.Map, p.Map); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidMap, err)
		}
		ix, err := p.Map.validate()
		if err != nil {
			return nil, err
		}
		p.mapValid, p.index = true, ix
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// Encode returns p's JSON document, as DecodePublished reads it, and
// records the digest of its map for [NewDelta].
func (p *Published) Encode() ([]byte, error) {
	m, err := json.Marshal(p.Map)
	if err != nil {
		return nil, fmt.Errorf("encoding map: %w", err)
	}
	doc, err := json.Marshal(document{p.Version, m, p.IDs, p.Down, p.Drained, p.Unhealthy, p.Migrating})
	if err != nil {
		return nil, fmt.Errorf("encoding map version %d: %w", p.Version, err)
	}
	p.mapSum = digest(m)
	return doc, nil
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Local wraps a map read from a file, for a node without Redis: version 0,
// IDs assigned afresh.
func Local(m *Map) (*Published, error) {
	ids, err := AssignIDs(m, nil)
	if err != nil {
		return nil, err
	}
	return &Published{Map: m, IDs: ids}, nil
}
