package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/redis/go-redis/v9"
)

// casScript writes a session's record over the one it was made from,
// only if that one is still there: KEYS: session, state. ARGV: the record
// read, the record to write, ttl ms, updated. Returns 1 (written), 0 (no
// session), -2 (changed meanwhile: read it again). A takeover reads the
// record, checks it (its seal, who holds the hop), changes the hop in Go
// and writes it back sealed (retake); Redis never rewrites a record
// itself, which it could not seal. It is the one session write that has
// to read before it writes, and it is rare (a failover or a migration):
// creates, which are per flow, go without a script.
var casScript = redis.NewScript(`
local m = redis.call('GET', KEYS[1])
if not m then return 0 end
if m ~= ARGV[1] then return -2 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], 'updated', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
`)

// retakeReq asks to move the primary role at hop of flow's session from
// from to to, with sec as the new secondary ("" for none).
type retakeReq struct {
	flow     string
	hop      int
	from, to string
	sec      string
	ttl      time.Duration
	nowMS    int64
}

// retaken is what retake did with one request: its outcome and, when it
// took the hop (retakeDone; otherwise before is nil), the roles the
// record had before, whose index the session leaves.
type retaken struct {
	outcome int
	before  []sessions.Hop
}

// after returns the roles the record has after t, a takeover of hop by
// to with secondary sec.
func (t retaken) after(hop int, to, sec string) []sessions.Hop {
	h := slices.Clone(t.before)
	h[hop].Primary, h[hop].Secondary = to, sec
	return h
}

// Takeover outcomes (retake).
const (
	retakeHeld   = -1 // a third instance holds the hop
	retakeNone   = 0  // no session (or one that is not to be trusted)
	retakeDone   = 1
	retakeRacing = -2 // the record changed between the read and the write
)

// retake moves the primary roles reqs ask for: it reads every record in
// one pipeline, checks each (its seal, and that the hop's primary is from
// or already to; for a request from "", an instance the map no longer
// has, that gone says the hop's primary is gone), changes it and writes
// it back sealed in a second, each write conditional on the record being
// the one read (casScript); a record that changed meanwhile is read again,
// up to three times. It returns what it did with each request: retakeDone
// (with the roles the hop had), retakeNone or retakeHeld.
func (s *Store) retake(ctx context.Context, reqs []retakeReq, gone func(instance string) bool) ([]retaken, error) {
	out := make([]retaken, len(reqs))
	pending := make([]int, len(reqs))
	for i := range pending {
		pending[i] = i
	}
	loaded := false // the script was loaded after Redis did not know it
	for round := 0; round < 3 && len(pending) > 0; round++ {
		pipe := s.rdb.Pipeline()
		gets := make([]*redis.StringCmd, len(pending))
		for i, r := range pending {
			gets[i] = pipe.Get(ctx, sessionKey(reqs[r].flow))
		}
		if cmds, err := pipe.Exec(ctx); err != nil {
			if err := failed(cmds, err); err != nil {
				return nil, fmt.Errorf("reading sessions to take over from %s: %w", s.addr, permission(err))
			}
		}
		pipe = s.rdb.Pipeline()
		var cas []*redis.Cmd
		var which []int
		for i, r := range pending {
			req := &reqs[r]
			out[r] = retaken{outcome: retakeNone}
			old, err := gets[i].Result()
			if err != nil {
				continue
			}
			b, err := s.openRecord(req.flow, []byte(old))
			if err != nil {
				continue // not to be trusted: it is reported wherever it is read
			}
			var m meta
			if err := json.Unmarshal(b, &m); err != nil || m.Flow != req.flow || req.hop < 0 || req.hop >= len(m.Hops) {
				continue
			}
			h := &m.Hops[req.hop]
			if h.Primary != req.from && h.Primary != req.to && (req.from != "" || !gone(h.Primary)) {
				out[r].outcome = retakeHeld
				continue
			}
			out[r].before = slices.Clone(m.Hops)
			h.Primary, h.Secondary = req.to, req.sec
			nb, _ := m.appendJSON(nil)
			cas = append(cas, casScript.EvalSha(ctx, pipe, []string{sessionKey(req.flow), stateKey(req.flow)},
				old, s.sealRecord(req.flow, nb), req.ttl.Milliseconds(), req.nowMS))
			which = append(which, r)
		}
		if len(cas) == 0 {
			break
		}
		if cmds, err := pipe.Exec(ctx); err != nil {
			if redis.HasErrorPrefix(err, "NOSCRIPT") && !loaded {
				loaded = true
				if err := casScript.Load(ctx, s.rdb).Err(); err != nil {
					return nil, fmt.Errorf("loading the takeover script into %s: %w", s.addr, permission(err))
				}
				round-- // the same round again, now that Redis knows the script
				continue
			}
			if err := failed(cmds, err); err != nil {
				return nil, fmt.Errorf("taking sessions over at %s: %w", s.addr, permission(err))
			}
		}
		pending = pending[:0]
		for i, c := range cas {
			n, _ := c.Int()
			out[which[i]].outcome = int(n)
			if n == retakeRacing {
				pending = append(pending, which[i])
			}
		}
	}
	for i := range out {
		if out[i].outcome == retakeRacing {
			out[i].outcome = retakeNone // changed three times over: leave it to whoever changes it
		}
	}
	return out, nil
}

