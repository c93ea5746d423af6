package store

import (
	"encoding/json"
	"slices"
	"strconv"

	"github.com/nfsteer/nfsteer/sessions"
)

// meta is a session's record, the string at its sessionKey: everything
// but the update time and the functions' later state (at its stateKey),
// so that one SET NX GET creates a session whole with its expiry, first
// writer wins, and tells a writer that lost the winner's record. A
// takeover rewrites it (casScript).
type meta struct {
	Flow    string `json:"flow"`
	Tenant  string `json:"tenant"`
	Code    uint32 `json:"code"`
	Slot    uint32 `json:"slot"`
	Version uint64 `json:"version"`
	Created int64  `json:"created"`
	// State is the state of the function that created the session, by
	// service: the first firewall of a TCP connection keeps its verdict
	// in the record it creates (batch.queue). A field of the state hash
	// for the same service, written later, overrides it. It goes before
	// Hops, whose encoding ends a record (createCmd.hops).
	State map[string]string `json:"state,omitempty"`
	Hops  []sessions.Hop    `json:"hops"`
	// creator, when State is empty and its service is named (a gateway,
	// which has none, writes no state), is the one state a create writes,
	// its writer's own, which appendJSON encodes as State's only entry: a
	// firewall creates a record per new connection, and building a map
	// for each would cost an eighth of the writer's CPU
	// (BenchmarkSessionsWrite). encoding/json, which only reads records,
	// does not see it.
	creator ownState
}

// ownState is a function's state of a session, named by its service.
type ownState struct{ service, state string }

// metaOf is the part of r a session's record string holds, but the
// creator's state: a Record does not tell it from state written later,
// and the create that writes a meta adds its own (batch.queue).
func metaOf(r *sessions.Record) meta {
	return meta{Flow: r.Flow, Tenant: r.Tenant, Code: r.Code, Slot: r.Slot, Version: r.Version, Created: r.Created, Hops: r.Hops}
}

// record is the Record m holds, updated when it was created until a state
// write or a takeover says otherwise.
func (m *meta) record() *sessions.Record {
	r := &sessions.Record{Flow: m.Flow, Tenant: m.Tenant, Code: m.Code, Slot: m.Slot, Version: m.Version,
		Created: m.Created, Updated: m.Created, Hops: m.Hops, State: m.State}
	if len(r.State) == 0 {
		r.State = nil // "state":{} is no state
	}
	return r
}

// appendJSON appends m's JSON to b, byte for byte what json.Marshal
// writes for it, and returns it with the length of its tail from
// `,"hops":` on (createCmd.hops). A create encodes a meta per new flow:
// encoding/json's reflection cost about 1.3 µs and several allocations
// of it (BenchmarkSessionsWrite).
func (m *meta) appendJSON(b []byte) (out []byte, hopsLen int) {
	b = append(b, `{"flow":`...)
	b = appendJSONString(b, m.Flow)
	b = append(b, `,"tenant":`...)
	b = appendJSONString(b, m.Tenant)
	b = append(b, `,"code":`...)
	b = strconv.AppendUint(b, uint64(m.Code), 10)
	b = append(b, `,"slot":`...)
	b = strconv.AppendUint(b, uint64(m.Slot), 10)
	b = append(b, `,"version":`...)
	b = strconv.AppendUint(b, m.Version, 10)
	b = append(b, `,"created":`...)
	b = strconv.AppendInt(b, m.Created, 10)
	if len(m.State) > 0 {
		b = append(b, `,"state":{`...)
		// encoding/json writes a map's keys sorted. A record holds one
		// state (its creator's): sorting is for the general case.
		keys := make([]string, 0, len(m.State))
		for k := range m.State {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, m.State[k])
		}
		b = append(b, '}')
	} else if m.creator.service != "" {
		b = append(b, `,"state":{`...)
		b = appendJSONString(b, m.creator.service)
		b = append(b, ':')
		b = appendJSONString(b, m.creator.state)
		b = append(b, '}')
	}
	start := len(b)
	b = appendHopsJSON(b, m.Hops)
	return b, len(b) - start
}

// appendHopsJSON appends the end of a record: its roles, hops, and the
// record's closing brace. Every record this package writes ends so, sealed
// or not, which lets a reader that knows the roles it expects compare
// ends instead of decoding (batch.reconcile, batch.settle).
func appendHopsJSON(b []byte, hops []sessions.Hop) []byte {
	b = append(b, `,"hops":`...)
	if hops == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range hops {
			h := &hops[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"service":`...)
			b = appendJSONString(b, h.Service)
			b = append(b, `,"primary":`...)
			b = appendJSONString(b, h.Primary)
			if h.Secondary != "" {
				b = append(b, `,"secondary":`...)
				b = appendJSONString(b, h.Secondary)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// appendJSONString appends s as encoding/json writes a string. Flows,
// names and a firewall's state are printable ASCII, written here; a
// string with anything else (which encoding/json escapes in its own
// ways: control characters, <, > and &, invalid UTF-8, U+2028) is left
// to encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == '\\' {
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return append(b, '"')
}
