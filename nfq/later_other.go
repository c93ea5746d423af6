//go:build !linux

package nfq

type worker struct{}

// Set answers the deferred packet; without a queue there is nothing to
// answer.
func (l Later) Set(Result) {}
