package redislab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Sentinels is a primary, its replica and three Sentinels watching them,
// all real redis-server processes, stopped when the test ends.
type Sentinels struct {
	Primary, Replica *Server
	Sentinels        []*Server
	// Master is the name the Sentinels know the primary by; URL is the
	// go-redis URL that finds it through them.
	Master, URL string
}

// StartSentinels runs a primary on port, its replica on port+1 and three
// Sentinels on port+20000 to port+20002, bound to bind in namespace ns
// ("" for the caller's). The Sentinels call the primary down after
// downAfter milliseconds of silence and fail it over with a quorum of 2.
func StartSentinels(tb testing.TB, ns, bind string, port, downAfterMS int) *Sentinels {
	tb.Helper()
	bin := Require(tb)
	s := &Sentinels{Master: "nfsteer"}
	// No delay before the first sync (Redis waits 5 s for more replicas
	// by default): the replica has the data before the test begins.
	s.Primary = Start(tb, Options{NS: ns, Bind: bind, Port: port, Extra: []string{"--repl-diskless-sync-delay", "0"}})
	s.Replica = Start(tb, Options{NS: ns, Bind: bind, Port: port + 1,
		Extra: []string{"--replicaof", bind, strconv.Itoa(port)}})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if out, err := s.Replica.cli(context.Background(), "INFO", "replication"); err == nil && bytes.Contains(out, []byte("master_link_status:up")) {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatal("the replica did not sync with the primary within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var addrs []string
	for i := range 3 {
		sp := port + 20000 + i
		dir := tb.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		body := fmt.Sprintf("port %d\nbind %s\nprotected-mode no\ndir %s\n"+
			"sentinel monitor %s %s %d 2\nsentinel down-after-milliseconds %s %d\n"+
			"sentinel failover-timeout %s 5000\nsentinel parallel-syncs %s 1\n",
			sp, bind, dir, s.Master, bind, port, s.Master, downAfterMS, s.Master, s.Master)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
		sn := &Server{
			Addr: net.JoinHostPort(bind, strconv.Itoa(sp)), NS: ns,
			log:   filepath.Join(dir, "sentinel.log"),
			ready: "+monitor master",
		}
		sn.args = []string{bin, conf, "--sentinel", "--logfile", sn.log}
		tb.Cleanup(sn.Stop)
		if err := sn.start(); err != nil {
			tb.Fatal(err)
		}
		s.Sentinels = append(s.Sentinels, sn)
		addrs = append(addrs, sn.Addr)
	}
	s.URL = "redis://" + addrs[0] + "?master_name=" + s.Master + "&addr=" + strings.Join(addrs[1:], "&addr=")
	return s
}
