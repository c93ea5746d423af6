//go:build linux

// Package tests holds nfsteer's integration tests and benchmarks: real
// agents, real iptables and real traffic in network namespaces built by
// package lab. They need root; under CI=true a skip is a failure.
package tests

import (
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// bin is the nfsteer binary under test, built once for the whole run.
var bin string

// raceBuild reports whether bin was built with -race (make
// integration-race). The race detector's shadow memory makes an agent's
// memory no measure of nfsteer's, so memory bounds are not checked then;
// every other assertion is.
func raceBuild(tb testing.TB) bool {
	tb.Helper()
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		tb.Fatalf("reading %s's build settings: %v", bin, err)
	}
	for _, s := range info.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

func TestMain(m *testing.M) {
	os.Exit(func() int {
		// NFSTEER_BIN runs the tests and benchmarks against another build
		// (an earlier commit's, for a before-and-after in one lab).
		if b := os.Getenv("NFSTEER_BIN"); b != "" {
			bin = b
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "nfsteer-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "nfsteer")
		build := exec.Command("go", "build", "-o", bin, "../cmd/nfsteer")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building nfsteer:", err)
			return 1
		}
		return m.Run()
	}())
}
