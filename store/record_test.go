package store

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/signing"
)

// FuzzDecodeRecord: a session's record as Redis holds it (written by any
// version of nfsteer, or by hand; with its creator's state or without)
// never panics the reader; what it accepts
// is valid and reads the same after being written back, unsealed and
// sealed; a sealed one reads the same where its key is accepted, and an
// unsealed one where unsealed records are; a sealed one with a byte
// changed is refused.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(`{"flow":"tcp/10.10.1.2:40000/10.99.0.2:5201","tenant":"acme","code":7,"slot":7,"version":3,"created":1700000000000,"hops":[{"service":"fw","primary":"fw-1","secondary":"fw-2"}]}`, "1700000000500", `{"verdict":"allow","rule":0,"takeover":false}`)
	f.Add(`{"flow":"tcp/10.10.1.2:40000/10.99.0.2:5201","tenant":"acme","code":7,"slot":7,"version":3,"created":1700000000000,"state":{"fw":"{\"verdict\":\"allow\",\"rule\":0,\"takeover\":false}","ips":"{}"},"hops":[{"service":"fw","primary":"fw-1","secondary":"fw-2"}]}`, "", "")
	f.Add(`{"flow":"tcp/10.10.1.2:40000/10.99.0.2:5201","hops":[{"service":"fw","primary":"fw-1"}],"state":{}}`, "1", `{"verdict":"deny"}`)
	f.Add(`{"flow":"x","hops":[]}`, "", "")
	f.Add(`{not json`, "nope", "")
	f.Add(`{"mac":"AAAA","flow":"x","hops":[]}`, "", "AAAA.x")
	key, err := signing.NewSessionKey(make([]byte, signing.SessionKeySize))
	if err != nil {
		f.Fatal(err)
	}
	next, err := signing.NewSessionKey(append(make([]byte, signing.SessionKeySize-1), 1))
	if err != nil {
		f.Fatal(err)
	}
	plain, sealed := &Store{}, &Store{sessionKeys: signing.SessionKeys{Seal: key}}
	rotated := &Store{sessionKeys: signing.SessionKeys{Seal: next, Accept: []*signing.SessionKey{key}}}
	starting := &Store{sessionKeys: signing.SessionKeys{Seal: key, Unsealed: true}}
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
		// Written back as a takeover writes a record: its meta, decoded
		// and encoded again.
		var m meta
		if err := json.Unmarshal([]byte(record), &m); err != nil {
			t.Fatalf("decodeRecord accepted a record that is not JSON: %v", err)
		}
		b, hopsLen := m.appendJSON(nil)
		if want, _ := json.Marshal(m); string(b) != string(want) {
			t.Fatalf("meta.appendJSON wrote\n%s\nwhere encoding/json writes\n%s", b, want)
		}
		if tail := string(b[len(b)-hopsLen:]); !strings.HasPrefix(tail, `,"hops":`) {
			t.Fatalf("meta.appendJSON says its hops start at %q", tail)
		}
		// A create writes its own state as the creator's, without a map:
		// the same bytes as a State of that one entry. A creator is a
		// function, whose service has a name: one without is none.
		for svc, st := range m.State {
			if len(m.State) != 1 || svc == "" {
				break
			}
			c := m
			c.State, c.creator = nil, ownState{svc, st}
			if got, _ := c.appendJSON(nil); string(got) != string(b) {
				t.Fatalf("meta.appendJSON wrote the creator's state as\n%s\nand as State's only entry\n%s", got, b)
			}
		}
		again, err := plain.decodeRecord(flow, string(b), map[string]string{"updated": updated, "st:fw": state})
		if err != nil {
			t.Fatalf("a record written back does not decode: %v", err)
		}
		if diff := cmp.Diff(r, again); diff != "" {
			t.Errorf("record written back (-first +again):\n%s", diff)
		}
		if state == "" || state[0] == '{' {
			// What nfsteer writes (a state is JSON), unsealed, read by a
			// node that accepts unsealed records while the fleet starts
			// sealing.
			got, err := starting.decodeRecord(flow, string(b), map[string]string{"updated": updated, "st:fw": state})
			if err != nil {
				t.Fatalf("an unsealed record is refused where unsealed ones are accepted: %v", err)
			}
			if diff := cmp.Diff(r, got); diff != "" {
				t.Errorf("unsealed record read where accepted (-first +got):\n%s", diff)
			}
		}
		sb := sealed.sealRecord(flow, b)
		fields := map[string]string{"updated": updated, "st:fw": sealed.sealState(flow, "fw", state)}
		if state == "" {
			// No hash field: the record's own state is all there is.
			delete(fields, "st:fw")
			r.State = m.record().State
		}
		got, err := sealed.decodeRecord(flow, string(sb), fields)
		if err != nil {
			t.Fatalf("a sealed record does not decode: %v\n%s", err, sb)
		}
		if diff := cmp.Diff(r, got); diff != "" {
			t.Errorf("sealed record (-first +sealed):\n%s", diff)
		}
		got, err = rotated.decodeRecord(flow, string(sb), fields)
		if err != nil {
			t.Fatalf("a sealed record does not decode where its key is accepted: %v\n%s", err, sb)
		}
		if diff := cmp.Diff(r, got); diff != "" {
			t.Errorf("sealed record read where its key is accepted (-first +got):\n%s", diff)
		}
		if _, err := (&Store{sessionKeys: signing.SessionKeys{Seal: next}}).decodeRecord(flow, string(sb), fields); err == nil {
			t.Errorf("a record sealed with another key was accepted: %s", sb)
		}
		changed := []byte(string(sb))
		changed[len(changed)-2] ^= 1
		if _, err := sealed.decodeRecord(flow, string(changed), fields); err == nil {
			t.Errorf("a sealed record with a byte changed was accepted: %s", changed)
		}
	})
}

// TestSplitState: a stored state is sealed when it starts with a MAC and
// a "."; a state (JSON) is never taken for a sealed one, even with a "."
// where a sealed one has it.
func TestSplitState(t *testing.T) {
	mac := make([]byte, signing.SessionMACSize)
	mac[0] = 7
	enc := base64.RawStdEncoding.EncodeToString(mac)
	dotted := `{"rule":"` + strings.Repeat("a", sealedStateMAC-len(`{"rule":"`)) + `.b"}`
	if dotted[sealedStateMAC] != '.' {
		t.Fatalf("the case has no '.' where a sealed state has it: %q", dotted)
	}
	type split struct {
		MAC        []byte
		State      string
		Sealed, OK bool
	}
	for _, tc := range []struct {
		name, v string
		want    split
	}{
		{"sealed", enc + `.{"verdict":"allow"}`, split{mac, `{"verdict":"allow"}`, true, true}},
		{"a state", `{"verdict":"allow"}`, split{nil, `{"verdict":"allow"}`, false, true}},
		{"a state with a dot where a sealed one has it", dotted, split{nil, dotted, false, true}},
		{"a MAC that does not decode", strings.Repeat("!", sealedStateMAC) + ".{}", split{nil, "{}", true, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got split
			got.MAC, got.State, got.Sealed, got.OK = splitState(tc.v)
			if !got.OK {
				got.MAC = nil
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("splitState(%q) (-want +got):\n%s", tc.v, diff)
			}
		})
	}
}
