// Command eventrouter is a daemon that turns Kafka events into actions.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/eventrouter/eventrouter/app/cli"
)

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli.Main(ctx, os.Args[1:], cli.OSEnv())
}