// Sessions writes a node's sessions to Redis and reads them back. It is
// safe for concurrent use.
type Sessions struct {
	s *Store
	// Service is this node's service (empty on a gateway); it names the
	// function state the node writes.
	Service string
	// Instance is this node's instance (empty on a gateway): a delete
	// removes only a session whose record names it the primary at its
	// service's hop.
	Instance string
	// Known, if not nil, reports whether the map the node runs has an
	// instance of that name. A record whose hop names one it no longer
	// has (removed while it carried flows) is then this writer's to take
	// over, and to delete if the node's own roles name it at the hop.
	Known func(instance string) bool
	TTL   time.Duration
	// trimEvery and registerEvery are how often the writer trims an
	// index it adds to, and registers it (Sessions.upkeepDue).
	trimEvery, registerEvery time.Duration
	// mu guards upkeep, swept, trimWarned and registerWarned.
	mu sync.Mutex
	// upkeep holds when the writer last trimmed and registered each
	// index it added to since swept (Unix ms), when it last forgot those
	// due both.
	upkeep map[roles]indexUpkeep
	swept  int64
	// trimWarned and registerWarned say a refused trim or registration
	// was logged.
	trimWarned, registerWarned bool
}

// indexTrimEvery is how often a writer trims the expired entries of an
// index it adds to; indexRegisterEvery, how often it names the index
// again in its instances' sets.
const (
	indexTrimEvery     = 10 * time.Second
	indexRegisterEvery = time.Minute
)

// NewSessions returns the session writer and reader of a node that holds
// instance, of service ("" for both on a gateway). Sessions live ttl in
// Redis unless refreshed.
func (s *Store) NewSessions(service, instance string, ttl time.Duration) *Sessions {
	return &Sessions{s: s, Service: service, Instance: instance, TTL: ttl,
		trimEvery: indexTrimEvery, registerEvery: indexRegisterEvery, upkeep: map[roles]indexUpkeep{}}
}

// Write writes a batch of mirror operations, named by [sessions.Name], in
// one pipeline; an operation without hops (its tenant left the map) is
// skipped. A session is listed in one index, named by the roles at all
// its hops (roles), and index entries are gathered per index, so a batch
// costs each index one ZADD, not one per session.
//
// Who indexes a new session: the create that says so (indexes), in the
// same pipeline, before it knows whether it won: a gateway's (OpCreate),
// or a firewall's (OpCreateState) that carries Index, for a TCP
// connection no gateway creates. When it lost to a first writer whose
// roles differ (another node on another map version), a second pipeline
// replaces the entries with the first writer's. Other function creates
// do not index: the gateway in front of them does, and their own
// refreshes do when the session's life runs low. That keeps one flow
// from costing its indexes twice.
//
// A create is one native command, no script: SET NX GET with the expiry
// writes the record (the whole session but its update time and state;
// with the state of a firewall that creates a connection's session, see
// batch.queue) unless one exists, atomically with its TTL, and replies with the
// existing record if there was one: a loser learns the first writer's
// roles in the same round trip. A connection's own create, as it opens
// (Replace with indexes: the gateway's, or its chain's first firewall's),
// is SET GET without NX: a record it finds is an earlier connection's on
// the 5-tuple, which the node may not know (an agent restarted since,
// another instance carried it). Losing to it would leave the new
// connection on that record's remaining life and roles. What of it would
// outlive it goes: this writer's verdict in the state hash by a HDEL in
// the create's own round trip, its index entries under other roles in
// the follow-up (replaced). In Redis a script cost about 38 µs a call
// against 2-3 µs a native command (COMMANDSTATS in the new-flow
// benchmark), and creates are per flow.
//
// Takeovers are written first, each a read and a conditional write
// (retake). Only a takeover that rewrote the record writes more: the
// taker's verdict, and the session's index entry moved from the roles
// the record had (whose primary may be an instance the map no longer
// names) to the taker's. One that did not (no session, or a third
// instance holds the hop) writes nothing: a state hash would have no
// life, and an entry would name roles the record does not have. With a
// session key (Store.SealSessions) every record and state is sealed.
//
// A delete removes a session only if its record still names this
// writer's instance the primary at its service's hop: the node that sees
// a flow end is not always the one that holds it. A flow migrated or
// failed over to another instance leaves its conntrack entry behind on
// the old one, and a UDP entry times out there while the flow lives on;
// so does the entry of an instance a create lost to (another node's
// pins won, and the flow moved). The batch reads the record (GET) and a
// second pipeline deletes it and its index entries, by the record's
// roles, not the writer's. A record this writer cannot read (malformed,
// or sealed with a key it does not trust) is left to its life. Between
// the read and the delete a takeover could still rewrite the record:
// that needs a flow that went quiet here to be taken over elsewhere in
// the same round trip, and a refresh that then finds the session gone
// rewrites it (Outcome.Lost). A delete followed in the batch by another
// operation of its flow (a new connection on the 5-tuple) is written
// unconditionally, in order, as the node on that flow's path.
//
// A refresh by a writer that is an instance is conditional the same way:
// it reads the record, and the follow-up extends the session's life and
// its index entries, under the record's roles, only while the record
// names the writer's instance the primary at its hop. Otherwise nothing
// is written and the outcome says Moved: the flow was handed over or
// taken over, and the node's conntrack, which the flow no longer crosses,
// still tracks it. A blind refresh would index the session under the old
// primary again and, once the flow ended elsewhere, find it gone and have
// the node write it back (Lost). A refresh followed in the batch by
// another operation of its flow is not written: that one says what the
// flow is now (a new connection's create, on roles the record read
// before it may not have).
//
// With Known, a hop whose primary the node's map no longer has (an
// instance removed while it carried flows) is this writer's where the
// node's own roles name it there: a takeover from "" (what
// [sessions.Name] calls such an instance) takes it, a refresh extends it,
// and a delete removes the session.
func (w *Sessions) Write(ctx context.Context, ops []sessions.Named) ([]sessions.Outcome, error) {
	taken, err := w.retakeOps(ctx, ops)
	if err != nil {
		return nil, err
	}
	return w.write(ctx, ops, taken)
}

