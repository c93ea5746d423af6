//go:build linux

package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/tests/redislab"
	"github.com/vishvananda/netns"
)

// Addresses of the lab's hosts.
const (
	AcmeClient    = "10.10.1.2"
	AcmeClient6   = "fd00:10::2"
	GlobexClient  = "10.20.1.2"
	OtherClient   = "10.30.1.2"
	Server        = "10.99.0.2"
	Server6       = "fd00:99::2"
	ServiceSubnet = "10.200.0.0/24"
	// Control is the address of host "ctl" on the service network, where
	// tests run Redis and the controller.
	Control = "10.200.0.250"
	// Gateway2 is the service-network address of the second gateway, gw2.
	// The acme client reaches it over its second link, where gw2's side is
	// Gateway2Outer (see [Lab.Via]).
	Gateway2      = "10.200.0.2"
	Gateway2Outer = "10.10.2.1"
	// RedisURL is where StartRedis's server listens.
	RedisURL = "redis://" + Control + ":6379"
)

// Map is the lab's service map.
const Map = `slots: 256
services:
  fw:
    function: forward
    instances:
      fw-1: [10.200.0.11, "fd00:200::11"]
      fw-2: [10.200.0.12, "fd00:200::12"]
  dlp:
    function: forward
    instances: {dlp-1: 10.200.0.21, dlp-2: 10.200.0.22}
tenants:
  acme:   {prefixes: [10.10.1.0/24, "fd00:10::/64"], chain: [fw]}
  globex: {prefixes: [10.20.1.0/24], chain: [fw, dlp]}
`

// OverlayMap is Map with the service network carried in VXLAN between the
// nodes, both gateways and every instance host, each steered packet with
// its tenant's tag: acme's is 1, globex's 2.
var OverlayMap = strings.NewReplacer("chain: [fw]}", "chain: [fw], tag: 1}", "chain: [fw, dlp]}", "chain: [fw, dlp], tag: 2}").Replace(Map) + `overlay:
  vni: 4242
  gateways: {gw: [10.200.0.1, "fd00:200::1"], gw2: 10.200.0.2}
`

// OverlapMap is OverlayMap with two more tenants, blue and red, that have
// the same addresses: blue enters by the gateway's cb0 and crosses fw then
// dlp, red enters by cr0 and crosses dlp only, and each leaves with its
// own address. Their clients are added with AddClient (hosts "cb" and
// "cr", both at OverlapClient).
var OverlapMap = strings.Replace(OverlayMap, "tenants:\n", `tenants:
  blue: {ingress: [cb0], prefixes: [10.50.0.0/24], chain: [fw, dlp], tag: 3, snat: 10.61.0.101}
  red: {ingress: [cr0], prefixes: [10.50.0.0/24], chain: [dlp], tag: 4, snat: 10.61.0.102}
`, 1)

// OverlapClient is blue's and red's client address, each on its own link.
const OverlapClient = "10.50.0.5"

// AddOverlapClients adds blue's and red's clients of OverlapMap.
func (l *Lab) AddOverlapClients() error {
	for _, c := range []struct{ host, gwIf string }{{"cb", "cb0"}, {"cr", "cr0"}} {
		if err := l.AddClient(c.host, OverlapClient+"/24", c.gwIf, "10.50.0.1/24"); err != nil {
			return err
		}
	}
	return nil
}

// Instances lists the lab's instance nodes with their service-network
// addresses.
var Instances = []struct{ Name, V4, V6 string }{
	{"fw-1", "10.200.0.11", "fd00:200::11"},
	{"fw-2", "10.200.0.12", "fd00:200::12"},
	{"dlp-1", "10.200.0.21", "fd00:200::21"},
	{"dlp-2", "10.200.0.22", "fd00:200::22"},
}

// Outer are the gateway's steered interfaces.
var Outer = []string{"ca0", "cg0", "cx0", "srv0"}

// Lab is one running lab. Its methods are safe for concurrent use.
type Lab struct {
	Prefix  string
	Bin     string // the nfsteer binary
	Dir     string // scratch directory: map file, agent logs
	MapFile string

	mu     sync.Mutex // guards ns and agents
	ns     []string
	agents []*Process
}

