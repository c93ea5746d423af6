package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nfsteer/nfsteer/signing"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/redis/go-redis/v9"
)

// Announcement is what the channel says of each new version: its number
// and, when it changes only tenants and the lists of instances out of
// new-flow steering (a tenant added, a drain, a failover), the delta to
// it from the version before, so that nodes holding that version switch
// without reading the whole map. A publisher that signs (Store.SignWith)
// signs the delta's bytes as announced; the map's log keeps the same
// announcement.
type Announcement struct {
	Version uint64
	Delta   *steering.Delta
	// Sig is the publisher's signature over the delta, if it signed.
	Sig *signing.Signature
	// Refused is set by Watch when the store trusts keys and the delta's
	// signature is not a trusted key's: the delta is dropped (nil), so
	// that only the live map, checked as well, can decide. It says why.
	Refused error
	// delta is the delta's JSON as announced: what Sig covers.
	delta []byte
}

// announcementJSON is an Announcement as the channel and the log carry it.
type announcementJSON struct {
	Version uint64             `json:"version"`
	Delta   json.RawMessage    `json:"delta,omitempty"`
	Sig     *signing.Signature `json:"sig,omitempty"`
}

// MarshalJSON encodes a as announced.
func (a Announcement) MarshalJSON() ([]byte, error) {
	j := announcementJSON{Version: a.Version, Delta: a.delta, Sig: a.Sig}
	if j.Delta == nil && a.Delta != nil {
		b, err := json.Marshal(a.Delta)
		if err != nil {
			return nil, err
		}
		j.Delta = b
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes an announcement strictly (unknown fields are
// errors, in the delta too), keeping the delta's bytes for its signature.
func (a *Announcement) UnmarshalJSON(b []byte) error {
	var j announcementJSON
	if err := steering.DecodeJSON(b, &j); err != nil {
		return err
	}
	*a = Announcement{Version: j.Version, Sig: j.Sig}
	if len(j.Delta) > 0 && string(j.Delta) != "null" {
		var d steering.Delta
		if err := steering.DecodeJSON(j.Delta, &d); err != nil {
			return fmt.Errorf("delta: %w", err)
		}
		a.Delta, a.delta = &d, j.Delta
	}
	return nil
}

// verify checks a's delta against the trusted keys: signed by one of them,
// and for the version a announces. Without trusted keys, or without a
// delta, there is nothing to check.
func (a *Announcement) verify(trust *signing.Verifier) error {
	if trust == nil || a.Delta == nil {
		return nil
	}
	if err := trust.Verify(signing.Delta, a.delta, a.Sig); err != nil {
		return fmt.Errorf("delta to version %d: %w", a.Version, err)
	}
	if a.Delta.Version != a.Version {
		return fmt.Errorf("announcement of version %d carries a signed delta to version %d", a.Version, a.Delta.Version)
	}
	return nil
}

// maxDelta bounds an announced delta: a bigger change (thousands of
// tenants) is announced by number, and nodes read the document.
const maxDelta = 64 << 10

// maxLog bounds the map's log: the version after that many deltas
// rewrites the document and empties the log, so that a reader applies
// at most maxLog deltas to the document it decodes.
const maxLog = 64

// announce returns the announcement of next, which follows live, and
// whether it carries the delta, signed if s signs.
func (s *Store) announce(live, next *steering.Published) ([]byte, bool, error) {
	a := Announcement{Version: next.Version}
	if d, ok := steering.NewDelta(live, next); ok {
		b, err := json.Marshal(d)
		if err != nil {
			return nil, false, fmt.Errorf("encoding the delta to version %d: %w", next.Version, err)
		}
		if len(b) <= maxDelta {
			a.Delta, a.delta = d, b
			if s.signer != nil {
				a.Sig = s.signer.Sign(signing.Delta, b)
			}
		}
	}
	b, err := json.Marshal(a)
	if err != nil {
		return nil, false, fmt.Errorf("encoding the announcement of version %d: %w", next.Version, err)
	}
	return b, a.Delta != nil, nil
}

// LiveVersion returns the live map version, 0 if there is none.
func (s *Store) LiveVersion(ctx context.Context) (uint64, error) {
	v, err := s.rdb.Get(ctx, keyMapVersion).Uint64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the map version from %s: %w", s.addr, permission(err))
	}
	return v, nil
}

// Live returns the live map, validated. An invalid document or log
// (written by hand, say) gives an error wrapping steering.ErrInvalidMap.
func (s *Store) Live(ctx context.Context) (*steering.Published, error) { return s.decodeLive(ctx, nil) }

// decodeLive reads the map document, the log of deltas after it and the
// live version in one transaction, and returns the document with the
// deltas applied, each validated as a node validates an announced one.
// The document reuses held's map if it has the same one.
func (s *Store) decodeLive(ctx context.Context, held *steering.Published) (*steering.Published, error) {
	tx := s.rdb.TxPipeline()
	docCmd := tx.Get(ctx, keyMapDoc)
	sigCmd := tx.Get(ctx, keyMapSig)
	logCmd := tx.LRange(ctx, keyMapLog, 0, -1)
	versionCmd := tx.Get(ctx, keyMapVersion)
	if _, err := tx.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("reading the map from %s: %w", s.addr, permission(err))
	}
	doc, err := docCmd.Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNoMap
	}
	if err != nil {
		return nil, fmt.Errorf("reading the map from %s: %w", s.addr, err)
	}
	if err := s.verifyDoc(doc, sigCmd); err != nil {
		return nil, err
	}
	p, err := steering.DecodePublishedAfter(doc, held)
	if err != nil {
		return nil, fmt.Errorf("live map in Redis: %w", err)
	}
	if p, err = applyLog(p, logCmd.Val(), s.trust); err != nil {
		return nil, err
	}
	if v, _ := versionCmd.Uint64(); v != p.Version {
		return nil, fmt.Errorf("%w: live map in Redis: live version %d, but the document and its log make version %d", steering.ErrInvalidMap, v, p.Version)
	}
	return p, nil
}

