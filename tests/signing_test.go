//go:build linux

package tests

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/tests/lab"
)

// TestForgedMapIsRefused: agents that trust the operators' key keep their
// map when someone with only Redis access publishes a version under
// another key, and the server shows it: the forged version would have
// closed a port, and connections to it still open. The operator's signed
// version, published over the forgery, closes it.
func TestForgedMapIsRefused(t *testing.T) {
	dir := t.TempDir()
	ops, evil := filepath.Join(dir, "ops.key"), filepath.Join(dir, "evil.key")
	l := lab.NewWithMap(t, bin, labmap.Firewall)
	for _, k := range []string{ops, evil} {
		if out, err := l.Nfsteer("ctl", "key", "generate", "--out", k); err != nil {
			t.Fatalf("key generate: %v\n%s", err, out)
		}
	}
	l.StartRedis(t)
	if out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", l.MapFile, "--signing-key", ops); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if err := l.StartAll("--redis", lab.RedisURL, "--trust-key", ops+".pub"); err != nil {
		t.Fatal(err)
	}

	const srv = "10.99.0.2:8060"
	accepted := countAccepts(t, l, srv)
	connect := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := l.Dial(ctx, "ca", "tcp", lab.AcmeClient+":0", srv)
		if err == nil {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
		return err
	}
	if err := connect(); err != nil {
		t.Fatalf("a connection the firewall allows: %v", err)
	}

	refusing := strings.Replace(labmap.Firewall, `ports: ["5201", "8000-8100"]`, `ports: ["5201"]`, 1)
	path := filepath.Join(dir, "refusing.yaml")
	if err := os.WriteFile(path, []byte(refusing), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", path, "--signing-key", evil, "-o", "json")
	if err != nil {
		t.Fatalf("apply under the untrusted key: %v\n%s", err, out)
	}
	for _, node := range append([]string{"gw"}, lab.InstanceNames()...) {
		a := l.Agents(node)[0]
		if !waitFor(5*time.Second, func() bool {
			o := a.Output()
			return strings.Contains(o, "refusing") && strings.Contains(o, "version=2 ") && strings.Contains(o, "not trusted")
		}) {
			t.Fatalf("%s did not refuse version 2 as signed by an untrusted key:\n%s", node, a.Output())
		}
	}
	if err := connect(); err != nil {
		t.Fatalf("after the forged version: a connection the trusted map allows failed: %v", err)
	}
	out, err = l.Nfsteer("ctl", "map", "show", "--redis", lab.RedisURL, "--trust-key", ops+".pub")
	if err == nil || !strings.Contains(err.Error(), "signed by a key that is not trusted") {
		t.Errorf("map show --trust-key on the forged version: %v, %q; want a failure saying the key is not trusted", err, out)
	}

	// The operator publishes over it, signing and trusting.
	out, err = l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", path, "--signing-key", ops, "--trust-key", ops+".pub", "-o", "json")
	if err != nil {
		t.Fatalf("apply over the forgery: %v\n%s", err, out)
	}
	if v := awaitVersion(t, l, out, append([]string{"gw"}, lab.InstanceNames()...)...); v != 3 {
		t.Errorf("the signed version over the forgery is %d, want 3", v)
	}
	before := accepted.Load()
	if err := connect(); err == nil {
		t.Fatal("a connection opened to the port the operator's signed version closed")
	}
	if n := accepted.Load(); n != before {
		t.Errorf("the server accepted %d connections after the port was closed", n-before)
	}
}

// TestFailoverWithSealedSessions is the failover test with every agent
// sealing its session records with the fleet's key: the secondary takes
// the flow over from a sealed record, and the transfer survives
// byte-exact.
func TestFailoverWithSealedSessions(t *testing.T) {
	key := filepath.Join(t.TempDir(), "session.key")
	if out, err := exec.Command(bin, "key", "generate", "--session", "--out", key).CombinedOutput(); err != nil {
		t.Fatalf("key generate --session: %v\n%s", err, out)
	}
	res, l, primary, secondary, _ := runFailover(t, "--session-key", key)
	if res.Err != nil {
		t.Fatalf("transfer broke across the failover from %s to %s: %v", primary, secondary, res.Err)
	}
	out, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "--scan", "--pattern", "nfsteer:s:*")
	if err != nil || out == "" {
		t.Fatalf("no session in Redis: %v", err)
	}
	rec, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "GET", strings.Fields(out)[0])
	if err != nil || !strings.HasPrefix(rec, `{"mac":"`) {
		t.Errorf("session record %q (%v) is not sealed", rec, err)
	}
}

