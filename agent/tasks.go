package agent

import (
	"context"

	"golang.org/x/sync/errgroup"
)

// Task is one long-running part of the agent. It returns when ctx is done
// (nil) or when it fails (the error stops the others).
type Task func(ctx context.Context) error

// runTasks runs every task until ctx is done or one fails, and waits for
// all of them to return.
func runTasks(ctx context.Context, tasks ...Task) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, t := range tasks {
		g.Go(func() error { return t(ctx) })
	}
	return g.Wait()
}
