package steering

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPlanApply(t *testing.T) {
	live := version1(t, labMap(t))
	live.Version = 7
	without := func(tenant string) *Map {
		m := *live.Map
		m.Tenants = map[string]*Tenant{}
		for n, tt := range live.Map.Tenants {
			if n != tenant {
				m.Tenants[n] = tt
			}
		}
		return &m
	}
	other := version1(t, without("globex"))
	for _, tc := range []struct {
		name    string
		m       *Map
		o       ApplyOptions
		changes []Change
		err     error
		msg     string
	}{
		{"the live map", live.Map, ApplyOptions{}, nil, nil, ""},
		{"a removal without prune", without("acme"), ApplyOptions{}, nil, ErrWouldRemove, "the file does not have tenant acme"},
		{"a removal with prune", without("acme"), ApplyOptions{Prune: true}, []Change{{Op: "remove", Kind: "tenant", Name: "acme"}}, nil, ""},
		{"at the live version", live.Map, ApplyOptions{Base: Base{Version: 7}}, nil, nil, ""},
		{"at an older version", live.Map, ApplyOptions{Base: Base{Version: 6}}, nil, ErrMovedOn, "made from version 6 and the live map is at version 7"},
		{"exported from this map", live.Map, ApplyOptions{Base: Base{Digest: live.MapDigest(), Exported: 3}}, nil, nil, ""},
		{"exported from another map", live.Map, ApplyOptions{Base: Base{Digest: other.MapDigest(), Exported: 3}}, nil, ErrMovedOn, "exported from version 3 and the map has changed since (live version 7)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next, changes, err := PlanApply(live, tc.m, tc.o)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("PlanApply = %v; want %v saying %q", err, tc.err, tc.msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.changes, changes); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
			if next.Version != 0 || next.Map != tc.m {
				t.Errorf("next is version %d with map %p; want unnumbered, carrying the file's map", next.Version, next.Map)
			}
			if same := next.SameAs(live); same != (len(changes) == 0) {
				t.Errorf("SameAs = %v with %d changes", same, len(changes))
			}
		})
	}
}

func TestExportHeader(t *testing.T) {
	p := version1(t, labMap(t))
	p.Version = 12
	file := ExportHeader(p) + "services: {}\n"
	got, ok := BaseOf([]byte(file))
	if want := (Base{Digest: p.MapDigest(), Exported: 12}); !ok || got != want {
		t.Errorf("BaseOf(ExportHeader) = %+v, %v; want %+v", got, ok, want)
	}
	if _, ok := BaseOf([]byte("# a map written by hand\nservices: {}\n")); ok {
		t.Error("BaseOf found a header in a file without one")
	}
}

// FuzzBaseOf: no file panics the header reader, and what it finds is what
// ExportHeader writes.
func FuzzBaseOf(f *testing.F) {
	f.Add([]byte("# nfsteer map export of live version 3, map sha256:" + strings.Repeat("ab", 32) + "\n"))
	f.Add([]byte("# nfsteer map export of live version 99999999999999999999, map sha256:00\n"))
	f.Fuzz(func(t *testing.T, file []byte) {
		b, ok := BaseOf(file)
		if !ok {
			return
		}
		if len(b.Digest) != 64 || b.Version != 0 {
			t.Fatalf("BaseOf(%q) = %+v", file, b)
		}
	})
}

func TestKeepsInService(t *testing.T) {
	live := version1(t, labMap(t)) // fw: fw-1, fw-2; dlp: dlp-1, dlp-2
	with := func(down, drained []string) *Published {
		q := live.Clone()
		q.Down, q.Drained = down, drained
		return q
	}
	for _, tc := range []struct {
		name       string
		from, next *Published
		want       string // "" for no error
	}{
		{"one of two drained", live, with(nil, []string{"fw-1"}), ""},
		{"the last one drained", with([]string{"fw-2"}, nil), with([]string{"fw-2"}, []string{"fw-1"}),
			"service fw (in the chain of acme, globex) would have no instance in service: fw-1 drained, fw-2 down"},
		{"already in fallback: no worse", with([]string{"fw-1", "fw-2"}, nil), with([]string{"fw-1", "fw-2"}, []string{"fw-1"}), ""},
		{"two services at once", live, with([]string{"fw-1", "dlp-1"}, []string{"fw-2", "dlp-2"}), "service dlp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.from.KeepsInService(tc.next)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrNoneInService) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("KeepsInService = %v; want ErrNoneInService saying %q", err, tc.want)
			}
		})
	}
	// The table says so too.
	tab, err := CompilePublished(with([]string{"fw-2"}, []string{"fw-1"}))
	if err != nil {
		t.Fatal(err)
	}
	fw := &tab.Services()[tab.ServiceByName("fw")]
	if !fw.Fallback() || tab.Services()[tab.ServiceByName("dlp")].Fallback() {
		t.Error("Fallback: want fw in fallback and dlp not")
	}
	if got := tab.Instances()[fw.Instances[0]].States(); !cmp.Equal(got, []string{"drained"}) {
		t.Errorf("fw-1 States = %v", got)
	}
}
