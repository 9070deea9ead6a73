package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/ops"
	"github.com/eventrouter/eventrouter/ops/console"
)

// OpsAddr returns the address the ops server listens on, once it does.
func (d *Daemon) OpsAddr() string {
	if p := d.opsAddr.Load(); p != nil {
		return *p
	}
	return ""
}

func (d *Daemon) inFlight() int64 {
	var n int64
	for _, sub := range d.subs {
		n += sub.InFlight()
	}
	return n
}

// startOps connects the broker probe, registers the lag metric and serves
// the ops endpoints. The returned func stops it all.
func (d *Daemon) startOps() (func(), error) {
	token := d.opsToken
	brokers := d.kafka.Brokers()
	c := d.kafka.Config()
	c.ClientID = d.cfg.Kafka.ClientID + "-ops"
	c.Metadata.Retry.Max = 0
	// Looking must not create topics.
	c.Metadata.AllowAutoTopicCreation = false
	c.Net.DialTimeout = 3 * time.Second
	client, err := sarama.NewClient(brokers, c)
	if err != nil {
		return nil, fmt.Errorf("connect ops client to kafka at %s: %w", strings.Join(brokers, ","), err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("ops admin client: %w", err)
	}
	d.probe = client
	d.prom.MustRegister(newLagCollector(client, admin, d.cfg.Routes, d.logger))

	ln, err := net.Listen("tcp", d.cfg.Ops.Listen)
	if err != nil {
		client.Close()
		return nil, &config.KeyError{Key: "ops.listen", Msg: err.Error()}
	}
	addr := ln.Addr().String()
	d.opsAddr.Store(&addr)
	if ip := ln.Addr().(*net.TCPAddr).IP; token == "" && !ip.IsLoopback() {
		d.logger.Warn("ops server listens beyond loopback without a token: anyone who reaches it can read the metrics, readiness and the console (poisoned payloads, with email addresses masked); set ops.token_env or ops.token_file", "addr", addr)
	}
	var web http.Handler
	stopConsole := func() {}
	if d.cfg.Ops.Console.Enabled {
		src := &consoleSource{d: d, client: client, admin: admin, mask: token == "", reading: make(chan struct{}, 1)}
		c, err := console.New(console.Options{
			Source: src, Token: token, AllowActions: d.cfg.Ops.Console.AllowActions,
			Logger: d.logger.With("component", "console"), SampleEvery: d.consoleSample, Hosts: d.cfg.Ops.Console.Hosts,
		})
		if err != nil {
			ln.Close()
			client.Close()
			return nil, err
		}
		web = c
		stopConsole = func() {
			c.Close()
			src.close()
		}
	}
	srv := &http.Server{
		Handler:           ops.Handler(ops.Options{Token: token, Ready: d.ready, Gatherer: d.prom, Console: web}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.logger.Error("ops server stopped", "err", err)
		}
	}()
	d.logger.Info("ops server listening", "addr", addr, "token", token != "")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
		stopConsole()
		_ = admin.Close()
	}, nil
}

// ready checks that the router runs and is not stopping, that every route
// takes part in its consumer group, that the Kafka cluster can serve the
// routes (checkKafka), and that the shared ledger's database answers.
func (d *Daemon) ready(ctx context.Context) ops.Readiness {
	checks := map[string]string{}
	select {
	case <-d.running:
		checks["router"] = "ok"
	default:
		checks["router"] = "starting"
	}
	if d.stopping.Load() {
		checks["router"] = "shutting down"
	}
	for _, r := range d.cfg.Routes {
		state := "ok"
		if sub, ok := d.subs[r.Name]; !ok || !sub.InSession() {
			state = "not in a consumer group session"
		}
		if b, ok := d.breakers[r.Name]; ok {
			if paused, cause := b.Paused(); paused {
				state = "paused: a dependency is unavailable: " + cause.Error()
			}
		}
		checks["route "+r.Name] = state
	}
	// The database and the brokers are asked at once, each within the
	// request's time.
	ledgerState := make(chan string, 1)
	if l := d.shared.Load(); l != nil {
		go func() {
			if err := l.Ping(ctx); err != nil {
				ledgerState <- "database does not answer: " + err.Error()
				return
			}
			ledgerState <- "ok"
		}()
	} else {
		close(ledgerState)
	}
	k := d.checkKafka(ctx)
	checks["kafka"] = "ok"
	if k.problem != "" {
		checks["kafka"] = k.problem
	}
	var degraded map[string]string
	if k.degraded != "" {
		degraded = map[string]string{"kafka": k.degraded}
	}
	if state, ok := <-ledgerState; ok {
		checks["ledger"] = state
	}
	rd := ops.Readiness{Ready: true, Checks: checks, Degraded: degraded}
	for _, v := range checks {
		if v != "ok" {
			rd.Ready = false
		}
	}
	return rd
}
