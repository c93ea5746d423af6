// Package drain owns taking a service instance out of service without
// breaking its flows: drain (no new flows), wait for flows to end, hand the
// rest over in Redis, publish the version in which every node re-pins
// them, and wait for the nodes to run it. The CLI's `instance drain
// --migrate` is this protocol.
//
// It talks to the shared store through the narrow [Store] interface
// (*store.Store in production) and needs no privilege.
package drain
