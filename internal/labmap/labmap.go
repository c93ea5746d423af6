package labmap

import (
	"testing"

	"github.com/nfsteer/nfsteer/steering"
)

// Firewall is the lab's map with fw as a stateful firewall: acme crosses
// fw then dlp and may open TCP to 10.99.0.0/24 on 5201 and 8000-8100, and
// UDP; globex crosses fw alone and has no allow rule.
const Firewall = `slots: 256
services:
  fw:
    function: firewall
    instances:
      fw-1: [10.200.0.11, "fd00:200::11"]
      fw-2: [10.200.0.12, "fd00:200::12"]
  dlp:
    instances:
      dlp-1: [10.200.0.21, "fd00:200::21"]
      dlp-2: [10.200.0.22, "fd00:200::22"]
tenants:
  acme:
    prefixes: [10.10.1.0/24, "fd00:10::/64"]
    chain: [fw, dlp]
    allow:
      - {proto: tcp, dst: 10.99.0.0/24, ports: ["5201", "8000-8100"]}
      - {proto: udp, dst: 10.99.0.0/24}
  globex: {prefixes: [10.20.1.0/24], chain: [fw]}
`

// Map parses [Firewall].
func Map(tb testing.TB) *steering.Map {
	tb.Helper()
	m, err := steering.Parse([]byte(Firewall))
	if err != nil {
		tb.Fatalf("parsing the lab map: %v", err)
	}
	return m
}

// Table compiles [Firewall] as a node without Redis would (version 0,
// instance IDs assigned afresh).
func Table(tb testing.TB) *steering.Table {
	tb.Helper()
	t, err := steering.Compile(Map(tb))
	if err != nil {
		tb.Fatalf("compiling the lab map: %v", err)
	}
	return t
}
