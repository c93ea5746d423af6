package lab

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRacy: a process whose log holds the race detector's report is named,
// and one whose log does not is not.
func TestRacy(t *testing.T) {
	dir := t.TempDir()
	logOf := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	l := &Lab{agents: []*Process{
		{Node: "gw", Log: logOf("gw", "level=INFO msg=ready\n")},
		{Node: "fw-1", Log: logOf("fw-1", "level=INFO msg=ready\n==================\nWARNING: DATA RACE\nWrite at 0x00c000123 by goroutine 7:\n")},
	}}
	if diff := cmp.Diff([]string{"fw-1"}, l.racy()); diff != "" {
		t.Errorf("racy (-want +got):\n%s", diff)
	}
}
