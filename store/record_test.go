package store

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzDecodeRecord: a session's record as Redis holds it (written by any
// version of nfsteer, or by hand) never panics the reader; what it accepts
// is valid and reads the same after being written back.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(`{"flow":"tcp/10.10.1.2:40000/10.99.0.2:5201","tenant":"acme","code":7,"slot":7,"version":3,"created":1700000000000,"hops":[{"service":"fw","primary":"fw-1","secondary":"fw-2"}]}`, "1700000000500", `{"verdict":"allow","rule":0,"takeover":false}`)
	f.Add(`{"flow":"x","hops":[]}`, "", "")
	f.Add(`{not json`, "nope", "")
	f.Fuzz(func(t *testing.T, record, updated, state string) {
		r, err := decodeRecord(record, map[string]string{"updated": updated, "st:fw": state})
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("decodeRecord accepted an invalid record: %v", err)
		}
		m := metaOf(r)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeRecord(string(b), map[string]string{"updated": updated, "st:fw": state})
		if err != nil {
			t.Fatalf("a record written back does not decode: %v", err)
		}
		if diff := cmp.Diff(r, again); diff != "" {
			t.Errorf("record written back (-first +again):\n%s", diff)
		}
	})
}
