//go:build linux

package tests

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
	"golang.org/x/sys/unix"
)

// sandbox is what a systemd unit of packaging/ restricts its process to,
// as far as this test emulates it.
type sandbox struct {
	caps       []string // lower case, without CAP_: "net_admin"
	nobody     bool     // DynamicUser: an unprivileged user, emulated by nobody's
	readWrite  []string // ReadWritePaths
	noNewPrivs bool
}

// nobody is the user ID a DynamicUser unit runs as here.
const nobody = 65534

// unitSandbox reads the [Service] section of unit. It fails on a setting
// that restricts the process and that the emulation does not know, so
// that the test never passes for a sandbox it did not apply.
func unitSandbox(t testing.TB, unit string) sandbox {
	t.Helper()
	f, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var sb sandbox
	var ambient []string
	// Settings that start, stop or feed the service without restricting
	// it.
	plain := []string{"Type", "EnvironmentFile", "ExecStart", "ExecReload", "KillSignal", "TimeoutStopSec", "Restart", "RestartSec", "LimitNOFILE"}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if section != "[Service]" || !ok || strings.HasPrefix(line, "#") {
			continue
		}
		caps := func() (out []string) {
			for _, c := range strings.Fields(v) {
				out = append(out, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
			slices.Sort(out)
			return out
		}
		switch {
		case k == "CapabilityBoundingSet":
			sb.caps = caps()
		case k == "AmbientCapabilities":
			ambient = caps()
		case k == "DynamicUser":
			sb.nobody = v == "true"
		case k == "NoNewPrivileges":
			sb.noNewPrivs = v == "true"
		case k == "ProtectSystem" && v == "strict", k == "ProtectHome" && v == "true", k == "PrivateTmp" && v == "true":
			// Emulated by the wrapper, PrivateTmp by leaving /tmp read-only
			// with the rest: stricter than a /tmp of the agent's own.
		case k == "ReadWritePaths":
			sb.readWrite = strings.Fields(v)
		case slices.Contains(plain, k):
		default:
			t.Fatalf("%s: %s=%s restricts the service in a way this test does not emulate: teach it", unit, k, v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	switch {
	case sb.nobody && (sb.caps != nil || ambient != nil):
		t.Fatalf("%s: a dynamic user with capabilities %v, ambient %v: the test emulates a dynamic user without any", unit, sb.caps, ambient)
	case !sb.nobody && (sb.caps == nil || !slices.Equal(ambient, sb.caps)):
		t.Fatalf("%s: capabilities %v, ambient %v: the test emulates root with a bounding set given whole as ambient capabilities", unit, sb.caps, ambient)
	}
	return sb
}

// wrap writes a script that runs bin in sb without systemd: in a mount
// namespace of its own, the file system read-only but sb.readWrite
// (ProtectSystem=strict, ReadWritePaths), the home directories empty and
// unreadable (ProtectHome), as nobody without capabilities (DynamicUser)
// or with the capabilities bounded, inherited and ambient to sb.caps, and
// no new privileges. Its path can stand for the lab's nfsteer binary.
func (sb sandbox) wrap(t testing.TB, bin string) string {
	t.Helper()
	caps := "-all"
	for _, c := range sb.caps {
		caps += ",+" + c
	}
	inner := ""
	for _, p := range sb.readWrite {
		inner += fmt.Sprintf("mount --bind %s %s; ", p, p)
	}
	inner += "mount -o remount,bind,ro /; "
	inner += `for h in /home /root /run/user; do if [ -d "$h" ]; then mount -t tmpfs -o ro,mode=000 tmpfs "$h"; fi; done; `
	if sb.nobody {
		inner += fmt.Sprintf("exec setpriv --reuid=%[1]d --regid=%[1]d --clear-groups --inh-caps=-all", nobody)
	} else {
		inner += fmt.Sprintf(`exec setpriv --bounding-set=%[1]s --inh-caps=%[1]s --ambient-caps=%[1]s`, caps)
	}
	if sb.noNewPrivs {
		inner += " --no-new-privs"
	}
	inner += ` "$0" "$@"`
	script := fmt.Sprintf("#!/bin/sh\nexec unshare --mount --propagation private sh -euc '%s' %s \"$@\"\n", inner, bin)
	path := filepath.Join(t.TempDir(), "nfsteer-sandboxed")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// check fails t unless process pid runs in sb: its effective capabilities
// exactly sb.caps (and its bounding set, as root) or, as a dynamic user,
// none and nobody's user ID; no new privileges; its root read-only.
func (sb sandbox) check(t testing.TB, node string, pid int) {
	t.Helper()
	var want uint64
	for _, c := range sb.caps {
		bit, ok := map[string]uint{"net_admin": unix.CAP_NET_ADMIN, "net_raw": unix.CAP_NET_RAW, "bpf": unix.CAP_BPF}[c]
		if !ok {
			t.Fatalf("capability %q: the test knows net_admin, net_raw and bpf", c)
		}
		want |= 1 << bit
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	capFields := []string{"CapEff", "CapBnd"}
	if sb.nobody {
		capFields = capFields[:1]
		if uid := strings.Fields(fields["Uid"]); len(uid) < 2 || uid[1] != strconv.Itoa(nobody) {
			t.Errorf("%s: user IDs %q, want %d (a dynamic user's)", node, fields["Uid"], nobody)
		}
	}
	for _, k := range capFields {
		got, err := strconv.ParseUint(fields[k], 16, 64)
		if err != nil || got != want {
			t.Errorf("%s: %s %s, want %016x (%v)", node, k, fields[k], want, sb.caps)
		}
	}
	if sb.noNewPrivs && fields["NoNewPrivs"] != "1" {
		t.Errorf("%s: NoNewPrivs %q, want 1", node, fields["NoNewPrivs"])
	}
	mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 5 && f[4] == "/" && !slices.Contains(strings.Split(f[5], ","), "ro") {
			t.Errorf("%s: its root is mounted %s, want read-only", node, f[5])
		}
	}
}

// TestAgentRunsInItsUnitsSandbox runs every agent of the lab in the
// sandbox packaging/nfsteer-agent.service gives it, emulated (there is no
// systemd here): CAP_NET_ADMIN and CAP_NET_RAW and no other capability, no
// new privileges, the file system read-only but /run, no home
// directories. It checks that the agents do run so, and, from the
// instances' own counters, that a flow crosses its chain in order both
// ways and arrives byte-exact: on the service network, and on the
// overlay, where the agents also create the VXLAN device, set its
// sysctls and put flows in their tenants' conntrack zones.
func TestAgentRunsInItsUnitsSandbox(t *testing.T) {
	sb := unitSandbox(t, "../packaging/nfsteer-agent.service")
	wrapper := sb.wrap(t, bin)
	for _, tc := range []struct {
		name, m string
	}{
		{"service network", lab.Map},
		{"overlay", lab.OverlayMap},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lab.NewWithMap(t, wrapper, tc.m)
			if err := l.StartAll(); err != nil {
				t.Fatal(err)
			}
			for _, a := range append(l.Agents("gw"), l.InstanceAgents()...) {
				sb.check(t, a.Node+"'s agent", a.Pid())
			}
			tab := tableOf(t, tc.m)
			if tc.m == lab.OverlayMap {
				checkOverlayFlow(t, l, tab, "g", "cg", lab.GlobexClient, 6, 7401)
				return
			}
			f := steering.Flow{Src: netip.MustParseAddr(lab.GlobexClient), Dst: netip.MustParseAddr(lab.Server), SrcPort: 7401, DstPort: 5201, Proto: 6}
			fc := countFlow(t, l, "g", f, expectedChain(t, tab, f))
			transfer(t, l, "cg", lab.GlobexClient+":7401", lab.Server+":5201", 1<<20)
			fc.check(t, l)
		})
	}
}

// TestOffloadInTheUnitsSandbox runs the lab's agents as the package does,
// with their defaults, in the agent unit's sandbox: the gateway's offload,
// on by default, loads and attaches with the unit's capabilities, and
// carries the flow's established packets (the gateway's kernel forwards a
// small part of what the firewall does) through its chain, in order,
// byte-exact.
func TestOffloadInTheUnitsSandbox(t *testing.T) {
	sb := unitSandbox(t, "../packaging/nfsteer-agent.service")
	l := lab.NewWithMap(t, sb.wrap(t, bin), lab.Map)
	if err := l.StartAll(); err != nil {
		t.Fatal(err)
	}
	for _, a := range append(l.Agents("gw"), l.InstanceAgents()...) {
		sb.check(t, a.Node+"'s agent", a.Pid())
	}
	f := steering.Flow{Src: netip.MustParseAddr(lab.GlobexClient), Dst: netip.MustParseAddr(lab.Server), SrcPort: 7402, DstPort: 5201, Proto: 6}
	chain := expectedChain(t, labTable(t), f)
	fc := countFlow(t, l, "g", f, chain)
	gw0, fw0 := forwarded(t, l, "gw"), forwarded(t, l, chain[0])
	// 64 MiB: the connection takes the kernel's path until the agent has
	// made it liberal in conntrack, up to a few milliseconds (askPace), a
	// few MiB at this lab's rates.
	transfer(t, l, "cg", lab.GlobexClient+":7402", lab.Server+":5201", 64<<20)
	fc.check(t, l)
	gw, fw := forwarded(t, l, "gw")-gw0, forwarded(t, l, chain[0])-fw0
	t.Logf("64 MiB through %v: the gateway's kernel forwarded %d packets, %s's %d", chain, gw, chain[0], fw)
	if fw < 2000 || gw*10 > fw {
		t.Errorf("the gateway's kernel forwarded %d packets while %s forwarded %d: the sandboxed offload did not carry the flow", gw, chain[0], fw)
	}
}

// TestFailoverInTheUnitsSandboxes is the failover test with the agents and
// the controller each in the sandbox of its unit (emulated as
// TestAgentRunsInItsUnitsSandbox does; the controller's is a dynamic user
// without capabilities): Redis holds the map and the sessions, the
// primary firewall is killed mid-transfer, and the transfer survives
// byte-exact.
func TestFailoverInTheUnitsSandboxes(t *testing.T) {
	agents := unitSandbox(t, "../packaging/nfsteer-agent.service")
	ctl := unitSandbox(t, "../packaging/nfsteer-controller.service")
	l := lab.NewWithMap(t, agents.wrap(t, bin), labmap.Firewall)
	l.StartRedis(t)
	if out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", l.MapFile); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if err := l.StartAll("--redis", lab.RedisURL, "--refresh", "500ms"); err != nil {
		t.Fatal(err)
	}
	for _, a := range append(l.Agents("gw"), l.InstanceAgents()...) {
		agents.check(t, a.Node+"'s agent", a.Pid())
	}
	// The controller runs from its own wrapper.
	l.Bin = ctl.wrap(t, bin)
	c, err := l.StartController("controller")
	if err != nil {
		t.Fatal(err)
	}
	ctl.check(t, "the controller", c.Pid())
	res, _, primary, secondary, _ := runFailoverIn(t, l)
	if res.Err != nil {
		t.Fatalf("transfer broke across the failover from %s to %s: %v", primary, secondary, res.Err)
	}
}
