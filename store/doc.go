// Package store owns nfsteer's state in Redis: the connection (one URL for a
// single server, Sentinel or Cluster, through redis.UniversalClient), the key
// layout, and every read and write the other packages make there:
//
//   - the service map, one JSON document per version, replaced atomically by
//     a script that refuses a version that is not newer than the live one,
//     and announced on a pub/sub channel (an [Announcement], which carries
//     the delta from the version before when it is small);
//   - sessions, one hash per flow, created first-writer-wins, with per
//     instance and role sorted-set indexes that list an instance's sessions
//     without scanning the keyspace;
//   - agents' heartbeats and reports, stamped with Redis's clock;
//   - the controller lease.
//
// Keys carry hash tags so that what one script touches lives in one Cluster
// slot: {map} for the map, the flow for a session, the instance for its
// indexes, {hb} for heartbeats, {ctl} for the lease.
//
// The package needs no privilege; a Store is safe for concurrent use.
package store
