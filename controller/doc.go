// Package controller owns instance health: it reads the agents' heartbeats
// from Redis, marks an instance down when its heartbeats stop and up when
// they return, and publishes each change as a new map version, which every
// node then applies (moving the dead instance's flows to their
// secondaries).
//
// One controller is active at a time: it holds a lease in Redis and
// renews it; others wait as standbys and take over when the lease lapses.
// Every change is one atomic publish, so a controller killed mid-update
// leaves either the old version or the new one, never half of either.
//
// It needs no privilege, only Redis.
package controller