// New builds a lab and registers its removal with tb. It skips the test
// when not root, unless CI is set, where a skip would hide a broken run.
func New(tb testing.TB, bin string) *Lab { return NewWithMap(tb, bin, Map) }

// NewWithMap is New with another service map (it must use the lab's
// instances and addresses).
func NewWithMap(tb testing.TB, bin, m string) *Lab {
	tb.Helper()
	RequireRoot(tb)
	l, err := UpWithMap(bin, tb.TempDir(), m)
	if l != nil {
		tb.Cleanup(func() {
			for _, node := range l.racy() {
				tb.Errorf("%s reported a data race (its log follows)", node)
			}
			if tb.Failed() {
				l.dumpLogs(tb)
			}
			if err := l.Close(); err != nil {
				tb.Errorf("tearing the lab down: %v", err)
			}
		})
	}
	if err != nil {
		tb.Fatalf("building the lab: %v", err)
	}
	return l
}

// RequireRoot skips tb when not running as root, and fails it instead when
// CI is set.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		tb.Fatal("integration tests need root (network namespaces, iptables); CI must run them as root")
	}
	tb.Skip("skipping: integration tests need root (network namespaces, iptables)")
}

// Up builds a lab with scratch files in dir. On error the returned lab (if
// not nil) holds what was built and must still be closed.
func Up(bin, dir string) (*Lab, error) { return UpWithMap(bin, dir, Map) }

// UpWithMap is Up with another service map.
func UpWithMap(bin, dir, m string) (*Lab, error) {
	var r [3]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	l := &Lab{Prefix: "nfs" + hex.EncodeToString(r[:]), Bin: bin, Dir: dir, MapFile: filepath.Join(dir, "map.yaml")}
	if err := os.WriteFile(l.MapFile, []byte(m), 0o644); err != nil {
		return nil, err
	}
	return l, l.build()
}

// NS returns the full name of the lab namespace called short ("gw",
// "fw-1", ...).
func (l *Lab) NS(short string) string { return l.Prefix + "-" + short }

func (l *Lab) build() error {
	hosts := []string{"ca", "cg", "cx", "gw", "gw2", "srv", "sw", "ctl"}
	for _, in := range Instances {
		hosts = append(hosts, in.Name)
	}
	for _, h := range hosts {
		if err := l.addHost(h); err != nil {
			return err
		}
	}
	links := []link{
		{"ca", "eth0", "gw", "ca0", []string{"10.10.1.2/24", "fd00:10::2/64"}, []string{"10.10.1.1/24", "fd00:10::1/64"}},
		{"cg", "eth0", "gw", "cg0", []string{"10.20.1.2/24", "fd00:20::2/64"}, []string{"10.20.1.1/24", "fd00:20::1/64"}},
		{"cx", "eth0", "gw", "cx0", []string{"10.30.1.2/24", "fd00:30::2/64"}, []string{"10.30.1.1/24", "fd00:30::1/64"}},
		{"srv", "eth0", "gw", "srv0", []string{"10.99.0.2/24", "fd00:99::2/64"}, []string{"10.99.0.1/24", "fd00:99::1/64"}},
		{"gw", "svc0", "sw", "p-gw", []string{"10.200.0.1/24", "fd00:200::1/64"}, nil},
		{"ctl", "eth0", "sw", "p-ctl", []string{Control + "/24"}, nil},
		// gw2 is a second gateway for acme: what ECMP upstream of two
		// gateways looks like, with the client choosing the path.
		{"ca", "eth1", "gw2", "ca0", []string{"10.10.2.2/24"}, []string{Gateway2Outer + "/24"}},
		{"gw2", "svc0", "sw", "p-gw2", []string{Gateway2 + "/24", "fd00:200::2/64"}, nil},
	}
	for _, in := range Instances {
		links = append(links, link{in.Name, "eth0", "sw", "p-" + in.Name, []string{in.V4 + "/24", in.V6 + "/64"}, nil})
	}
	if err := l.Run("sw", "ip", "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	if err := l.Run("sw", "ip", "link", "set", "br0", "up"); err != nil {
		return err
	}
	for _, k := range links {
		if err := l.addLink(k); err != nil {
			return err
		}
	}
	routes := map[string][2]string{
		"ca": {"10.10.1.1", "fd00:10::1"}, "cg": {"10.20.1.1", "fd00:20::1"},
		"cx": {"10.30.1.1", "fd00:30::1"}, "srv": {"10.99.0.1", "fd00:99::1"},
	}
	for _, in := range Instances {
		routes[in.Name] = [2]string{"10.200.0.1", "fd00:200::1"}
	}
	routes["gw2"] = [2]string{"10.200.0.1", "fd00:200::1"}
	if err := l.Run("gw2", "ip", "route", "add", "10.10.1.0/24", "via", "10.10.2.2"); err != nil {
		return err
	}
	for h, gw := range routes {
		if err := l.Run(h, "ip", "route", "add", "default", "via", gw[0]); err != nil {
			return err
		}
		if err := l.Run(h, "ip", "-6", "route", "add", "default", "via", gw[1]); err != nil {
			return err
		}
	}
	return l.settle(hosts)
}

