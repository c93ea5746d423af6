//go:build linux

package tests

import (
	"testing"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/tests/lab"
	"github.com/nfsteer/nfsteer/tests/redislab"
)

// TestFailoverThroughTLSRedis runs the failover test with Redis TLS-only
// (rediss://, client certificates required): the operator applies, the
// agents mirror and beat, the controller fails the primary over, all
// through TLS, and the transfer survives byte-exact.
func TestFailoverThroughTLSRedis(t *testing.T) {
	l := lab.NewWithMap(t, bin, labmap.Firewall)
	pki := redislab.NewPKI(t, lab.Control)
	srv := l.StartRedisTLS(t, pki)
	tlsArgs := []string{"--redis", srv.URL, "--redis-ca", pki.CA, "--redis-cert", pki.ClientCert, "--redis-key", pki.ClientKey}
	if out, err := l.Nfsteer("ctl", append([]string{"apply", "-f", l.MapFile}, tlsArgs...)...); err != nil {
		t.Fatalf("apply over TLS: %v\n%s", err, out)
	}
	if out, err := l.Nfsteer("ctl", "map", "show", "--redis", srv.URL, "--redis-ca", pki.OtherCA,
		"--redis-cert", pki.ClientCert, "--redis-key", pki.ClientKey); err == nil {
		t.Fatalf("map show trusting another CA succeeded:\n%s", out)
	}
	if err := l.StartAll(append(tlsArgs, "--refresh", "500ms")...); err != nil {
		t.Fatal(err)
	}
	if _, err := l.StartController("controller", tlsArgs...); err != nil {
		t.Fatal(err)
	}
	res, _, primary, secondary, _ := runFailoverIn(t, l)
	if res.Err != nil {
		t.Fatalf("transfer broke across the failover from %s to %s: %v", primary, secondary, res.Err)
	}
}
