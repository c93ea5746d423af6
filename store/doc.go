// Package store owns nfsteer's state in Redis: the connection (one URL for a
// single server, Sentinel or Cluster, through redis.UniversalClient), the key
// layout, and every read and write the other packages make there:
//
//   - the service map: a JSON document, the log of the deltas published
//     after it, and the live version, changed together in one WATCH/MULTI
//     transaction that refuses a version that is not newer than the live
//     one. Each version is announced on a pub/sub channel (an
//     [Announcement], which carries the delta from the version before when
//     it is small); a version with a delta is appended to the log, and
//     every 64 versions, or for any other change, the document is
//     rewritten whole;
//   - sessions: per flow, a record created first-writer-wins with its
//     expiry in one command (with its creator's state, when a firewall
//     creates it), and a hash of the functions' later state; per
//     instance and role, sorted-set indexes that list an instance's
//     sessions without scanning the keyspace;
//   - agents' heartbeats and reports, stamped with Redis's clock;
//   - the controller lease.
//
// Keys carry hash tags so that what one script or transaction touches
// lives in one Cluster slot: {map} for the map, the flow for a session,
// the instance for its indexes, {hb} for heartbeats, {ctl} for the lease.
//
// The package needs no privilege; a Store is safe for concurrent use.
package store