func (l *Lab) addHost(h string) error {
	if err := run("ip", "netns", "add", l.NS(h)); err != nil {
		return err
	}
	l.mu.Lock()
	l.ns = append(l.ns, l.NS(h))
	l.mu.Unlock()
	if err := l.Run(h, "ip", "link", "set", "lo", "up"); err != nil {
		return err
	}
	return l.sysctls(h)
}

// link is a veth pair between two hosts; a side in host "sw" joins the
// bridge.
type link struct {
	host, hostIf, peer, peerIf string
	addrs                      []string // on the host side
	peerAddrs                  []string
}

func (l *Lab) addLink(k link) error {
	if err := run("ip", "link", "add", k.hostIf, "netns", l.NS(k.host), "type", "veth", "peer", "name", k.peerIf, "netns", l.NS(k.peer)); err != nil {
		return err
	}
	for _, side := range []struct {
		host, dev string
		addrs     []string
	}{{k.host, k.hostIf, k.addrs}, {k.peer, k.peerIf, k.peerAddrs}} {
		for _, a := range side.addrs {
			if err := l.Run(side.host, "ip", "addr", "add", a, "dev", side.dev, "nodad"); err != nil {
				return err
			}
		}
		if err := l.Run(side.host, "ip", "link", "set", side.dev, "up"); err != nil {
			return err
		}
		if side.host == "sw" {
			if err := l.Run("sw", "ip", "link", "set", side.dev, "master", "br0"); err != nil {
				return err
			}
		}
	}
	return nil
}

// AddInstanceHost adds a host for a new instance to the running lab, on
// the service network at v4 and v6, routed like the others. Its namespace
// goes when the lab does.
func (l *Lab) AddInstanceHost(name, v4, v6 string) error {
	if err := l.addHost(name); err != nil {
		return err
	}
	if err := l.addLink(link{name, "eth0", "sw", "p-" + name, []string{v4 + "/24", v6 + "/64"}, nil}); err != nil {
		return err
	}
	if err := l.Run(name, "ip", "route", "add", "default", "via", "10.200.0.1"); err != nil {
		return err
	}
	if err := l.Run(name, "ip", "-6", "route", "add", "default", "via", "fd00:200::1"); err != nil {
		return err
	}
	return l.settle([]string{name})
}

// AddClient adds a client host to the running lab: its eth0, at addr
// (a CIDR address), is linked to the gateway's interface gwIf, at gwAddr,
// which is its default route. Two clients may have the same addresses: the
// gateway's interfaces tell them apart. Its namespace goes when the lab
// does.
func (l *Lab) AddClient(name, addr, gwIf, gwAddr string) error {
	if err := l.addHost(name); err != nil {
		return err
	}
	if err := l.addLink(link{name, "eth0", "gw", gwIf, []string{addr}, []string{gwAddr}}); err != nil {
		return err
	}
	gw, _, _ := strings.Cut(gwAddr, "/")
	if err := l.Run(name, "ip", "route", "add", "default", "via", gw); err != nil {
		return err
	}
	return l.settle([]string{name, "gw"})
}