// lastTrusted returns the newest version in Redis that trusted keys
// signed: the document with the log's deltas up to the first that is not
// so signed. It returns nil, and no error, when the document itself is not
// signed so.
func (s *Store) lastTrusted(ctx context.Context) (*steering.Published, error) {
	tx := s.rdb.TxPipeline()
	docCmd := tx.Get(ctx, keyMapDoc)
	sigCmd := tx.Get(ctx, keyMapSig)
	logCmd := tx.LRange(ctx, keyMapLog, 0, -1)
	if _, err := tx.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("reading the map from %s: %w", s.addr, err)
	}
	doc, err := docCmd.Bytes()
	if err != nil || s.verifyDoc(doc, sigCmd) != nil {
		return nil, nil
	}
	p, err := steering.DecodePublished(doc)
	if err != nil {
		return nil, nil
	}
	for _, e := range logCmd.Val() {
		q, err := applyLog(p, []string{e}, s.trust)
		if err != nil {
			break
		}
		p = q
	}
	return p, nil
}

// verifyDoc checks the document's signature (sig, the reply for
// keyMapSig) against the trusted keys, if s trusts any. The error wraps
// steering.ErrInvalidMap and says why.
func (s *Store) verifyDoc(doc []byte, sig *redis.StringCmd) error {
	if s.trust == nil {
		return nil
	}
	var sg *signing.Signature
	if b, err := sig.Bytes(); err == nil {
		sg = new(signing.Signature)
		if err := steering.DecodeJSON(b, sg); err != nil {
			return fmt.Errorf("%w: live map in Redis: the document's signature (%s) does not decode: %w: %v", steering.ErrInvalidMap, keyMapSig, signing.ErrBadSignature, err)
		}
	}
	if err := s.trust.Verify(signing.Document, doc, sg); err != nil {
		return fmt.Errorf("%w: live map in Redis: %s: %w", steering.ErrInvalidMap, keyMapDoc, err)
	}
	return nil
}

// LiveAfter is Live for a reader holding held (which may be nil): when
// the live version is still held's, it returns held without reading the
// map; when the log of deltas holds every version after held's (a node
// that missed announcements), it applies them to held without reading the
// document; and a new version whose map is held's reuses it.
func (s *Store) LiveAfter(ctx context.Context, held *steering.Published) (*steering.Published, error) {
	v, err := s.LiveVersion(ctx)
	if err != nil {
		return nil, err
	}
	if v == 0 {
		return nil, ErrNoMap
	}
	if held != nil && v == held.Version {
		return held, nil
	}
	if held != nil && v > held.Version {
		if p, ok := s.catchUp(ctx, held); ok {
			return p, nil
		}
	}
	return s.decodeLive(ctx, held)
}

