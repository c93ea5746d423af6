//go:build linux

package main

import (
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/nfsteer/nfsteer/tests/lab"
)

const (
	client = "10.10.1.2:40555" // acme: chain [fw, dlp]
	server = "10.99.0.2:5201"
	// The transfer: 16 KiB every 2 ms, about 8 MB/s, for about 4 s.
	total = 32 << 20
)

// failover is part 2.
func failover(l *lab.Lab) error {
	fmt.Println("== starting Redis on the control host, publishing the map, starting the agents and a controller")
	stop, err := startRedis(l)
	if err != nil {
		return err
	}
	defer stop()
	if out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", l.MapFile); err != nil {
		return fmt.Errorf("apply: %w\n%s", err, out)
	}
	if err := l.StartAll("--redis", lab.RedisURL); err != nil {
		return err
	}
	if _, err := l.StartController("controller"); err != nil {
		return err
	}
	// Each firewall counts the transfer's packets in its own namespace.
	var fws []string
	for _, in := range lab.Instances {
		if strings.HasPrefix(in.Name, "fw") {
			fws = append(fws, in.Name)
			if err := l.Count(in.Name, "transfer", "ip saddr 10.10.1.2 tcp sport 40555"); err != nil {
				return err
			}
		}
	}
	time.Sleep(300 * time.Millisecond) // a few heartbeats, for status
	show(l, "nfsteer status (every agent on the live version, a fresh heartbeat)", "status")

	fmt.Printf("== a %d MiB transfer from acme %s to %s, 16 KiB every 2 ms\n", total>>20, client, server)
	type result struct {
		lab.Transfer
		err error
	}
	done := make(chan result, 1)
	go func() {
		t, err := l.Stream("ca", client, server, total, 2*time.Millisecond, 30*time.Second)
		done <- result{t, err}
	}()
	time.Sleep(1500 * time.Millisecond)
	before := counts(l, fws)
	primary := ""
	for _, fw := range fws {
		if before[fw] > 0 {
			primary = fw
		}
	}
	if primary == "" {
		return fmt.Errorf("no firewall counted the transfer: %v", before)
	}
	fmt.Printf("   the firewalls' own counters so far: %s: %s carries it\n", describe(fws, before), primary)
	show(l, "nfsteer sessions list --instance "+primary+" (mirrored in Redis, with the secondary that has its state)", "sessions", "list", "--instance", primary)

	fmt.Printf("== killing %s's agent (SIGKILL) and cutting its link\n", primary)
	killed := time.Now()
	for _, a := range l.Agents(primary) {
		a.Kill()
	}
	if err := l.Run(primary, "ip", "link", "set", "eth0", "down"); err != nil {
		return err
	}
	at := counts(l, fws)
	r := <-done
	if r.err != nil {
		return r.err
	}
	if r.Err != nil {
		return fmt.Errorf("the transfer broke across the failover: %w", r.Err)
	}
	after := counts(l, fws)
	fmt.Printf("   the transfer finished %s after the kill; the longest pause in delivery at the server was %s\n",
		time.Since(killed).Round(time.Millisecond), r.MaxGap.Round(time.Millisecond))
	fmt.Printf("   packets counted by each firewall after the kill: %s\n", describe(fws, minus(after, at)))
	for _, fw := range fws {
		if fw != primary && after[fw] > at[fw] {
			fmt.Printf("   %s took the flow over: the controller marked %s down, every node re-pinned the flow to %s,\n"+
				"   which admitted it mid-stream from the state %s had mirrored\n", fw, primary, fw, primary)
		}
	}
	show(l, "nfsteer status (exit 4: "+primary+" is down)", "status")
	show(l, "nfsteer sessions list --tenant acme (the session's primary is now the secondary)", "sessions", "list", "--tenant", "acme")
	fmt.Printf("== byte-exact: the server received exactly the %d MiB sent (SHA-256 equal), with no reset\n", total>>20)
	return nil
}

// startRedis runs redis-server on the control host and waits until it
// answers; stop ends it.
func startRedis(l *lab.Lab) (stop func(), err error) {
	cmd := exec.Command("ip", "netns", "exec", l.NS("ctl"), "redis-server", "--port", "6379", "--bind", lab.Control,
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", l.Dir)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting redis-server (apt-get install redis-server): %w", err)
	}
	stop = func() { cmd.Process.Kill(); cmd.Wait() }
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if out, _ := l.Output("ctl", "redis-cli", "-h", lab.Control, "ping"); strings.TrimSpace(out) == "PONG" {
			return stop, nil
		}
	}
	stop()
	return nil, fmt.Errorf("redis-server on %s did not answer within 5s", lab.Control)
}

// show prints an nfsteer command's output, run on the control host.
func show(l *lab.Lab, title string, args ...string) {
	out, err := l.Nfsteer("ctl", append(args, "--redis", lab.RedisURL)...)
	fmt.Printf("== %s\n%s", title, indent(out))
	if err != nil && !strings.Contains(err.Error(), "exit status 4") {
		fmt.Printf("   (%v)\n", err)
	}
}

// counts reads each firewall's counter of the transfer.
func counts(l *lab.Lab, fws []string) map[string]uint64 {
	out := map[string]uint64{}
	for _, fw := range fws {
		out[fw], _, _ = l.Packets(fw, "transfer")
	}
	return out
}

func minus(a, b map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k := range a {
		out[k] = a[k] - b[k]
	}
	return out
}

func describe(fws []string, c map[string]uint64) string {
	var parts []string
	for _, fw := range fws {
		parts = append(parts, fmt.Sprintf("%s %d", fw, c[fw]))
	}
	return strings.Join(parts, ", ")
}