// retakeOps writes the takeovers among ops (retake), before the rest of
// the batch: a state written after a takeover lands on the new record. It
// returns what retake did with each takeover, by its index in ops (nil
// if ops has none).
func (w *Sessions) retakeOps(ctx context.Context, ops []sessions.Named) ([]retaken, error) {
	var reqs []retakeReq
	var of []int // the op of each request
	now := time.Now().UnixMilli()
	for i := range ops {
		op := &ops[i]
		h := op.Record.Hops
		if op.Kind != sessions.OpTakeover || op.Hop < 0 || op.Hop >= len(h) {
			continue
		}
		// This node (now pinned at hop) replaces op.From, unless Redis
		// says a third instance got there first.
		reqs = append(reqs, retakeReq{flow: op.Record.Flow, hop: op.Hop, from: op.From, to: h[op.Hop].Primary,
			sec: h[op.Hop].Secondary, ttl: w.TTL, nowMS: now})
		of = append(of, i)
	}
	if len(reqs) == 0 {
		return nil, nil
	}
	res, err := w.s.retake(ctx, reqs, w.gone)
	if err != nil {
		return nil, err
	}
	taken := make([]retaken, len(ops))
	for j, r := range res {
		taken[of[j]] = r
	}
	return taken, nil
}

// indexes reports whether op is a create that indexes its session.
func indexes(op *sessions.Named) bool {
	return op.Kind == sessions.OpCreate || op.Kind == sessions.OpCreateState && op.Index
}

// createCmd is the reply to a create: nil (redis.Nil) if it wrote the
// session, else the first writer's record.
type createCmd struct {
	first *redis.StatusCmd
	// hops is the end of the record this writer sent: its roles.
	hops []byte
	// stateInRecord says the record carries this writer's state, which
	// a create that lost has yet to write to the state hash.
	stateInRecord bool
	// replace says the create overwrote any record there was (SET GET
	// without NX): first, if not nil, names the earlier connection's.
	replace bool
}

// found reports whether Redis held a record for the create's key.
func (c createCmd) found() bool { return c.first != nil && c.first.Err() == nil }

// lost reports whether the create found a first writer's record and so
// wrote nothing.
func (c createCmd) lost() bool { return !c.replace && c.found() }

// batch is one Write's first pipeline and what its replies are read for.
type batch struct {
	s       *Store
	w       *Sessions
	due     []roles // indexes due a trim (Sessions.upkeepDue)
	ctx     context.Context
	pipe    redis.Pipeliner
	idx     indexBatch
	service string
	ttl     time.Duration
	nowMS   int64
	// deadline is index entries' score: Unix ms in decimal, formatted
	// and boxed once per batch (go-redis formats a float64 argument
	// each time it writes one: about 0.15 µs a flow).
	deadline any
	creates  []createCmd
	// taken holds what the takeovers of the batch did (retakeOps), by
	// operation, nil in a batch that has none.
	taken []retaken
	// refreshes holds the reply of each unconditional refresh (a writer
	// that is no instance), for Outcome.Lost, nil in a batch that has
	// none.
	refreshes []*redis.BoolCmd
	// reads holds the record read for each conditional delete and
	// refresh (settle); last, the index of the last operation of each
	// flow. Both are nil in a batch that has neither.
	reads []*redis.StringCmd
	last  map[string]int
	// ttlArg, nowArg and stField are arguments of most commands, boxed
	// once per batch: go-redis's typed helpers (SetArgs, PExpire, HSet)
	// box and format every argument of every call.
	ttlArg, nowArg, stField any
	// buf holds the batch's records, encoded one after the other: one
	// allocation for the batch's creates, sized at the first.
	buf []byte
}

// recordSize is about the size of a record of a two-service chain with
// its creator's verdict, to size a batch's buf.
const recordSize = 384

// flushIndex queues the batch's index entries (indexBatch.flush), and
// registers, and remembers for a trim, the indexes due either.
func (b *batch) flushIndex() {
	b.idx.flush(b.ctx, b.pipe, func(r roles) bool {
		trim, register := b.w.upkeepDue(r, b.nowMS)
		if trim {
			b.due = append(b.due, r)
		}
		return register
	})
}

// pexpire queues PEXPIRE key ttl.
func (b *batch) pexpire(key any) *redis.BoolCmd {
	c := redis.NewBoolCmd(b.ctx, "pexpire", key, b.ttlArg)
	_ = b.pipe.Process(b.ctx, c) // a pipeline only queues: no error here
	return c
}

