package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/redis/go-redis/v9"
)

// publishScript replaces the map document only if the live version is the
// one the caller based its change on, so concurrent publishers cannot lose
// each other's changes and no version is ever reused or skipped back.
// KEYS: doc, version. ARGV: expected live version, new version, document,
// channel.
var publishScript = redis.NewScript(`
local live = tonumber(redis.call('GET', KEYS[2]) or '0')
if live ~= tonumber(ARGV[1]) then
  return redis.error_reply('STALE live version ' .. live)
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return live
`)

// LiveVersion returns the live map version, 0 if there is none.
func (s *Store) LiveVersion(ctx context.Context) (uint64, error) {
	v, err := s.rdb.Get(ctx, keyMapVersion).Uint64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the map version from %s: %w", s.addr, err)
	}
	return v, nil
}

// LiveRaw returns the live map document as stored.
func (s *Store) LiveRaw(ctx context.Context) ([]byte, error) {
	b, err := s.rdb.Get(ctx, keyMapDoc).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNoMap
	}
	if err != nil {
		return nil, fmt.Errorf("reading the map from %s: %w", s.addr, err)
	}
	return b, nil
}

// Live returns the live map, validated. An invalid document (written by
// hand, say) gives an error wrapping steering.ErrInvalidMap.
func (s *Store) Live(ctx context.Context) (*steering.Published, error) {
	b, err := s.LiveRaw(ctx)
	if err != nil {
		return nil, err
	}
	p, err := steering.DecodePublished(b)
	if err != nil {
		return nil, fmt.Errorf("live map in Redis: %w", err)
	}
	return p, nil
}

// Change turns the live map (nil if there is none) into the next one. It
// may be called more than once, if another publisher got in first.
type Change func(live *steering.Published) (*steering.Published, error)

// Publish applies change to the live map and publishes the result as the
// next version: it keeps instance IDs, validates, writes the whole document
// atomically and announces it. It returns the published map.
func (s *Store) Publish(ctx context.Context, change Change) (*steering.Published, error) {
	for attempt := 0; ; attempt++ {
		live, err := s.Live(ctx)
		if err != nil && !errors.Is(err, ErrNoMap) {
			return nil, err
		}
		liveVersion, err := s.LiveVersion(ctx)
		if err != nil {
			return nil, err
		}
		next, err := change(live)
		if err != nil {
			return nil, err
		}
		var prevIDs map[string]uint16
		if live != nil {
			prevIDs = live.IDs
		}
		if next.IDs, err = steering.AssignIDs(next.Map, mergeIDs(prevIDs, next.IDs)); err != nil {
			return nil, err
		}
		if next.Version == 0 {
			next.Version = liveVersion + 1
		}
		err = s.publish(ctx, liveVersion, next)
		if err == nil {
			return next, nil
		}
		if !errors.Is(err, errConflict) || attempt >= 20 {
			return nil, err
		}
	}
}

// mergeIDs prefers the IDs a change carries (a publisher restoring a lost
// map) over the live ones.
func mergeIDs(live, carried map[string]uint16) map[string]uint16 {
	if len(carried) == 0 {
		return live
	}
	return carried
}

var errConflict = errors.New("another publisher changed the map first")

func (s *Store) publish(ctx context.Context, expect uint64, p *steering.Published) error {
	if p.Version <= expect {
		return fmt.Errorf("%w: offered version %d, live version %d", ErrStaleVersion, p.Version, expect)
	}
	if err := p.Validate(); err != nil {
		return err
	}
	doc, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encoding map: %w", err)
	}
	err = publishScript.Run(ctx, s.rdb, []string{keyMapDoc, keyMapVersion},
		expect, p.Version, doc, Channel).Err()
	if err != nil && strings.HasPrefix(err.Error(), "STALE") {
		return errConflict
	}
	if err != nil {
		return fmt.Errorf("publishing map version %d to %s: %w", p.Version, s.addr, err)
	}
	return nil
}

// Watch calls check whenever the map may have changed: on every
// announcement, after every (re)subscription (pub/sub loses what is sent
// while disconnected) and every poll interval. It returns when ctx is done.
// check runs on Watch's goroutine, one call at a time.
func (s *Store) Watch(ctx context.Context, poll time.Duration, check func(ctx context.Context, announced uint64)) error {
	ps := s.rdb.Subscribe(ctx, Channel)
	defer ps.Close()
	// A blocked receive does not watch ctx: closing the subscription is
	// what ends it.
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer stop()
	last := time.Now()
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, poll)
		switch m := msg.(type) {
		case *redis.Message:
			v, _ := strconv.ParseUint(m.Payload, 10, 64)
			check(ctx, v)
			last = time.Now()
			continue
		case *redis.Subscription:
			check(ctx, 0)
			last = time.Now()
			continue
		}
		if err != nil && ctx.Err() == nil {
			var ne interface{ Timeout() bool }
			if !(errors.As(err, &ne) && ne.Timeout()) {
				// Connection trouble: go-redis reconnects and resubscribes
				// on the next call; do not spin.
				select {
				case <-ctx.Done():
				case <-time.After(min(poll, 200*time.Millisecond)):
				}
			}
		}
		if time.Since(last) >= poll {
			check(ctx, 0)
			last = time.Now()
		}
	}
	return nil
}