// catchUp brings held to the live version with the log of deltas alone,
// each delta validated as an announced one. It reports false if it cannot
// (the log does not reach back to held, or an entry is refused): then the
// document decides, and names what is wrong.
func (s *Store) catchUp(ctx context.Context, held *steering.Published) (*steering.Published, bool) {
	tx := s.rdb.TxPipeline()
	logCmd := tx.LRange(ctx, keyMapLog, 0, -1)
	versionCmd := tx.Get(ctx, keyMapVersion)
	if _, err := tx.Exec(ctx); err != nil {
		return nil, false
	}
	p, err := applyLog(held, logCmd.Val(), s.trust)
	if err != nil {
		return nil, false
	}
	v, err := versionCmd.Uint64()
	return p, err == nil && p != held && v == p.Version
}

// applyLog applies to p the deltas of the log entries newer than it, each
// validated as an announced one and, if trust is not nil, signed by a key
// it trusts. An entry that is not a delta, or a delta that does not
// follow (ErrNotBase), is not signed so, or is refused, is an error
// wrapping steering.ErrInvalidMap that names it.
func applyLog(p *steering.Published, entries []string, trust *signing.Verifier) (*steering.Published, error) {
	for i, entry := range entries {
		var a Announcement
		if err := steering.DecodeJSON([]byte(entry), &a); err != nil || a.Delta == nil {
			return nil, fmt.Errorf("%w: live map in Redis: entry %d of %s is not a delta", steering.ErrInvalidMap, i, keyMapLog)
		}
		if a.Version <= p.Version {
			continue // from before p (or the document, written over by hand)
		}
		if err := a.verify(trust); err != nil {
			return nil, fmt.Errorf("%w: live map in Redis: entry %d of %s: %w", steering.ErrInvalidMap, i, keyMapLog, err)
		}
		q, err := p.Apply(a.Delta)
		if errors.Is(err, steering.ErrNotBase) {
			err = fmt.Errorf("%w: %w", steering.ErrInvalidMap, err)
		}
		if err != nil {
			return nil, fmt.Errorf("live map in Redis: version %d from %s: %w", a.Version, keyMapLog, err)
		}
		p = q
	}
	return p, nil
}

// Change turns the live map (nil if there is none) into the next one. It
// may be called more than once, if another publisher got in first.
type Change func(live *steering.Published) (*steering.Published, error)

// Publication is a version as published, and when.
type Publication struct {
	*steering.Published
	// At is when the publisher sent the version to Redis, by its own clock:
	// where propagation to the nodes starts.
	At time.Time
}

// Publish applies change to the live map and publishes the result as the
// next version: it keeps instance IDs, validates, writes the whole document
// atomically and announces it. It returns the published map. A change that
// would publish what the live version already says publishes nothing: it
// returns the live version and ErrUnchanged.
//
// A store that trusts keys builds only on what they signed. When the live
// version is not (a forged delta appended, a forged document), the change
// is applied to the last version a trusted key signed, if the document is
// one, else to no map, and the result is published whole over the forged
// one, as the next version after it: nodes then read it and drop the
// forged log. That is how a signing operator recovers from a forgery.
func (s *Store) Publish(ctx context.Context, change Change) (Publication, error) {
	for attempt := 0; ; attempt++ {
		live, err := s.Live(ctx)
		forged := s.trust != nil && signing.IsRefusal(err)
		if forged {
			live, err = s.lastTrusted(ctx)
		}
		if err != nil && !errors.Is(err, ErrNoMap) {
			return Publication{}, err
		}
		liveVersion, err := s.LiveVersion(ctx)
		if err != nil {
			return Publication{}, err
		}
		next, err := change(live)
		if err != nil {
			return Publication{}, err
		}
		if next.Version != 0 && next.Version <= liveVersion {
			return Publication{}, fmt.Errorf("%w: offered version %d, live version %d", ErrStaleVersion, next.Version, liveVersion)
		}
		if live != nil && next.SameAs(live) && !forged {
			return Publication{Published: live}, ErrUnchanged
		}
		var prevIDs map[string]uint16
		if live != nil {
			prevIDs = live.IDs
		}
		if next.IDs, err = steering.AssignIDs(next.Map, mergeIDs(prevIDs, next.IDs)); err != nil {
			return Publication{}, err
		}
		if next.Version == 0 {
			next.Version = liveVersion + 1
		}
		at, err := s.publish(ctx, liveVersion, live, next)
		if err == nil {
			return Publication{next, at}, nil
		}
		if !errors.Is(err, errConflict) || attempt >= 20 {
			return Publication{}, err
		}
	}
}