func (w *Sessions) write(ctx context.Context, ops []sessions.Named, taken []retaken) ([]sessions.Outcome, error) {
	now := time.Now()
	b := &batch{
		s: w.s, w: w, ctx: ctx, pipe: w.s.rdb.Pipeline(), idx: newIndexBatch(), service: w.Service, ttl: w.TTL, taken: taken,
		nowMS: now.UnixMilli(), deadline: any(strconv.FormatInt(now.Add(w.TTL).UnixMilli(), 10)),
		creates: make([]createCmd, len(ops)),
		ttlArg:  w.TTL.Milliseconds(), nowArg: now.UnixMilli(), stField: "st:" + w.Service,
	}
	// Deletes and an instance's refreshes read the record first (settle),
	// and each needs to know whether a later operation of its flow follows
	// in the batch.
	conditional := func(op sessions.Named) bool {
		return op.Kind == sessions.OpDelete || op.Kind == sessions.OpRefresh && w.Instance != ""
	}
	if slices.ContainsFunc(ops, conditional) {
		b.last, b.reads = make(map[string]int, len(ops)), make([]*redis.StringCmd, len(ops))
		for i := range ops {
			b.last[ops[i].Record.Flow] = i
		}
	}
	if w.Instance == "" && slices.ContainsFunc(ops, func(op sessions.Named) bool { return op.Kind == sessions.OpRefresh }) {
		b.refreshes = make([]*redis.BoolCmd, len(ops))
	}
	for i := range ops {
		b.queue(i, &ops[i])
	}
	b.flushIndex()
	out := make([]sessions.Outcome, len(ops))
	if cmds, err := b.pipe.Exec(ctx); err != nil && !w.registrationRefused(cmds) {
		if err := failed(cmds, err); err != nil && !refused(cmds, ops, out) {
			return nil, fmt.Errorf("writing sessions to %s: %w", w.s.addr, permission(err))
		}
	}
	w.trim(ctx, b.due, b.nowMS)
	for i, c := range b.refreshes {
		if c != nil && c.Err() == nil && !c.Val() {
			out[i].Lost = true
		}
	}
	f := b.reconcile(ops, out)
	b.settle(ops, out, &f)
	if err := w.followUp(ctx, b, f, ops, out); err != nil {
		return nil, err
	}
	return out, nil
}

// queue adds the commands of op (the i-th of the batch) to the pipeline.
func (b *batch) queue(i int, op *sessions.Named) {
	ctx, pipe, rec := b.ctx, b.pipe, &op.Record
	h := rec.Hops
	if len(h) == 0 {
		return // the tenant is gone from the map: nothing to name
	}
	keyS := sessionKey(rec.Flow)
	var key any = keyS // boxed once for every command that names it
	// The state hash's key, named and boxed once if a command needs it: a
	// firewall's create of a connection does not.
	var stKeyBoxed any
	stKey := func() any {
		if stKeyBoxed == nil {
			stKeyBoxed = stateKey(rec.Flow)
		}
		return stKeyBoxed
	}
	writeState := func() {
		if b.service != "" {
			_ = pipe.Process(ctx, redis.NewIntCmd(ctx, "hset", stKey(), b.stField, b.s.sealState(rec.Flow, b.service, op.State), "updated", b.nowArg))
		}
	}
	switch op.Kind {
	case sessions.OpCreate, sessions.OpCreateState:
		mt := metaOf(rec)
		// The firewall that creates a connection's session (Index) keeps
		// its verdict in the record: one command instead of three (no
		// HSET and PEXPIRE of a state hash), and the session has no hash
		// until its state changes.
		inRecord := op.Kind == sessions.OpCreateState && op.Index && b.service != ""
		if inRecord {
			mt.creator = ownState{b.service, op.State}
		}
		if b.buf == nil {
			b.buf = make([]byte, 0, recordSize*(len(b.creates)-i))
		}
		start := len(b.buf)
		var hopsLen int
		b.buf, hopsLen = mt.appendJSON(b.buf)
		// Capped: a later append to the arena cannot reach into it.
		m := b.s.sealRecord(rec.Flow, b.buf[start:len(b.buf):len(b.buf)])
		replace := op.Replace && indexes(op)
		args := []any{"set", key, m, "px", b.ttlArg, "nx", "get"}
		if replace {
			// A connection's own create (it opened here): what Redis holds
			// for its 5-tuple is an earlier connection's, not a first
			// writer to lose to. Its reply still names that record, for
			// the follow-up to clear what would outlive it (reconcile).
			args = slices.Delete(args, 5, 6)
		}
		first := redis.NewStatusCmd(ctx, args...)
		_ = pipe.Process(ctx, first)
		if replace && inRecord {
			// An earlier connection's verdict of this writer's, in the
			// state hash, would override the one in the new record. It
			// goes right after the create, whether or not there was an
			// earlier connection, so that a verdict the batch writes
			// after the create stays. (A HDEL per create against a
			// follow-up round trip per batch: about even in the lab,
			// BENCHMARKS.md, session 47.) Its update time goes too: a
			// hash left with no verdict is gone.
			_ = pipe.Process(ctx, redis.NewIntCmd(ctx, "hdel", stKey(), b.stField, "updated"))
		}
		b.creates[i] = createCmd{first: first, hops: m[len(m)-hopsLen:], stateInRecord: inRecord, replace: replace}
		if op.Kind == sessions.OpCreateState && b.service != "" && !inRecord {
			writeState()
			b.pexpire(stKey())
		}
		if indexes(op) {
			b.idx.add(rec.Flow, h, b.deadline)
		}
	case sessions.OpState:
		writeState()
		b.pexpire(key)
		b.pexpire(stKey())
		b.idx.add(rec.Flow, h, b.deadline)
	case sessions.OpRefresh:
		if b.w.Instance == "" {
			// A writer that is no instance holds no role to check.
			b.refreshes[i] = b.pexpire(key)
			b.pexpire(stKey())
			b.idx.add(rec.Flow, h, b.deadline)
			return
		}
		if b.last[rec.Flow] != i {
			// A later operation of the flow in this batch (a new
			// connection's create on its 5-tuple, its state, its end)
			// writes what the flow is now. Extended by the record read
			// before that one, the session would be indexed again under
			// the roles an earlier connection had.
			return
		}
		// Read first: the follow-up extends the session only while its
		// record names this writer's instance the primary (settle).
		b.reads[i] = redis.NewStringCmd(ctx, "get", key)
		_ = pipe.Process(ctx, b.reads[i])
	case sessions.OpTakeover:
		hop := op.Hop
		if hop < 0 || hop >= len(h) {
			return // not asked of Redis (retakeOps)
		}
		if t := b.taken[i]; t.outcome != retakeDone {
			// The record was not rewritten (retakeOps): Redis has no
			// session to take over (its flow ended, or its record is not
			// to be trusted), or a third instance holds the hop. Nothing
			// is this node's to write: a state hash written now would
			// have no life, and an index entry would list the session
			// under roles its record does not have.
			return
		}
		// The record was rewritten before this pipeline, with its state
		// hash's life. A firewall's secondary that took its own hop over
		// writes the verdict it carries; a node that hands over another
		// hop (a dead forwarder's, from the node in front of it) writes
		// no state.
		if b.service != "" && h[hop].Service == b.service {
			pipe.HSet(ctx, stateKey(rec.Flow), "st:"+b.service, b.s.sealState(rec.Flow, b.service, op.State))
		}
		b.flushIndex() // what was added before goes before the removal
		// The session leaves the index of the roles its record had: the
		// hop's primary may be one the map no longer names (op.From ""),
		// and another hop's roles may differ from the node's. The
		// entries an earlier version wrote go too.
		t := b.taken[i]
		after := t.after(hop, h[hop].Primary, h[hop].Secondary)
		if !sameRoles(t.before, after) {
			for _, k := range rolesOf(t.before).keys() {
				pipe.ZRem(ctx, k, rec.Flow)
			}
		}
		b.idx.add(rec.Flow, after, b.deadline)
	case sessions.OpDelete:
		if b.last[rec.Flow] == i {
			b.reads[i] = redis.NewStringCmd(ctx, "get", key)
			_ = pipe.Process(ctx, b.reads[i])
			return
		}
		// Another operation of the flow follows: this node is on its path
		// again, and the old session must be gone before it.
		b.flushIndex()
		pipe.Del(ctx, keyS, stateKey(rec.Flow))
		for _, k := range rolesOf(h).keys() {
			pipe.ZRem(ctx, k, rec.Flow)
		}
	}
}

