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
//     combination of the roles at a chain's hops, a sorted-set index of
//     the sessions that have them, named in a set per instance, so that
//     an instance's sessions of either role are listed and counted
//     without scanning the keyspace;
//   - agents' heartbeats and reports, stamped with Redis's clock;
//   - the controller lease.
//
// Keys carry hash tags so that what one script or transaction touches
// lives in one Cluster slot: {map} for the map, the flow for a session,
// the roles for an index, the instance for its set of index names, {hb}
// for heartbeats, {ctl} for the lease.
//
// The package needs no privilege; a Store is safe for concurrent use.
package store
