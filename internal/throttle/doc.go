// Package throttle says when something that happens often may be logged
// again: the first time, and then at most once every interval. The agent
// and the offload log through it what a failing kernel call or a full
// table would otherwise log at every try. It needs no privilege.
package throttle
