package store

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/nfsteer/nfsteer/signing"
	"github.com/redis/go-redis/v9"
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

// splitRecord splits stored record b into its MAC and its JSON without
// the MAC. sealed is false for a record that carries none; ok is false
// for one whose MAC does not decode.
func splitRecord(b []byte) (mac, m []byte, sealed, ok bool) {
	rest, sealed := bytes.CutPrefix(b, []byte(macPrefix))
	if !sealed {
		return nil, b, false, true
	}
	enc, m, ok := bytes.Cut(rest, []byte(`",`))
	if !ok {
		return nil, nil, true, false
	}
	mac, err := base64.RawStdEncoding.DecodeString(string(enc))
	if err != nil {
		return nil, nil, true, false
	}
	return mac, append([]byte{'{'}, m...), true, true
}

// openRecord checks a stored record of flow and returns its JSON without
// the MAC. A store that holds no key returns b as it is.
func (s *Store) openRecord(flow string, b []byte) ([]byte, error) {
	ks := &s.sessionKeys
	if !ks.Checks() {
		return b, nil
	}
	mac, m, sealed, ok := splitRecord(b)
	switch {
	case !sealed && ks.TrustsUnsealed():
		return b, nil
	case !sealed:
		return nil, errUnsealed
	case !ok || !ks.Check(mac, "record", flow, string(m)):
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

// splitState splits stored state v into its MAC and the state. A state
// is JSON ({...}); a sealed one starts with its MAC in base64, which has
// no '{'. So v is not sealed if it starts with '{' (a state whose byte
// where a sealed one has its "." happens to be one is still a state), nor
// if it has no "." after a MAC's length; ok is false for a MAC that does
// not decode.
func splitState(v string) (mac []byte, state string, sealed, ok bool) {
	if strings.HasPrefix(v, "{") || len(v) <= sealedStateMAC || v[sealedStateMAC] != '.' {
		return nil, v, false, true
	}
	mac, err := base64.RawStdEncoding.DecodeString(v[:sealedStateMAC])
	return mac, v[sealedStateMAC+1:], true, err == nil
}

// openState checks a stored state of service for flow and returns it.
func (s *Store) openState(flow, service, v string) (string, error) {
	ks := &s.sessionKeys
	if !ks.Checks() {
		return v, nil
	}
	mac, state, sealed, ok := splitState(v)
	switch {
	case !sealed && ks.TrustsUnsealed():
		return v, nil
	case !sealed:
		return "", fmt.Errorf("state of %s: %w", service, errUnsealed)
	case !ok || !ks.Check(mac, "state", flow, service, state):
		return "", fmt.Errorf("state of %s: %w", service, errBadMAC)
	}
	return state, nil
}

// errNoSealingKey: resealing needs a key to seal with.
var errNoSealingKey = errors.New("resealing sessions needs the key to seal them with (--session-key)")

// resealScript rewrites a session's record, keeping its life, only if it
// is still the one read. KEYS: session. ARGV: the record read, the record
// sealed anew. Returns 1 if written.
var resealScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
`)

// resealStateScript rewrites a function's state of a session only if it
// is still the one read. KEYS: state. ARGV: field, the state read, the
// state sealed anew. Returns 1 if written.
var resealStateScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
`)

// sealedWithSealKey reports whether record b of flow carries the MAC of
// the store's sealing key.
func (s *Store) sealedWithSealKey(flow string, b []byte) bool {
	mac, m, sealed, ok := splitRecord(b)
	return sealed && ok && s.sessionKeys.Seal.Check(mac, "record", flow, string(m))
}

// stateSealedWithSealKey reports whether v, service's state of flow,
// carries the MAC of the store's sealing key.
func (s *Store) stateSealedWithSealKey(flow, service, v string) bool {
	mac, state, sealed, ok := splitState(v)
	return sealed && ok && s.sessionKeys.Seal.Check(mac, "state", flow, service, state)
}

// Reseal seals anew, with the store's sealing key, the records and
// function states of the sessions instance holds the primary role for
// that another key the store trusts sealed, or that carry no seal while
// it trusts those. A record is rewritten only when its roles change, so
// the records of flows that outlive a fleet's change of key keep the old
// seal, and the old key could not be dropped until they ended. Each entry
// is rewritten only if it is unchanged since it was read, and keeps its
// life in Redis. It returns how many records and states it rewrote; an
// entry the store does not trust is left as it is and returned in bad.
func (s *Store) Reseal(ctx context.Context, instance string) (resealed int, bad []error, err error) {
	if s.sessionKeys.Seal == nil {
		return 0, nil, errNoSealingKey
	}
	flows, err := s.indexed(ctx, instance, RolePrimary)
	if err != nil {
		return 0, nil, err
	}
	const batch = 256
	for len(flows) > 0 {
		n := min(len(flows), batch)
		part := flows[:n]
		flows = flows[n:]
		pipe := s.rdb.Pipeline()
		recs := make([]*redis.StringCmd, n)
		states := make([]*redis.MapStringStringCmd, n)
		for i, f := range part {
			recs[i] = pipe.Get(ctx, sessionKey(f))
			states[i] = pipe.HGetAll(ctx, stateKey(f))
		}
		if cmds, err := pipe.Exec(ctx); err != nil {
			if err := failed(cmds, err); err != nil {
				return resealed, bad, fmt.Errorf("reading sessions to reseal from %s: %w", s.addr, permission(err))
			}
		}
		pipe = s.rdb.Pipeline()
		var writes []*redis.Cmd
		for i, f := range part {
			raw, err := recs[i].Result()
			if err != nil {
				continue // gone meanwhile
			}
			m, err := s.openRecord(f, []byte(raw))
			if err != nil {
				bad = append(bad, fmt.Errorf("session %s: %w: record: %v", sessionKey(f), ErrMalformed, err))
				continue
			}
			if !s.sealedWithSealKey(f, []byte(raw)) {
				writes = append(writes, resealScript.Eval(ctx, pipe, []string{sessionKey(f)}, raw, s.sealRecord(f, m)))
			}
			for field, v := range states[i].Val() {
				service, ok := strings.CutPrefix(field, "st:")
				if !ok || s.stateSealedWithSealKey(f, service, v) {
					continue
				}
				st, err := s.openState(f, service, v)
				if err != nil {
					bad = append(bad, fmt.Errorf("session %s: %w: %v", sessionKey(f), ErrMalformed, err))
					continue
				}
				writes = append(writes, resealStateScript.Eval(ctx, pipe, []string{stateKey(f)}, field, v, s.sealState(f, service, st)))
			}
		}
		if len(writes) == 0 {
			continue
		}
		if cmds, err := pipe.Exec(ctx); err != nil {
			if err := failed(cmds, err); err != nil {
				return resealed, bad, fmt.Errorf("resealing sessions at %s: %w", s.addr, permission(err))
			}
		}
		for _, w := range writes {
			if n, _ := w.Int(); n == 1 {
				resealed++
			}
		}
	}
	return resealed, bad, nil
}