// settle decides the batch's conditional deletes and refreshes from the
// records they read, for the follow-up. A session whose record names this
// writer's instance the primary at its service's hop is this writer's: a
// delete removes it, with its index entries under the record's roles, and
// a refresh extends its life and those entries. Any other is left alone,
// and a refresh of it reports it Moved: its flow was handed over or taken
// over, and the node's conntrack still tracks it. A session already gone
// is left alone too (whoever deleted it took its entries, and the trim
// takes those of one that expired), and a refresh of it reports it Lost.
func (b *batch) settle(ops []sessions.Named, out []sessions.Outcome, f *followUp) {
	var end []byte
	for i, c := range b.reads {
		if c == nil {
			continue
		}
		refresh := ops[i].Kind == sessions.OpRefresh
		v, err := c.Result()
		if refresh && errors.Is(err, redis.Nil) {
			out[i].Lost = true
		}
		if err != nil {
			continue // gone (redis.Nil), or the batch's error says why
		}
		rec := &ops[i].Record
		end = appendHopsJSON(end[:0], rec.Hops)
		hops, ok := b.s.hopsIn(rec.Flow, v, end, rec.Hops)
		if !ok {
			continue
		}
		switch {
		case !b.w.holds(hops, rec.Hops):
			out[i].Moved = refresh
			continue
		case refresh:
			f.refreshed = append(f.refreshed, rec.Flow)
			f.idx.add(rec.Flow, hops, b.deadline)
			continue
		}
		f.deleted = append(f.deleted, rec.Flow)
		f.ended.remove(rec.Flow, hops)
	}
}

// hopsIn returns the roles that v, flow's record as read from Redis,
// names. Usually those the node knows, ours: then v ends as the node
// would write it (end, their encoding), and there is nothing to decode.
// It reports false for a record it cannot read (malformed, or sealed
// with a key it does not trust).
func (s *Store) hopsIn(flow, v string, end []byte, ours []sessions.Hop) ([]sessions.Hop, bool) {
	if strings.HasSuffix(v, string(end)) {
		return ours, true
	}
	m, ok := s.metaIn(flow, v)
	return m.Hops, ok
}

// metaIn decodes v, flow's record as read from Redis. It reports false
// for a record it cannot read: malformed, sealed with a key it does not
// trust, or copied from another flow's key.
func (s *Store) metaIn(flow, v string) (meta, bool) {
	raw, err := s.openRecord(flow, []byte(v))
	if err != nil {
		return meta{}, false
	}
	var m meta
	if err := json.Unmarshal(raw, &m); err != nil || m.Flow != flow {
		return meta{}, false
	}
	return m, true
}

