package store

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/signing"
)

// FuzzDecodeRecord: a session's record as Redis holds it (written by any
// version of nfsteer, or by hand) never panics the reader; what it accepts
// is valid and reads the same after being written back, unsealed and
// sealed; a sealed one with a byte changed is refused.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(`{"flow":"tcp/10.10.1.2:40000/10.99.0.2:5201","tenant":"acme","code":7,"slot":7,"version":3,"created":1700000000000,"hops":[{"service":"fw","primary":"fw-1","secondary":"fw-2"}]}`, "1700000000500", `{"verdict":"allow","rule":0,"takeover":false}`)
	f.Add(`{"flow":"x","hops":[]}`, "", "")
	f.Add(`{not json`, "nope", "")
	f.Add(`{"mac":"AAAA","flow":"x","hops":[]}`, "", "AAAA.x")
	key, err := signing.NewSessionKey(make([]byte, signing.SessionKeySize))
	if err != nil {
		f.Fatal(err)
	}
	plain, sealed := &Store{}, &Store{sessionKey: key}
	f.Fuzz(func(t *testing.T, record, updated, state string) {
		var probe struct{ Flow string }
		json.Unmarshal([]byte(record), &probe)
		flow := probe.Flow
		sealed.decodeRecord(flow, record, map[string]string{"updated": updated, "st:fw": state})
		r, err := plain.decodeRecord(flow, record, map[string]string{"updated": updated, "st:fw": state})
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("decodeRecord accepted an invalid record: %v", err)
		}
		b, err := json.Marshal(metaOf(r))
		if err != nil {
			t.Fatal(err)
		}
		again, err := plain.decodeRecord(flow, string(b), map[string]string{"updated": updated, "st:fw": state})
		if err != nil {
			t.Fatalf("a record written back does not decode: %v", err)
		}
		if diff := cmp.Diff(r, again); diff != "" {
			t.Errorf("record written back (-first +again):\n%s", diff)
		}
		sb := sealed.sealRecord(flow, b)
		fields := map[string]string{"updated": updated, "st:fw": sealed.sealState(flow, "fw", state)}
		if state == "" {
			delete(fields, "st:fw")
			delete(r.State, "fw")
			if len(r.State) == 0 {
				r.State = nil
			}
		}
		got, err := sealed.decodeRecord(flow, string(sb), fields)
		if err != nil {
			t.Fatalf("a sealed record does not decode: %v\n%s", err, sb)
		}
		if diff := cmp.Diff(r, got); diff != "" {
			t.Errorf("sealed record (-first +sealed):\n%s", diff)
		}
		changed := []byte(string(sb))
		changed[len(changed)-2] ^= 1
		if _, err := sealed.decodeRecord(flow, string(changed), fields); err == nil {
			t.Errorf("a sealed record with a byte changed was accepted: %s", changed)
		}
	})
}
