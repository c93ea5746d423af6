package store_test

import (
	"time"

	"github.com/redis/go-redis/v9"
)

func redisZ(member string) redis.Z {
	return redis.Z{Score: float64(time.Now().Add(time.Minute).UnixMilli()), Member: member}
}