// holds reports whether the record's roles, hops, name w's instance the
// primary at w's service's hop (a chain holds a service once), or name
// one the map no longer has where the node's own roles, ours, name w's.
func (w *Sessions) holds(hops, ours []sessions.Hop) bool {
	h := hopOf(hops, w.Service)
	if w.Instance == "" || h.Service != w.Service {
		return false
	}
	return h.Primary == w.Instance || w.gone(h.Primary) && hopOf(ours, w.Service).Primary == w.Instance
}

// hopOf returns the hop of service in hops (the zero Hop if none).
func hopOf(hops []sessions.Hop, service string) sessions.Hop {
	for _, h := range hops {
		if h.Service == service {
			return h
		}
	}
	return sessions.Hop{}
}

// gone reports whether the map the node runs no longer has instance
// (Known); without Known, every instance is known.
func (w *Sessions) gone(instance string) bool { return w.Known != nil && !w.Known(instance) }

// followUp is what a batch leaves to a second pipeline: what its creates
// that lost must settle, and its conditional refreshes and deletes.
type followUp struct {
	// stale are index entries the batch added that the first writers'
	// roles lack; idx, those the batch lacks of theirs.
	stale []indexEntry
	idx   indexBatch
	// states are the operations whose state the batch put in a record
	// that lost: it goes to the state hash.
	states []int
	// refreshed are the flows whose sessions settle found this writer's
	// to extend (their index entries are in idx).
	refreshed []string
	// deleted are the flows whose sessions settle found this writer's
	// to delete, and ended their index entries (flushed as removals).
	deleted []string
	ended   indexBatch
}

// reconcile reads the creates that lost: each outcome learns the first
// writer's record. For a create that indexes, whose roles differ from the
// first writer's (another node on another map version), the follow-up
// removes the index entries this batch added that the first writer's
// roles lack and adds those it lacks of theirs; for a create whose state
// was in its record, it writes the state. A create that replaced a record
// leaves the follow-up what of it would outlive it (replaced).
func (b *batch) reconcile(ops []sessions.Named, out []sessions.Outcome) (f followUp) {
	f.idx, f.ended = newIndexBatch(), newIndexBatch()
	for i, c := range b.creates {
		if c.replace && c.found() {
			b.replaced(&ops[i], c, &f)
		}
		if !c.lost() {
			continue
		}
		if c.stateInRecord {
			f.states = append(f.states, i)
		}
		// Lost: the session existed. Usually the first writer named the
		// same roles, in the same encoding: then its record ends as ours
		// does and there is nothing to decode. A first writer's record
		// that does not decode (written by hand) leaves this node on its
		// own pins; the entry is reported as malformed wherever it is
		// read.
		rec := &ops[i].Record
		first := &sessions.Record{Flow: rec.Flow, Tenant: rec.Tenant, Hops: rec.Hops}
		if !strings.HasSuffix(c.first.Val(), string(c.hops)) {
			m, ok := b.s.metaIn(rec.Flow, c.first.Val())
			if !ok {
				continue // not to be trusted: this node keeps its own pins
			}
			first = m.record()
		}
		out[i].Existed, out[i].First = true, first
		if !indexes(&ops[i]) {
			continue
		}
		if !sameRoles(rec.Hops, first.Hops) {
			f.stale = append(f.stale, indexEntry{rolesOf(rec.Hops).key(), rec.Flow})
			f.idx.add(rec.Flow, first.Hops, b.deadline)
		}
	}
	return f
}

// replaced leaves to the follow-up what of an earlier connection on op's
// 5-tuple would outlive its record, which op's create replaced (c): the
// index entries under roles op's lack. This writer's verdict in the state
// hash, which readers would take over the one in op's record, went in
// the create's own round trip (batch.queue); other writers' verdicts
// stay: each writes its own for the new connection, perhaps already.
func (b *batch) replaced(op *sessions.Named, c createCmd, f *followUp) {
	hops, ok := b.s.hopsIn(op.Record.Flow, c.first.Val(), c.hops, op.Record.Hops)
	if !ok {
		return // its index entries are trimmed when they expire
	}
	if !sameRoles(hops, op.Record.Hops) {
		f.stale = append(f.stale, indexEntry{rolesOf(hops).key(), op.Record.Flow})
	}
}

// followUp writes f in a second pipeline, if it holds anything.
func (w *Sessions) followUp(ctx context.Context, b *batch, f followUp, ops []sessions.Named, out []sessions.Outcome) error {
	if len(f.stale) == 0 && f.idx.empty() && len(f.states) == 0 && len(f.refreshed) == 0 && len(f.deleted) == 0 {
		return nil
	}
	pipe := w.s.rdb.Pipeline()
	for _, flow := range f.refreshed {
		_ = pipe.Process(ctx, redis.NewBoolCmd(ctx, "pexpire", sessionKey(flow), b.ttlArg))
		_ = pipe.Process(ctx, redis.NewBoolCmd(ctx, "pexpire", stateKey(flow), b.ttlArg))
	}
	for _, i := range f.states {
		flow := ops[i].Record.Flow
		pipe.HSet(ctx, stateKey(flow), b.stField, w.s.sealState(flow, w.Service, ops[i].State), "updated", b.nowArg)
		pipe.PExpire(ctx, stateKey(flow), w.TTL)
	}
	zrem(ctx, pipe, f.stale)
	// Registered as the first pipeline registers, and trimmed after.
	var due []roles
	f.idx.flush(ctx, pipe, func(r roles) bool {
		trim, register := w.upkeepDue(r, b.nowMS)
		if trim {
			due = append(due, r)
		}
		return register
	})
	// The deletes last: a create of the same flow earlier in the batch
	// may have left it state and index entries above.
	for _, flow := range f.deleted {
		pipe.Del(ctx, sessionKey(flow), stateKey(flow)) // one slot: {flow}
	}
	f.ended.flushRemovals(ctx, pipe)
	if cmds, err := pipe.Exec(ctx); err != nil && !w.registrationRefused(cmds) {
		if err := failed(cmds, err); err != nil && !refused(cmds, ops, out) {
			return fmt.Errorf("settling sessions that existed at %s: %w", w.s.addr, permission(err))
		}
	}
	w.trim(ctx, due, b.nowMS)
	return nil
}

