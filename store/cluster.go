package store

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterReload makes a Cluster client reload the map of slots as soon
// as a command fails, instead of at its next periodic reload (go-redis
// reloads a state older than 10 s): when a master dies and its replica is
// promoted, the master's slots move within seconds, and until the client
// learns it every command for them goes to the dead master. Reloads are
// at most one per reloadEvery. It is safe for concurrent use.
type clusterReload struct {
	c    *redis.ClusterClient
	last atomic.Int64 // UnixNano of the last reload asked for
}

const reloadEvery = 250 * time.Millisecond

var _ redis.Hook = (*clusterReload)(nil)

func (h *clusterReload) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		h.failed(err)
		return c, err
	}
}

func (h *clusterReload) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.failed(err)
		return err
	}
}

func (h *clusterReload) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.failed(err)
		return err
	}
}

// failed asks for a reload after an error that may mean the slots moved:
// any but a reply nfsteer expects (redis.Nil) or one about the command
// itself.
func (h *clusterReload) failed(err error) {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return
	}
	for _, p := range []string{"NOSCRIPT", "WRONGTYPE", "NOPERM", "ERR"} {
		if redis.HasErrorPrefix(err, p) {
			return
		}
	}
	now := time.Now().UnixNano()
	if last := h.last.Load(); now-last < int64(reloadEvery) || !h.last.CompareAndSwap(last, now) {
		return
	}
	h.c.ReloadState(context.Background())
}
