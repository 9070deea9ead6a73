// Package broker runs the embedded Kafka-protocol broker (kfake), so that
// eventrouter works with nothing installed but itself.
package broker

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/eventrouter/eventrouter/config"
)

// Embedded is a running in-process broker.
type Embedded struct {
	cluster *kfake.Cluster
	addr    string
	stop    chan struct{}
	wg      sync.WaitGroup
}

// Start listens on cfg.Listen and serves the Kafka protocol there, with
// topics auto-created with cfg.Partitions partitions, the log and
// committed offsets kept in cfg.DataDir, and retention applied every
// cfg.RetentionCheckInterval.
func Start(cfg config.Embedded, logger *slog.Logger) (*Embedded, error) {
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(cfg.Partitions),
		// kfake binds 127.0.0.1 only; listening through ListenFn honours
		// the configured host, and kfake advertises what it listens on.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, cfg.Listen)
		}),
		kfake.BrokerConfigs(map[string]string{
			"log.retention.ms":    strconv.FormatInt(cfg.Retention.Milliseconds(), 10),
			"log.retention.bytes": strconv.FormatInt(cfg.RetentionBytes, 10),
		}),
	}
	if cfg.DataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start embedded kafka broker on %s: %w", cfg.Listen, err)
	}
	e := &Embedded{cluster: cluster, addr: cluster.ListenAddrs()[0], stop: make(chan struct{})}
	e.wg.Add(1)
	go e.applyRetention(cfg.RetentionCheckInterval)
	logger.Info("embedded kafka broker started", "addr", e.addr, "data_dir", cfg.DataDir,
		"partitions", cfg.Partitions, "retention", cfg.Retention.String())
	return e, nil
}

// Addr returns the host:port clients connect to.
func (e *Embedded) Addr() string { return e.addr }

// Close stops the broker and, with a data directory, flushes it to disk.
func (e *Embedded) Close() {
	close(e.stop)
	e.wg.Wait()
	e.cluster.Close()
}

// applyRetention bounds the broker's memory and disk: kfake applies
// retention by itself only to topics that set retention configs.
func (e *Embedded) applyRetention(every time.Duration) {
	defer e.wg.Done()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-tick.C:
			e.cluster.ApplyRetention()
		}
	}
}