// failed returns the first error among cmds that is not redis.Nil, or err,
// what Exec returned, if none is: Exec reports the first error of any
// kind, and a create that won replies nil (redis.Nil), which would hide a
// later command's error.
func failed(cmds []redis.Cmder, err error) error {
	for _, c := range cmds {
		if e := c.Err(); e != nil && !errors.Is(e, redis.Nil) {
			return e
		}
	}
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

// refused handles a batch in which Redis refused commands. If every
// refusal is for good (WRONGTYPE: a key where a session or an index goes
// holds another type, written by hand), it records each on the operations
// whose session or index the key is, and reports true: the rest of the
// batch was written, and writing it again would be refused again. Any
// other error (a connection lost, a script Redis does not know, a cluster
// still converging) reports false: the caller writes the batch again.
func refused(cmds []redis.Cmder, ops []sessions.Named, out []sessions.Outcome) bool {
	var keys []string
	var errs []error
	for _, c := range cmds {
		err := c.Err()
		if err == nil || errors.Is(err, redis.Nil) {
			continue
		}
		k := 1 // the key's place in the command; a script's comes after its digest and key count
		if n := c.Name(); n == "evalsha" || n == "eval" {
			k = 3
		}
		if !redis.HasErrorPrefix(err, "WRONGTYPE") || len(c.Args()) <= k {
			return false
		}
		keys = append(keys, fmt.Sprint(c.Args()[k]))
		errs = append(errs, err)
	}
	// A rare path: the keys of each operation are named again here rather
	// than remembered for every batch.
	for i := range ops {
		flow := ops[i].Record.Flow
		mine := append([]string{sessionKey(flow), stateKey(flow)}, rolesOf(ops[i].Record.Hops).keys()...)
		for j, k := range keys {
			if out[i].Refused == nil && slices.Contains(mine, k) {
				out[i].Refused = fmt.Errorf("session %s: key %s: %w: %v", flow, k, ErrMalformed, errs[j])
			}
		}
	}
	return true
}

// Get returns the session of flow as Redis holds it. A malformed entry gives
// an error wrapping ErrMalformed that names the key.
func (w *Sessions) Get(ctx context.Context, flow sessions.Key) (*sessions.Record, error) {
	return w.s.Session(ctx, flow.String())
}

// GetAll reads the sessions of flows, in one pipeline: each has a record
// or an error, as [Sessions.Get] returns them; err says Redis did not
// answer.
func (w *Sessions) GetAll(ctx context.Context, flows []sessions.Key) ([]*sessions.Record, []error, error) {
	names := make([]string, len(flows))
	for i, f := range flows {
		names[i] = f.String()
	}
	return w.s.sessions(ctx, names)
}

// Session returns the session of the named flow. A key of the wrong type
// or a record that does not decode (written by hand) gives an error
// wrapping ErrMalformed that names the key.
func (s *Store) Session(ctx context.Context, flow string) (*sessions.Record, error) {
	recs, errs, err := s.sessions(ctx, []string{flow})
	if err != nil {
		return nil, err
	}
	return recs[0], errs[0]
}

// sessions reads the sessions of flows in one pipeline: each record, its
// state hash and its life left. Each flow has a record or an error
// (ErrNoSession, ErrMalformed); err says Redis did not answer.
func (s *Store) sessions(ctx context.Context, flows []string) (recs []*sessions.Record, errs []error, err error) {
	type read struct {
		rec *redis.StringCmd
		st  *redis.MapStringStringCmd
		ttl *redis.DurationCmd
	}
	pipe := s.rdb.Pipeline()
	reads := make([]read, len(flows))
	for i, flow := range flows {
		reads[i] = read{pipe.Get(ctx, sessionKey(flow)), pipe.HGetAll(ctx, stateKey(flow)), pipe.PTTL(ctx, sessionKey(flow))}
	}
	cmds, err := pipe.Exec(ctx)
	if err := failed(cmds, err); err != nil && !redis.HasErrorPrefix(err, "WRONGTYPE") {
		return nil, nil, fmt.Errorf("reading sessions from %s: %w", s.addr, permission(err))
	}
	recs, errs = make([]*sessions.Record, len(flows)), make([]error, len(flows))
	for i, flow := range flows {
		r := reads[i]
		key := sessionKey(flow)
		for _, c := range []redis.Cmder{r.rec, r.st} {
			if e := c.Err(); e != nil && !errors.Is(e, redis.Nil) {
				errs[i] = fmt.Errorf("session %s or %s: %w: %v", key, stateKey(flow), ErrMalformed, e)
			}
		}
		switch {
		case errs[i] != nil:
			continue
		case errors.Is(r.rec.Err(), redis.Nil):
			errs[i] = fmt.Errorf("%s: %w", key, ErrNoSession)
			continue
		}
		rec, err := s.decodeRecord(flow, r.rec.Val(), r.st.Val())
		if err != nil {
			errs[i] = fmt.Errorf("session %s: %w: %v", key, ErrMalformed, err)
			continue
		}
		rec.TTL = r.ttl.Val()
		recs[i] = rec
	}
	return recs, errs, nil
}

// decodeRecord makes a Record of flow's record and its state hash,
// checking their seals if s has a session key. A record that names
// another flow is refused: it was copied from another key.
func (s *Store) decodeRecord(flow, record string, f map[string]string) (*sessions.Record, error) {
	b, err := s.openRecord(flow, []byte(record))
	if err != nil {
		return nil, fmt.Errorf("record: %v", err)
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("record: %v", err)
	}
	if m.Flow != flow {
		return nil, fmt.Errorf("record: of flow %q, stored as %q", m.Flow, flow)
	}
	r := m.record()
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("record: %v", err)
	}
	if u, err := strconv.ParseInt(f["updated"], 10, 64); err == nil {
		r.Updated = u
	}
	for k, v := range f {
		if svc, ok := strings.CutPrefix(k, "st:"); ok {
			st, err := s.openState(flow, svc, v)
			if err != nil {
				return nil, fmt.Errorf("record: %v", err)
			}
			if r.State == nil {
				r.State = map[string]string{}
			}
			r.State[svc] = st
		}
	}
	return r, nil
}

