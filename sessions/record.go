package sessions

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nfsteer/nfsteer/steering"
)

// Record is a session as nodes share it through Redis: where a Session
// holds instance IDs, which only mean something on one map version, a
// Record names the instances, and for each position of the tenant's chain
// it names the primary (the instance pinned) and the secondary (the one
// that would take over from it). [NewRecord] and [Record.Pins] translate
// between the two; nothing else should.
type Record struct {
	Flow    string `json:"flow"`
	Tenant  string `json:"tenant"`
	Code    uint32 `json:"code"`
	Slot    uint32 `json:"slot"`
	Version uint64 `json:"version"` // map version the first writer decided on
	Created int64  `json:"created"` // Unix ms
	Updated int64  `json:"updated"` // Unix ms
	// Hops has one entry per position of the tenant's chain.
	Hops []Hop `json:"hops"`
	// State holds each service function's own state for the flow, by
	// service name (see [FirewallState]).
	State map[string]string `json:"state,omitempty"`
	// TTL is how long Redis keeps the entry unless refreshed.
	TTL time.Duration `json:"ttl"`
}

// Hop is the instances holding a session's roles at one position of its
// chain.
type Hop struct {
	Service   string `json:"service"`
	Primary   string `json:"primary"`
	Secondary string `json:"secondary,omitempty"`
}

// NewRecord names s on t: its pinned instances as primaries (the slot's
// primary where nothing is pinned yet) and, for each, the instance that
// would take over from it: the slot's primary if the flow is pinned
// elsewhere, else its secondary. It reports false if t has no tenant of
// s's name (the tenant is gone from the map: there is nothing to name).
// Updated, State and TTL are left for the store.
func NewRecord(t *steering.Table, s *Session) (Record, bool) {
	ti := t.TenantByName(s.Tenant)
	if ti < 0 {
		return Record{}, false
	}
	slot := t.SlotOf(s.Code)
	chain := t.Tenants()[ti].Chain
	hops := make([]Hop, len(chain))
	for i, svc := range chain {
		hops[i].Service = t.Services()[svc].Name
		pr, sec := t.RolesFor(svc, slot)
		pinned := pr
		if in, ok := t.InstanceByID(s.Pins[i]); ok && s.Pins[i] != 0 {
			pinned = in
		}
		hops[i].Primary = pinned.Name
		switch {
		case pr != nil && pr.Name != pinned.Name:
			hops[i].Secondary = pr.Name
		case sec != nil && sec.Name != pinned.Name:
			hops[i].Secondary = sec.Name
		}
	}
	return Record{
		Flow: s.Key.String(), Tenant: s.Tenant, Code: s.Code, Slot: slot, Version: t.Version(),
		Created: s.Created / 1e6, Hops: hops,
	}, true
}

// Pins returns the IDs on t of the instances r names as primaries, at the
// positions r names them (an instance t does not know leaves its position
// unpinned). matches says t has r's tenant with a chain as long as r's:
// only then do the positions mean the same services.
func (r *Record) Pins(t *steering.Table) (pins steering.Pins, matches bool) {
	ti := t.TenantByName(r.Tenant)
	if ti < 0 {
		return pins, false
	}
	for i, h := range r.Hops {
		if i >= len(pins) {
			break
		}
		if in, ok := t.InstanceByName(h.Primary); ok {
			pins[i] = in.ID
		}
	}
	return pins, len(r.Hops) == len(t.Tenants()[ti].Chain)
}

// Validate checks what every record must hold to be read at all: a flow
// key, one to steering.MaxChain hops, and a primary at each.
func (r *Record) Validate() error {
	if _, err := ParseKey(r.Flow); err != nil {
		return fmt.Errorf("flow: %v", err)
	}
	if len(r.Hops) < 1 || len(r.Hops) > steering.MaxChain {
		return fmt.Errorf("%d hops", len(r.Hops))
	}
	for i, h := range r.Hops {
		if h.Primary == "" {
			return fmt.Errorf("hop %d has no primary", i)
		}
	}
	return nil
}

// FirewallState is a firewall's own state of a session, as the session's
// record holds it under the firewall's service name: whether the firewall
// admitted the flow, by which allow rule, and whether the instance took
// it over from another.
type FirewallState struct {
	Verdict  string `json:"verdict"` // "allow", or "none" for a flow it did not admit
	Rule     int16  `json:"rule"`
	Takeover bool   `json:"takeover"`
}

// Verdicts a [FirewallState] holds.
const (
	VerdictAllow = "allow"
	VerdictNone  = "none"
)

// FirewallState returns s's firewall state as a record holds it (the
// inverse of [ParseFirewallState]).
func (s *Session) FirewallState() string {
	if s.Rule < 0 {
		return `{"verdict":"` + VerdictNone + `"}`
	}
	return `{"verdict":"` + VerdictAllow + `","rule":` + strconv.Itoa(int(s.Rule)) + `,"takeover":` + strconv.FormatBool(s.TakenOver) + `}`
}

// ParseFirewallState decodes a firewall's state from a record.
func ParseFirewallState(s string) (FirewallState, error) {
	var f FirewallState
	if err := json.Unmarshal([]byte(s), &f); err != nil {
		return FirewallState{}, fmt.Errorf("firewall state %q: %v", s, err)
	}
	return f, nil
}

// Admitted reports whether the firewall let the flow in.
func (f FirewallState) Admitted() bool { return f.Verdict == VerdictAllow }
