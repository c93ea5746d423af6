package steering

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDrainUndrain(t *testing.T) {
	p, err := Local(labMap(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Version = 7
	d, err := p.Drain("fw-2")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.Drained, []string{"fw-2"}) || d.Version != 0 || len(p.Drained) != 0 {
		t.Fatalf("Drain: drained %v version %d (original drained %v); want [fw-2], 0, []", d.Drained, d.Version, p.Drained)
	}
	if d2, _ := d.Drain("fw-2"); !slices.Equal(d2.Drained, []string{"fw-2"}) {
		t.Errorf("draining twice: %v", d2.Drained)
	}
	if err := d.Validate(); err != nil {
		t.Errorf("drained map does not validate: %v", err)
	}
	u, err := d.Undrain("fw-2")
	if err != nil || len(u.Drained) != 0 {
		t.Errorf("Undrain: %v %v", u.Drained, err)
	}
	if _, err := p.Drain("fw-9"); !errors.Is(err, ErrUnknownName) {
		t.Errorf("Drain(fw-9) = %v, want ErrUnknownName", err)
	}
}

// A version that only drains an instance reuses the previous version's
// decoded map and every service's roles but that instance's, and decides
// exactly as a table compiled from scratch.
func TestCompileNextReuses(t *testing.T) {
	p, err := Local(labMap(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Version = 1
	doc1, _ := json.Marshal(p)
	p1, err := DecodePublishedAfter(doc1, nil)
	if err != nil {
		t.Fatal(err)
	}
	t1, err := CompilePublished(p1)
	if err != nil {
		t.Fatal(err)
	}
	d, err := p1.Drain("fw-1")
	if err != nil {
		t.Fatal(err)
	}
	d.Version = 2
	doc2, _ := json.Marshal(d)
	p2, err := DecodePublishedAfter(doc2, p1)
	if err != nil {
		t.Fatal(err)
	}
	if p2.Map != p1.Map {
		t.Error("the unchanged map was decoded again")
	}
	t2, err := CompileNext(t1, p2)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := CompilePublished(&Published{Version: 2, Map: labMap(t), IDs: p2.IDs, Drained: p2.Drained})
	if err != nil {
		t.Fatal(err)
	}
	for i, svc := range t2.Services() {
		if diff := cmp.Diff(fresh.Services()[i].Roles, svc.Roles); diff != "" {
			t.Errorf("service %s roles (-fresh +incremental):\n%s", svc.Name, diff)
		}
		reused := &svc.Roles[0] == &t1.Services()[i].Roles[0]
		if want := svc.Name != "fw"; reused != want {
			t.Errorf("service %s: roles reused %t, want %t", svc.Name, reused, want)
		}
	}
	if diff := cmp.Diff(fresh.Tenants(), t2.Tenants(), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("tenants (-fresh +incremental):\n%s", diff)
	}
	// A changed map is decoded and validated afresh.
	bad := bytes.Replace(doc2, []byte(`"fw-1"`), []byte(`"fw 1"`), 1)
	if _, err := DecodePublishedAfter(bad, p1); !errors.Is(err, ErrInvalidMap) {
		t.Errorf("changed, invalid map after a valid one: %v, want ErrInvalidMap", err)
	}
}