// AddClientBehindRouter adds client host name at addr behind router host
// router, as a tenant's network sits behind its own router: the client's
// default route is the router, at routerAddr on their link; the router's
// link to the gateway's gwIf has linkAddr on its side and gwAddr on the
// gateway's, and the router's default route is the gateway.
func (l *Lab) AddClientBehindRouter(name, addr, router, routerAddr, gwIf, linkAddr, gwAddr string) error {
	if err := l.addHost(router); err != nil {
		return err
	}
	if err := l.addLink(link{router, "eth1", "gw", gwIf, []string{linkAddr}, []string{gwAddr}}); err != nil {
		return err
	}
	if err := l.addHost(name); err != nil {
		return err
	}
	if err := l.addLink(link{name, "eth0", router, "eth0", []string{addr}, []string{routerAddr}}); err != nil {
		return err
	}
	for _, r := range []struct{ host, via string }{{router, gwAddr}, {name, routerAddr}} {
		via, _, _ := strings.Cut(r.via, "/")
		if err := l.Run(r.host, "ip", "route", "add", "default", "via", via); err != nil {
			return err
		}
	}
	return l.settle([]string{name, router, "gw"})
}

// settle waits until every interface that is up has its IPv6 link-local
// address: the kernel adds them (and their routes) asynchronously, and a
// test comparing routing tables must not see them arrive.
func (l *Lab) settle(hosts []string) error {
	deadline := time.Now().Add(10 * time.Second)
	for _, h := range hosts {
		for {
			links, err := l.Output(h, "ip", "-o", "link", "show", "up")
			if err != nil {
				return err
			}
			addrs, err := l.Output(h, "ip", "-6", "-o", "addr", "show", "scope", "link")
			if err != nil {
				return err
			}
			missing := ""
			for _, line := range strings.Split(strings.TrimSpace(links), "\n") {
				f := strings.Fields(line)
				if len(f) < 2 {
					continue
				}
				name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
				if name != "lo" && !strings.Contains(addrs, " "+name+" ") {
					missing = name
				}
			}
			if missing == "" {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: interface %s has no IPv6 link-local address after 10s", h, missing)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// sysctls makes every host a router that does not second-guess the lab:
// traffic comes back from instances with tenant source addresses on the
// service interface (no reverse-path filter), and instances forward out of
// the interface they received on (no redirects).
func (l *Lab) sysctls(h string) error {
	for _, kv := range []string{
		"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
		"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0",
		"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
	} {
		if err := l.Run(h, "sysctl", "-qw", kv); err != nil {
			return err
		}
	}
	return nil
}

// Close stops every agent and deletes every namespace, and with them every
// link, rule and route the lab or its agents created. It is safe to call
// twice.
func (l *Lab) Close() error {
	l.mu.Lock()
	agents, ns := l.agents, l.ns
	l.agents, l.ns = nil, nil
	l.mu.Unlock()
	var errs []error
	for _, a := range agents {
		a.Kill()
	}
	for i := len(ns) - 1; i >= 0; i-- {
		if err := run("ip", "netns", "del", ns[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Run runs a command in the namespace of host and returns an error holding
// its output if it fails.
func (l *Lab) Run(host string, args ...string) error {
	_, err := l.Output(host, args...)
	return err
}

// Forwarded returns how many packets host's kernel has forwarded, IPv4
// and IPv6: ForwDatagrams in its /proc/net/snmp and Ip6OutForwDatagrams in
// its /proc/net/snmp6.
func (l *Lab) Forwarded(host string) (uint64, error) {
	out, err := l.Output(host, "cat", "/proc/net/snmp", "/proc/net/snmp6")
	if err != nil {
		return 0, err
	}
	var n uint64
	found := 0
	lines := strings.Split(out, "\n")
	for i, line := range lines {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "Ip6OutForwDatagrams":
			v, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s's Ip6OutForwDatagrams %q: %w", host, f[1], err)
			}
			n += v
			found++
		case len(f) > 0 && f[0] == "Ip:" && i+1 < len(lines):
			values := strings.Fields(lines[i+1])
			if len(values) != len(f) || values[0] != "Ip:" {
				continue
			}
			for j, name := range f {
				if name == "ForwDatagrams" && values[j] != name {
					v, err := strconv.ParseUint(values[j], 10, 64)
					if err != nil {
						return 0, fmt.Errorf("%s's ForwDatagrams %q: %w", host, values[j], err)
					}
					n += v
					found++
				}
			}
		}
	}
	if found != 2 {
		return 0, fmt.Errorf("%s's /proc/net/snmp and snmp6: found %d of ForwDatagrams and Ip6OutForwDatagrams", host, found)
	}
	return n, nil
}

// Output runs a command in the namespace of host and returns its stdout.
func (l *Lab) Output(host string, args ...string) (string, error) {
	return output("ip", append([]string{"netns", "exec", l.NS(host)}, args...)...)
}

func run(name string, args ...string) error {
	_, err := output(name, args...)
	return err
}

func output(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Process is an nfsteer daemon (an agent or a controller) running in a lab
// namespace. Node names it: the agent's node, or the controller's name.
type Process struct {
	Node string
	Log  string // path of its combined output
	// args and ready are how it was started, for Restart.
	args  []string
	ready string
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
}

// StartAgent runs `nfsteer agent` for node in its namespace (the gateway is
// node "gw", steering the lab's outer interfaces) and waits until it says it
// is ready.
func (l *Lab) StartAgent(node string, extra ...string) (*Process, error) {
	host, outer := node, []string(nil)
	switch {
	case node == "gw2":
		outer = []string{"ca0"}
	case strings.HasPrefix(node, "gw"):
		host, outer = "gw", Outer
	}
	args := []string{"netns", "exec", l.NS(host), l.Bin, "agent", "--node", node, "--map", l.MapFile, "--log-flows"}
	for _, o := range outer {
		args = append(args, "--outer", o)
	}
	args = append(args, extra...)
	return l.start(node, args, "msg=ready")
}

// Via sends the acme client's IPv4 traffic to the server through gateway
// gw ("gw" or "gw2") from now on, connections already open included, as an
// upstream ECMP router does when its paths change.
func (l *Lab) Via(gw string) error {
	next, dev := "10.10.1.1", "eth0"
	if gw == "gw2" {
		next, dev = "10.10.2.1", "eth1"
	}
	return l.Run("ca", "ip", "route", "replace", "10.99.0.0/24", "via", next, "dev", dev, "src", AcmeClient)
}

// StartController runs `nfsteer controller` against the lab's Redis in
// host "ctl" and waits until it logs started; name tells several apart.
func (l *Lab) StartController(name string, extra ...string) (*Process, error) {
	args := append([]string{"netns", "exec", l.NS("ctl"), l.Bin, "controller", "--redis", RedisURL}, extra...)
	return l.start(name, args, "msg=started")
}

// start runs `ip args...` as process node and waits for ready in its log.
func (l *Lab) start(node string, args []string, ready string) (*Process, error) {
	a := &Process{Node: node, Log: filepath.Join(l.Dir, fmt.Sprintf("agent-%s-%d.log", node, time.Now().UnixNano())),
		args: args, ready: ready, done: make(chan struct{})}
	f, err := os.Create(a.Log)
	if err != nil {
		return nil, err
	}
	a.cmd = exec.Command("ip", args...)
	a.cmd.Stdout, a.cmd.Stderr = f, f
	if err := a.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting agent %s: %w", node, err)
	}
	l.mu.Lock()
	l.agents = append(l.agents, a)
	l.mu.Unlock()
	go func() {
		a.err = a.cmd.Wait()
		f.Close()
		close(a.done)
	}()
	deadline := time.After(15 * time.Second)
	for {
		b, _ := os.ReadFile(a.Log)
		if bytes.Contains(b, []byte(ready)) {
			return a, nil
		}
		select {
		case <-a.done:
			b, _ = os.ReadFile(a.Log) // what it wrote since the read above
			return nil, fmt.Errorf("agent %s exited before it was ready (%v):\n%s", node, a.err, b)
		case <-deadline:
			a.Kill()
			return nil, fmt.Errorf("agent %s not ready after 15s:\n%s", node, b)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// StartAll starts the agents of the gateway and of every instance.
func (l *Lab) StartAll(extra ...string) error {
	for _, n := range append([]string{"gw"}, InstanceNames()...) {
		if _, err := l.StartAgent(n, extra...); err != nil {
			return err
		}
	}
	return nil
}

// InstanceNames returns the names of the lab's instances, in Instances'
// order.
func InstanceNames() []string {
	var n []string
	for _, in := range Instances {
		n = append(n, in.Name)
	}
	return n
}

// InstanceAgents returns the agents started for every instance.
func (l *Lab) InstanceAgents() []*Process {
	var out []*Process
	for _, n := range InstanceNames() {
		out = append(out, l.Agents(n)...)
	}
	return out
}

// Agents returns the agents started for node.
func (l *Lab) Agents(node string) []*Process {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*Process
	for _, a := range l.agents {
		if a.Node == node {
			out = append(out, a)
		}
	}
	return out
}

// Stop sends SIGTERM and waits for the agent to exit; it returns the
// agent's exit error.
func (a *Process) Stop() error {
	if a.cmd.Process == nil {
		return nil
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		return a.err
	case <-time.After(10 * time.Second):
		a.Kill()
		return fmt.Errorf("agent %s ignored SIGTERM for 10s", a.Node)
	}
}

// Restart does what `systemctl restart` does to a: SIGTERM, wait for the
// exit, wait pause (the unit's RestartSec), then start the same command
// again and wait until it is ready. An agent that already exited (killed)
// is only started again.
func (l *Lab) Restart(a *Process, pause time.Duration) (*Process, error) {
	select {
	case <-a.done:
	default:
		if err := a.Stop(); err != nil {
			return nil, fmt.Errorf("stopping %s: %w", a.Node, err)
		}
	}
	time.Sleep(pause)
	return l.start(a.Node, a.args, a.ready)
}

// Kill ends the agent with SIGKILL (rules stay behind, as after a crash)
// and waits for it. It is safe to call on a stopped agent.
func (a *Process) Kill() {
	if a.cmd.Process != nil {
		_ = a.cmd.Process.Kill()
	}
	<-a.done
}

// Pid is the process's ID. `ip netns exec` execs the command, so the
// process is nfsteer itself (or what a wrapper given as the lab's binary
// execs it from).
func (a *Process) Pid() int { return a.cmd.Process.Pid }

// Signal sends sig to the agent (SIGSTOP and SIGCONT stall it).
func (a *Process) Signal(sig os.Signal) error { return a.cmd.Process.Signal(sig) }

// RSS returns the process's resident memory in bytes, from /proc. `ip
// netns exec` execs the command, so the process is nfsteer itself.
func (a *Process) RSS() (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for process %d", a.cmd.Process.Pid)
}

// CPU returns the CPU time, user and system, the process has used.
func (a *Process) CPU() (time.Duration, error) { return ProcessCPU(a.cmd.Process.Pid) }

// ProcessCPU returns the CPU time, user and system, process pid has used,
// from /proc/PID/stat (in clock ticks of 1/100 s, USER_HZ on Linux).
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after its closing one (state is field 3, utime 14, stime 15).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too short: %q", pid, b)
	}
	var ticks uint64
	for _, v := range f[11:13] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// MachineCPU returns the CPU time all CPUs have spent busy (not idle nor
// waiting for I/O), from /proc/stat.
func MachineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var ticks uint64
	for k, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		if k != 3 && k != 4 { // idle, iowait
			ticks += n
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// Exited reports whether the process has ended (crashed, or stopped).
func (a *Process) Exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// Output returns what the agent has logged so far.
func (a *Process) Output() string {
	b, _ := os.ReadFile(a.Log)
	return string(b)
}

// racy returns the nodes whose processes logged a data race report: with
// a -race build (make integration-race) the lab fails the test for each,
// so that a race the test's own checks would not notice still fails it.
func (l *Lab) racy() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, a := range l.agents {
		if strings.Contains(a.Output(), "WARNING: DATA RACE") {
			out = append(out, a.Node)
		}
	}
	return out
}

func (l *Lab) dumpLogs(tb testing.TB) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range l.agents {
		tb.Logf("---- agent %s log ----\n%s", a.Node, a.Output())
	}
}

// Count installs, in host's namespace, a named nft counter of arriving
// packets that match expr (nft syntax, such as "ip saddr 10.10.1.2 ip ttl
// 63"). Read it with Packets. The counters live in the lab's own nft table
// "nfslab", apart from nfsteer's iptables chains.
func (l *Lab) Count(host, name, expr string) error {
	script := fmt.Sprintf(`table inet nfslab {
	counter %[1]s {}
	chain count { type filter hook prerouting priority -300; }
}
add rule inet nfslab count %[2]s counter name %[1]s
`, name, expr)
	cmd := exec.Command("ip", "netns", "exec", l.NS(host), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("adding counter %s in %s: %w: %s", name, host, err, out)
	}
	return nil
}

var packetsRe = regexp.MustCompile(`packets (\d+) bytes (\d+)`)

// Packets returns the packets and bytes counted by counter name in host.
func (l *Lab) Packets(host, name string) (packets, bytes uint64, err error) {
	out, err := l.Output(host, "nft", "list", "counter", "inet", "nfslab", name)
	if err != nil {
		return 0, 0, err
	}
	m := packetsRe.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, fmt.Errorf("counter %s in %s: no packets in %q", name, host, out)
	}
	p, _ := strconv.ParseUint(m[1], 10, 64)
	b, _ := strconv.ParseUint(m[2], 10, 64)
	return p, b, nil
}

// InNS runs fn on a thread switched into host's namespace. Sockets fn
// creates stay in that namespace after the thread switches back, so the
// test can use them from any goroutine; goroutines fn starts do not run in
// the namespace.
func (l *Lab) InNS(host string, fn func() error) error {
	target, err := netns.GetFromName(l.NS(host))
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", host, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		// A fresh locked thread that is never unlocked: if switching back
		// failed, the runtime discards the thread instead of reusing it in
		// the wrong namespace.
		runtime.LockOSThread()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", host, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen opens a listener ("tcp", "udp", "tcp6"...) in host's namespace.
func (l *Lab) Listen(host, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := l.InNS(host, func() (err error) { ln, err = net.Listen(network, addr); return err })
	return ln, err
}

// ListenPacket opens a packet socket in host's namespace.
func (l *Lab) ListenPacket(host, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := l.InNS(host, func() (err error) { pc, err = net.ListenPacket(network, addr); return err })
	return pc, err
}

// Dial connects from host's namespace. local, if not empty, is the source
// address and port ("10.10.1.2:40001"), which lets a test know a flow's
// 5-tuple, and so its counters, in advance.
func (l *Lab) Dial(ctx context.Context, host, network, local, addr string) (net.Conn, error) {
	var c net.Conn
	err := l.InNS(host, func() (err error) {
		var d net.Dialer
		if local != "" {
			if strings.HasPrefix(network, "udp") {
				d.LocalAddr, err = net.ResolveUDPAddr(network, local)
			} else {
				d.LocalAddr, err = net.ResolveTCPAddr(network, local)
			}
			if err != nil {
				return err
			}
		}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// StartRedis runs a redis-server in host "ctl", listening on Control:6379,
// and stops it when tb ends.
func (l *Lab) StartRedis(tb testing.TB) *redislab.Server {
	tb.Helper()
	return redislab.Start(tb, redislab.Options{NS: l.NS("ctl"), Bind: Control, Port: 6379})
}

// StartRedisTLS is StartRedis with a TLS-only server (rediss://, client
// certificates required), its certificates from pki (redislab.NewPKI for
// Control).
func (l *Lab) StartRedisTLS(tb testing.TB, pki *redislab.PKI) *redislab.Server {
	tb.Helper()
	return redislab.Start(tb, redislab.Options{NS: l.NS("ctl"), Bind: Control, Port: 6379, TLS: pki})
}

// Nfsteer runs the nfsteer command line in host ("ctl" reaches Redis).
func (l *Lab) Nfsteer(host string, args ...string) (string, error) {
	return l.Output(host, append([]string{l.Bin}, args...)...)
}
