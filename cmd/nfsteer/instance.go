package main

import (
	"fmt"
	"time"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/urfave/cli/v2"
)

func instanceCommand() *cli.Command {
	edit := func(name, usage, example, done string, change func(*steering.Published, string) (*steering.Published, error)) *cli.Command {
		return &cli.Command{
			Name:        name,
			Usage:       usage,
			ArgsUsage:   "INSTANCE",
			Description: "Example:\n   " + example,
			Flags:       []cli.Flag{redisFlag()},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return cli.Exit(fmt.Sprintf("%s takes one instance name, got %d arguments", name, c.NArg()), 2)
				}
				inst := c.Args().First()
				s, err := openStore(c)
				if err != nil {
					return err
				}
				defer s.Close()
				p, err := s.Publish(c.Context, func(live *steering.Published) (*steering.Published, error) {
					if live == nil {
						return nil, fmt.Errorf("no live map in Redis at %s: apply one first", s.Addr())
					}
					return change(live, inst)
				})
				if err != nil {
					return cli.Exit(fmt.Errorf("%s %s: %w", name, inst, err), 1)
				}
				fmt.Fprintf(c.App.Writer, "%s %s in map version %d at %s\n", inst, done, p.Version, time.Now().Format(time.RFC3339Nano))
				return nil
			},
		}
	}
	return &cli.Command{
		Name:  "instance",
		Usage: "change instances in the live map",
		Subcommands: []*cli.Command{
			edit("drain", "stop new flows to an instance; it keeps the flows it has",
				"nfsteer instance drain --redis redis://10.0.0.5:6379 fw-2", "drained", (*steering.Published).Drain),
			edit("undrain", "let a drained instance take new flows again",
				"nfsteer instance undrain --redis redis://10.0.0.5:6379 fw-2", "takes new flows", (*steering.Published).Undrain),
		},
	}
}