// List returns the sessions for which instance holds role, read from the
// instance's index (no keyspace scan). Entries that expired are pruned;
// malformed ones are skipped and returned in bad.
func (s *Store) List(ctx context.Context, instance, role string) (recs []*sessions.Record, bad []error, err error) {
	flows, err := s.indexed(ctx, instance, role)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range flows {
		r, err := s.Session(ctx, f)
		switch {
		case errors.Is(err, ErrNoSession):
			continue
		case errors.Is(err, ErrMalformed):
			bad = append(bad, err)
			continue
		case err != nil:
			return nil, nil, err
		}
		// The index may lag a takeover: trust the entry's own roles.
		holds := false
		for _, h := range r.Hops {
			if role == RolePrimary && h.Primary == instance || role == RoleSecondary && h.Secondary == instance {
				holds = true
			}
		}
		if holds {
			recs = append(recs, r)
		}
	}
	return recs, bad, nil
}

// Handover gives the sessions for which instance holds the primary role to
// the instances that hold their slots' primary roles on next (a table on
// which instance holds none): the record's pins and roles, and the index
// it is listed in, change in Redis with the session's state untouched.
// A node that then meets one of these flows finds it under its own primary
// role. Entries another node changed meanwhile are left alone. It returns
// how many sessions moved; malformed entries are skipped and returned in
// bad.
func (s *Store) Handover(ctx context.Context, instance string, next *steering.Table) (moved int, bad []error, err error) {
	recs, bad, err := s.List(ctx, instance, RolePrimary)
	if err != nil {
		return 0, bad, err
	}
	now := time.Now()
	var reqs []retakeReq
	var of []int // the record of each request
	for i, r := range recs {
		ttl := max(r.TTL, time.Minute)
		for hop, h := range r.Hops {
			if h.Primary != instance {
				continue
			}
			svc := next.ServiceByName(h.Service)
			if svc < 0 {
				continue
			}
			to, sec := next.RolesFor(svc, r.Slot)
			if to == nil || to.Out() || to.Name == instance {
				continue
			}
			secName := ""
			if sec != nil && !sec.Out() {
				secName = sec.Name
			}
			reqs = append(reqs, retakeReq{flow: r.Flow, hop: hop, from: instance, to: to.Name, sec: secName, ttl: ttl, nowMS: now.UnixMilli()})
			of = append(of, i)
		}
	}
	if len(reqs) == 0 {
		return 0, bad, nil
	}
	res, err := s.retake(ctx, reqs, func(string) bool { return false })
	if err != nil {
		return 0, bad, fmt.Errorf("handing sessions of %s over: %w", instance, err)
	}
	// The indexes follow the records that moved, in one pipeline: each
	// leaves the index of the roles it was listed with, and the entries
	// an earlier version wrote (in its hops' pair indexes, or in the
	// instances' indexes of one role each), for that of its new roles,
	// registered once.
	pipe := s.rdb.Pipeline()
	counted := map[int]bool{}
	named := map[roles]bool{}
	for i, req := range reqs {
		t := res[i]
		if t.outcome != retakeDone {
			continue
		}
		if !counted[of[i]] {
			counted[of[i]] = true
			moved++
		}
		after := rolesOf(t.after(req.hop, req.to, req.sec))
		for _, k := range rolesOf(t.before).keys() {
			pipe.ZRem(ctx, k, req.flow)
		}
		pipe.ZRem(ctx, legacyIndexKey(instance, RolePrimary), req.flow)
		pipe.ZRem(ctx, legacyIndexKey(req.to, RoleSecondary), req.flow)
		if !named[after] {
			named[after] = true
			register(ctx, pipe, after)
		}
		pipe.ZAdd(ctx, after.key(), redis.Z{Score: float64(now.Add(req.ttl).UnixMilli()), Member: req.flow})
	}
	if moved > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return moved, bad, fmt.Errorf("indexing the sessions %s handed over at %s: %w", instance, s.addr, permission(err))
		}
	}
	return moved, bad, nil
}
