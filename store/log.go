package store

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// redisLog sends go-redis's own log lines (a pool that failed to dial, a
// cluster map refresh) through slog, at debug level: the errors that
// matter come back to nfsteer's callers, who log or print them, and a
// command's output or a JSON log must not get stray lines of another
// format.
type redisLog struct{}

func (redisLog) Printf(ctx context.Context, format string, v ...any) {
	slog.DebugContext(ctx, fmt.Sprintf(format, v...), "from", "go-redis")
}

func init() { redis.SetLogger(redisLog{}) }
