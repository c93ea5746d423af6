package store

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/nfsteer/nfsteer/signing"
)

// Sealed records. With a sealing key (Store.SealSessions), a session's
// record is stored as {"mac":"MAC",...}: MAC is the key's MAC of the flow
// and the record's JSON without it ({...}), so the record stays JSON and
// its end (the roles) is the same as unsealed. A function's state is
// stored as "MAC.STATE", its MAC over the flow, the service and the state.
// A reader that holds keys trusts neither without the MAC of one of them,
// unless it trusts unsealed records (signing.SessionKeys).

// macPrefix starts a sealed record.
const macPrefix = `{"mac":"`

var (
	// errUnsealed: the store has a session key, and the entry has no MAC.
	errUnsealed = errors.New("no MAC (written without the fleet's session key)")
	// errBadMAC: the entry's MAC is no trusted key's over its content.
	errBadMAC = errors.New("MAC does not match (not written with a session key this node trusts, or changed since)")
)

// SealSessions makes s seal the session records and function states it
// writes with ks.Seal, and refuse, as malformed, those it reads that no
// key of ks sealed, unless ks trusts unsealed ones and they carry no MAC.
// The zero SessionKeys seals and checks nothing. Call it before s is used.
func (s *Store) SealSessions(ks signing.SessionKeys) { s.sessionKeys = ks }

// sealRecord seals record m, the JSON of a meta, for flow.
func (s *Store) sealRecord(flow string, m []byte) []byte {
	k := s.sessionKeys.Seal
	if k == nil {
		return m
	}
	mac := base64.RawStdEncoding.EncodeToString(k.MAC("record", flow, string(m)))
	out := make([]byte, 0, len(macPrefix)+len(mac)+2+len(m))
	out = append(out, macPrefix...)
	out = append(out, mac...)
	out = append(out, '"', ',')
	return append(out, m[1:]...)
}

// openRecord checks a stored record of flow and returns its JSON without
// the MAC. A store that holds no key returns b as it is.
func (s *Store) openRecord(flow string, b []byte) ([]byte, error) {
	ks := &s.sessionKeys
	if !ks.Checks() {
		return b, nil
	}
	rest, ok := bytes.CutPrefix(b, []byte(macPrefix))
	if !ok {
		if ks.TrustsUnsealed() {
			return b, nil
		}
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
	if !ks.Check(mac, "record", flow, string(m)) {
		return nil, errBadMAC
	}
	return m, nil
}

// sealState seals service's state of flow.
func (s *Store) sealState(flow, service, state string) string {
	k := s.sessionKeys.Seal
	if k == nil {
		return state
	}
	return base64.RawStdEncoding.EncodeToString(k.MAC("state", flow, service, state)) + "." + state
}

// sealedStateMAC is the length of a sealed state's MAC, in base64, before
// its ".".
var sealedStateMAC = base64.RawStdEncoding.EncodedLen(signing.SessionMACSize)

// openState checks a stored state of service for flow and returns it.
func (s *Store) openState(flow, service, v string) (string, error) {
	ks := &s.sessionKeys
	if !ks.Checks() {
		return v, nil
	}
	if len(v) <= sealedStateMAC || v[sealedStateMAC] != '.' {
		// A state is JSON ({...}): without a MAC where a sealed one
		// has it, it is unsealed.
		if ks.TrustsUnsealed() {
			return v, nil
		}
		return "", fmt.Errorf("state of %s: %w", service, errUnsealed)
	}
	enc, state := v[:sealedStateMAC], v[sealedStateMAC+1:]
	mac, err := base64.RawStdEncoding.DecodeString(enc)
	if err != nil || !ks.Check(mac, "state", flow, service, state) {
		return "", fmt.Errorf("state of %s: %w", service, errBadMAC)
	}
	return state, nil
}
