// Package redislab starts real redis-server processes for tests: a single
// server on a free loopback port or inside a network namespace, and a
// three-master Redis Cluster. Every process and directory is removed when
// the test ends, pass or fail.
//
// It needs the redis-server binary (Debian package redis-server); tests
// skip without it, except under CI, where that is a failure.
package redislab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is one running redis-server.
type Server struct {
	// Addr is host:port; URL is redis://Addr.
	Addr, URL string
	// NS is the network namespace it runs in ("" for the caller's).
	NS   string
	args []string
	log  string
	// ready is what its log says once it serves ("Ready to accept
	// connections" unless set).
	ready string

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd
	done chan struct{}
}

// Options for [Start].
type Options struct {
	// NS runs the server in that network namespace, listening on Bind.
	NS   string
	Bind string // default 127.0.0.1
	Port int    // default: a free port (loopback only)
	// Password sets requirepass.
	Password string
	// Extra are more redis-server arguments ("--cluster-enabled", "yes").
	Extra []string
	// TLS, if set, makes the server TLS-only, with pki's server
	// certificate, asking clients for a certificate pki's CA signed; URL
	// is then rediss://. Expired serves the expired certificate instead.
	TLS     *PKI
	Expired bool
}

// Require skips tb when redis-server is missing, or fails it under CI.
func Require(tb testing.TB) string {
	tb.Helper()
	p, err := exec.LookPath("redis-server")
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		tb.Fatal("redis-server not found; CI must install the redis-server package")
	}
	tb.Skip("skipping: redis-server not installed (apt-get install redis-server)")
	return ""
}

// Start runs a redis-server and stops it when tb ends.
func Start(tb testing.TB, o Options) *Server {
	tb.Helper()
	bin := Require(tb)
	if o.Bind == "" {
		o.Bind = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = freePort(tb)
	}
	dir := tb.TempDir()
	s := &Server{
		Addr: net.JoinHostPort(o.Bind, strconv.Itoa(o.Port)),
		NS:   o.NS,
		log:  filepath.Join(dir, "redis.log"),
	}
	s.URL = "redis://" + s.Addr
	if o.Password != "" {
		s.URL = "redis://:" + o.Password + "@" + s.Addr
	}
	s.args = []string{bin, "--port", strconv.Itoa(o.Port), "--bind", o.Bind, "--dir", dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--logfile", s.log}
	if p := o.TLS; p != nil {
		cert, key := p.ServerCert, p.ServerKey
		if o.Expired {
			cert, key = p.ExpiredServerCert, p.ExpiredServerKey
		}
		s.URL = "rediss://" + s.Addr
		s.args = []string{bin, "--port", "0", "--tls-port", strconv.Itoa(o.Port), "--bind", o.Bind, "--dir", dir,
			"--save", "", "--appendonly", "no", "--protected-mode", "no", "--logfile", s.log,
			"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", p.CA, "--tls-auth-clients", "yes"}
	}
	if o.Password != "" {
		s.args = append(s.args, "--requirepass", o.Password)
	}
	s.args = append(s.args, o.Extra...)
	tb.Cleanup(s.Stop)
	if err := s.start(); err != nil {
		tb.Fatal(err)
	}
	return s
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *Server) start() error {
	args := s.args
	name := args[0]
	if s.NS != "" {
		name, args = "ip", append([]string{"netns", "exec", s.NS}, args...)
	} else {
		args = args[1:]
	}
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	// Wait until it accepts connections (from the caller's namespace if
	// it shares it; else by its log).
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			b, _ := os.ReadFile(s.log)
			return fmt.Errorf("redis-server exited at start: %s%s", out.String(), b)
		default:
		}
		b, _ := os.ReadFile(s.log)
		ready := s.ready
		if ready == "" {
			ready = "Ready to accept connections"
		}
		if bytes.Contains(b, []byte(ready)) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("redis-server on %s not ready after 10s", s.Addr)
}

// Kill ends the server with SIGKILL (its data is lost: no persistence) and
// waits for it.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart starts a killed server again on the same address, empty.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if err := s.start(); err != nil {
		tb.Fatal(err)
	}
}

// Stop kills the server; it is safe to call twice.
// Pid is the server process's ID (0 if it is not running). `ip netns
// exec` execs redis-server, so the process is the server itself.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

func (s *Server) Stop() { s.Kill() }

