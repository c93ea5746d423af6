package steering

import (
	"errors"
	"slices"
	"testing"
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