// TestFailoverDuringKeyChange is the failover test in a fleet halfway
// through changing its session key: the gateway and the flow's primary
// firewall still seal with the old key and accept the new one, the
// other nodes seal with the new key and accept the old one (README:
// "Sealed session records"). The secondary trusts the primary's record
// and takes the flow over, so the transfer survives byte-exact. With a
// step skipped (the secondary already refusing the old key) it cannot,
// and its firewall drops the flow mid-stream.
func TestFailoverDuringKeyChange(t *testing.T) {
	dir := t.TempDir()
	oldKey, newKey := filepath.Join(dir, "old.key"), filepath.Join(dir, "new.key")
	for _, k := range []string{oldKey, newKey} {
		if out, err := exec.Command(bin, "key", "generate", "--session", "--out", k).CombinedOutput(); err != nil {
			t.Fatalf("key generate --session: %v\n%s", err, out)
		}
	}
	primary, secondary := primaryFW(t, flowOf(t, 6, failoverLocal, failoverServer))
	for _, tc := range []struct {
		name      string
		secondary []string
		survives  bool
	}{
		{"adjacent steps", []string{"--session-key", newKey, "--session-key-accept", oldKey}, true},
		{"a step skipped", []string{"--session-key", newKey}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lab.NewWithMap(t, bin, labmap.Firewall)
			startMeshWith(t, l, func(node string) []string {
				switch node {
				case "gw", primary:
					return []string{"--session-key", oldKey, "--session-key-accept", newKey}
				case secondary:
					return tc.secondary
				}
				return []string{"--session-key", newKey, "--session-key-accept", oldKey}
			})
			res, _, _, _, _ := runFailoverIn(t, l)
			if survived := res.Err == nil; survived != tc.survives {
				t.Fatalf("from %s (sealing with the old key) to %s (%s): transfer error %v; want it to survive: %t",
					primary, secondary, strings.Join(tc.secondary, " "), res.Err, tc.survives)
			}
			t.Logf("from %s to %s (%s): transfer error %v, as it must", primary, secondary, strings.Join(tc.secondary, " "), res.Err)
		})
	}
}

// TestFailoverWithSignedMaps is the failover test with every map signed:
// the operator's key signs the applied map, the controller signs its own
// failover with its own key, and the agents trust both. The agents take
// the controller's version, so the transfer survives byte-exact.
func TestFailoverWithSignedMaps(t *testing.T) {
	dir := t.TempDir()
	ops, ctl := filepath.Join(dir, "ops.key"), filepath.Join(dir, "ctl.key")
	for _, k := range []string{ops, ctl} {
		if out, err := exec.Command(bin, "key", "generate", "--out", k).CombinedOutput(); err != nil {
			t.Fatalf("key generate: %v\n%s", err, out)
		}
	}
	l := lab.NewWithMap(t, bin, labmap.Firewall)
	l.StartRedis(t)
	trust := []string{"--trust-key", ops + ".pub", "--trust-key", ctl + ".pub"}
	if out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", l.MapFile, "--signing-key", ops); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if err := l.StartAll(append([]string{"--redis", lab.RedisURL, "--refresh", "500ms"}, trust...)...); err != nil {
		t.Fatal(err)
	}
	if _, err := l.StartController("controller", append([]string{"--signing-key", ctl}, trust...)...); err != nil {
		t.Fatal(err)
	}
	res, _, primary, secondary, _ := runFailoverIn(t, l)
	if res.Err != nil {
		t.Fatalf("transfer broke across the failover from %s to %s: %v", primary, secondary, res.Err)
	}
	for _, node := range append([]string{"gw"}, lab.InstanceNames()...) {
		for _, a := range l.Agents(node) {
			if strings.Contains(a.Output(), "refusing") {
				t.Errorf("%s refused a version:\n%s", node, a.Output())
			}
		}
	}
}