// Client returns a client of the server (from the caller's namespace),
// closed when tb ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	o, err := redis.ParseURL(s.URL)
	if err != nil {
		tb.Fatal(err)
	}
	c := redis.NewClient(o)
	tb.Cleanup(func() { c.Close() })
	return c
}

// SetUser creates (or resets) the ACL user name with password and rules,
// as ACL SETUSER takes them after the password, and returns the user's
// URL. It runs redis-cli in the server's namespace.
func (s *Server) SetUser(tb testing.TB, name, password string, rules ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := s.cli(ctx, append([]string{"ACL", "SETUSER", name, "on", ">" + password}, rules...)...)
	if err != nil || strings.TrimSpace(string(out)) != "OK" {
		tb.Fatalf("ACL SETUSER %s %v: %v %s", name, rules, err, out)
	}
	return "redis://" + name + ":" + password + "@" + s.Addr
}

// Cluster is a running Redis Cluster.
type Cluster struct {
	Nodes []*Server
	// URL names every master, in go-redis's cluster URL form.
	URL string
}

// StartCluster runs a Redis Cluster of masters masters (no replicas) on
// loopback and waits until every slot is served.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	return StartClusterWith(tb, ClusterOptions{Masters: masters})
}

// ClusterOptions for [StartClusterWith].
type ClusterOptions struct {
	// NS runs the nodes in that network namespace, listening on Bind
	// (default 127.0.0.1), from FirstPort on (default: free ports,
	// loopback only).
	NS, Bind  string
	FirstPort int
	// Masters, and Replicas per master.
	Masters, Replicas int
	// NodeTimeoutMS is cluster-node-timeout (default 2000): how long a
	// master may be silent before its replica takes over.
	NodeTimeoutMS int
}

// StartClusterWith runs a Redis Cluster as o says and waits until every
// node serves every slot.
func StartClusterWith(tb testing.TB, o ClusterOptions) *Cluster {
	tb.Helper()
	if o.Bind == "" {
		o.Bind = "127.0.0.1"
	}
	if o.NodeTimeoutMS == 0 {
		o.NodeTimeoutMS = 2000
	}
	c := &Cluster{}
	var addrs []string
	for i := range o.Masters * (1 + o.Replicas) {
		port := 0
		if o.FirstPort != 0 {
			port = o.FirstPort + i
		}
		// No delay before a replica's first sync (Redis waits 5 s for
		// more replicas by default): a replica that never synced does
		// not take over.
		n := Start(tb, Options{NS: o.NS, Bind: o.Bind, Port: port, Extra: []string{"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", strconv.Itoa(o.NodeTimeoutMS),
			"--repl-diskless-sync-delay", "0"}})
		c.Nodes = append(c.Nodes, n)
		addrs = append(addrs, n.Addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(o.Replicas), "--cluster-yes")
	if out, err := redisCLI(context.Background(), o.NS, args...); err != nil {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.URL = "redis://" + addrs[0] + "?addr=" + strings.Join(addrs[1:], "&addr=")
	// Each node judges the cluster from its own gossip, so one node
	// saying ok does not mean another will serve its slots yet: a client
	// routed there would get CLUSTERDOWN. Wait for all of them, and for
	// every replica to have synced.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, n := range c.Nodes {
		for {
			out, _ := n.cli(ctx, "cluster", "info")
			repl, _ := n.cli(ctx, "info", "replication")
			synced := !bytes.Contains(repl, []byte("role:slave")) || bytes.Contains(repl, []byte("master_link_status:up"))
			if bytes.Contains(out, []byte("cluster_state:ok")) && synced {
				break
			}
			if ctx.Err() != nil {
				tb.Fatalf("cluster node %s not ok after 15s: %s", n.Addr, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// redisCLI runs redis-cli with args in namespace ns ("" for the caller's).
func redisCLI(ctx context.Context, ns string, args ...string) ([]byte, error) {
	name := "redis-cli"
	if ns != "" {
		name, args = "ip", append([]string{"netns", "exec", ns, "redis-cli"}, args...)
	}
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// cli runs redis-cli against s, in its namespace.
func (s *Server) cli(ctx context.Context, args ...string) ([]byte, error) {
	host, port, _ := net.SplitHostPort(s.Addr)
	return redisCLI(ctx, s.NS, append([]string{"-h", host, "-p", port}, args...)...)
}
