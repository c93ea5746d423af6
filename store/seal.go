package store

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/nfsteer/nfsteer/signing"
)

// Sealed records. With a session key (Store.SealSessions), a session's
// record is stored as {"mac":"MAC",...}: MAC is the key's MAC of the flow
// and the record's JSON without it ({...}), so the record stays JSON and
// its end (the roles) is the same as unsealed. A function's state is
// stored as "MAC.STATE", its MAC over the flow, the service and the state.
// A reader with the key trusts neither without its MAC.

// macPrefix starts a sealed record.
const macPrefix = `{"mac":"`

var (
	// errUnsealed: the store has a session key, and the entry has no MAC.
	errUnsealed = errors.New("no MAC (written without the fleet's session key)")
	// errBadMAC: the entry's MAC is not the key's over its content.
	errBadMAC = errors.New("MAC does not match (not written with the fleet's session key, or changed since)")
)

// SealSessions makes s seal the session records and function states it
// writes with k, and refuse, as malformed, those it reads that k did not
// seal (nil: neither). Call it before s is used.
func (s *Store) SealSessions(k *signing.SessionKey) { s.sessionKey = k }

// sealRecord seals record m, the JSON of a meta, for flow.
func (s *Store) sealRecord(flow string, m []byte) []byte {
	if s.sessionKey == nil {
		return m
	}
	mac := base64.RawStdEncoding.EncodeToString(s.sessionKey.MAC("record", flow, string(m)))
	out := make([]byte, 0, len(macPrefix)+len(mac)+2+len(m))
	out = append(out, macPrefix...)
	out = append(out, mac...)
	out = append(out, '"', ',')
	return append(out, m[1:]...)
}

// openRecord checks a stored record of flow and returns its JSON without
// the MAC. Without a session key it returns b as it is.
func (s *Store) openRecord(flow string, b []byte) ([]byte, error) {
	if s.sessionKey == nil {
		return b, nil
	}
	rest, ok := bytes.CutPrefix(b, []byte(macPrefix))
	if !ok {
		return nil, errUnsealed
	}
	enc, m, ok := bytes.Cut(rest, []byte(`",`))
	if !ok {
		return nil, errBadMAC
	}
	mac, err := base64.RawStdEncoding.DecodeString(string(enc))
	if err != nil {
		return nil, errBadMAC
	}
	m = append([]byte{'{'}, m...)
	if !s.sessionKey.Check(mac, "record", flow, string(m)) {
		return nil, errBadMAC
	}
	return m, nil
}

// sealState seals service's state of flow.
func (s *Store) sealState(flow, service, state string) string {
	if s.sessionKey == nil {
		return state
	}
	return base64.RawStdEncoding.EncodeToString(s.sessionKey.MAC("state", flow, service, state)) + "." + state
}

// openState checks a stored state of service for flow and returns it.
func (s *Store) openState(flow, service, v string) (string, error) {
	if s.sessionKey == nil {
		return v, nil
	}
	enc, state, ok := strings.Cut(v, ".")
	if !ok {
		return "", fmt.Errorf("state of %s: %w", service, errUnsealed)
	}
	mac, err := base64.RawStdEncoding.DecodeString(enc)
	if err != nil || !s.sessionKey.Check(mac, "state", flow, service, state) {
		return "", fmt.Errorf("state of %s: %w", service, errBadMAC)
	}
	return state, nil
}