// Restore publishes p whole, as it is (its IDs, its version), over a live
// version older than p's: for a controller that finds Redis lost its data
// or went back to an older version (a failover to a replica that missed
// the last writes, a restore from an old backup), so that no node ever
// sees the number go back or one number stand for two maps. It refuses,
// with ErrStaleVersion, if the live version is not older than p's.
func (s *Store) Restore(ctx context.Context, p *steering.Published) (Publication, error) {
	liveVersion, err := s.LiveVersion(ctx)
	if err != nil {
		return Publication{}, err
	}
	if p.Version <= liveVersion {
		return Publication{}, fmt.Errorf("%w: restoring version %d, live version %d", ErrStaleVersion, p.Version, liveVersion)
	}
	at, err := s.publish(ctx, liveVersion, nil, p)
	if err != nil {
		return Publication{}, err
	}
	return Publication{p, at}, nil
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

// publish writes p over the live version expect, whose map live is (nil
// if unknown), and returns when it sent the write.
func (s *Store) publish(ctx context.Context, expect uint64, live, p *steering.Published) (time.Time, error) {
	if err := p.Validate(); err != nil {
		return time.Time{}, err
	}
	doc, err := p.Encode()
	if err != nil {
		return time.Time{}, err
	}
	if live != nil && live.Version != expect {
		live = nil // read before another publisher's version: no delta
	}
	msg, logged, err := s.announce(live, p)
	if err != nil {
		return time.Time{}, err
	}
	var docSig []byte // written with the document; none: unsigned
	if s.signer != nil {
		if docSig, err = json.Marshal(s.signer.Sign(signing.Document, doc)); err != nil {
			return time.Time{}, fmt.Errorf("encoding the signature of version %d: %w", p.Version, err)
		}
	}
	// A version an announced delta makes is appended to the map's log,
	// not written whole: 10,000 tenants are 0.8 MB of JSON, which Redis
	// took milliseconds to read and store for every drain or tenant
	// added, before any node could switch. Every maxLog versions, and for
	// any version without a delta, the document is rewritten and the log
	// emptied.
	//
	// WATCH makes the write conditional on the live version being expect,
	// so that concurrent publishers cannot lose each other's changes and no
	// version is reused or skipped back; MULTI/EXEC makes it whole, so that
	// no reader sees a document, log and version that do not go together
	// nor an announcement before them.
	var at time.Time
	err = s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		live, err := tx.Get(ctx, keyMapVersion).Uint64()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		if live != expect {
			return errConflict
		}
		entries, err := tx.LLen(ctx, keyMapLog).Result()
		if err != nil {
			return err
		}
		at = time.Now()
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			if logged && entries < maxLog {
				pipe.RPush(ctx, keyMapLog, msg)
			} else {
				pipe.Set(ctx, keyMapDoc, doc, 0)
				if docSig != nil {
					pipe.Set(ctx, keyMapSig, docSig, 0)
				} else {
					pipe.Del(ctx, keyMapSig)
				}
				pipe.Del(ctx, keyMapLog)
			}
			pipe.Set(ctx, keyMapVersion, p.Version, 0)
			pipe.Publish(ctx, Channel, msg)
			return nil
		})
		return err
	}, keyMapVersion)
	if errors.Is(err, errConflict) || errors.Is(err, redis.TxFailedErr) {
		return time.Time{}, errConflict
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("publishing map version %d to %s: %w", p.Version, s.addr, permission(err))
	}
	return at, nil
}

// Watch calls check whenever the map may have changed: with the
// announcement of every new version, and with a zero Announcement after
// every (re)subscription (pub/sub loses what is sent while disconnected)
// and every poll interval. It returns when ctx is done. check runs on
// Watch's goroutine, one call at a time, in the order of publication.
func (s *Store) Watch(ctx context.Context, poll time.Duration, check func(ctx context.Context, a Announcement)) error {
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
			var a Announcement
			if err := steering.DecodeJSON([]byte(m.Payload), &a); err != nil {
				// Not ours to understand: look at the live version.
				a = Announcement{}
			}
			if err := a.verify(s.trust); err != nil {
				a.Delta, a.delta, a.Refused = nil, nil, err
			}
			check(ctx, a)
			last = time.Now()
			continue
		case *redis.Subscription:
			check(ctx, Announcement{})
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
			check(ctx, Announcement{})
			last = time.Now()
		}
	}
	return nil
}
