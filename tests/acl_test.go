//go:build linux

package tests

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/tests/lab"
	"github.com/nfsteer/nfsteer/tests/redislab"
)

// labUsers creates in the lab's Redis, srv, the users `nfsteer redis acl`
// prints, and returns each role's URL.
func labUsers(t *testing.T, l *lab.Lab, srv *redislab.Server) map[string]string {
	t.Helper()
	out, err := l.Nfsteer("ctl", "redis", "acl", "-o", "json")
	if err != nil {
		t.Fatalf("redis acl: %v", err)
	}
	var users []struct {
		Role, User string
		Rules      []string
	}
	if err := json.Unmarshal([]byte(out), &users); err != nil {
		t.Fatalf("redis acl -o json: %v\n%s", err, out)
	}
	urls := map[string]string{}
	for _, u := range users {
		urls[u.Role] = srv.SetUser(t, u.User, "pw-"+u.Role, u.Rules...)
	}
	return urls
}

// TestFailoverWithLeastPrivilege is the failover test with every side on
// its own Redis user of least privilege: operators' CLI applies the map,
// the agents mirror, beat and take over, the controller fails the primary
// over. The transfer survives byte-exact, and Redis refused nothing.
func TestFailoverWithLeastPrivilege(t *testing.T) {
	l := lab.NewWithMap(t, bin, labmap.Firewall)
	urls := labUsers(t, l, l.StartRedis(t))
	if out, err := l.Nfsteer("ctl", "apply", "--redis", urls["operator"], "-f", l.MapFile); err != nil {
		t.Fatalf("apply as the operator: %v\n%s", err, out)
	}
	if out, err := l.Nfsteer("ctl", "instance", "drain", "dlp-1", "--redis", urls["agent"]); err == nil ||
		!strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("instance drain with the agents' user: %v\n%s; want a refusal naming the missing permission", err, out)
	}
	if err := l.StartAll("--redis", urls["agent"], "--refresh", "500ms"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.StartController("controller", "--redis", urls["controller"]); err != nil {
		t.Fatal(err)
	}
	res, _, primary, secondary, _ := runFailoverIn(t, l)
	if res.Err != nil {
		t.Fatalf("transfer broke across the failover from %s to %s: %v", primary, secondary, res.Err)
	}
	for _, node := range append(append([]string{"gw"}, lab.InstanceNames()...), "controller") {
		for _, a := range l.Agents(node) {
			if o := a.Output(); strings.Contains(o, "NOPERM") {
				t.Errorf("%s was refused by Redis:\n%s", node, o)
			}
		}
	}
}
