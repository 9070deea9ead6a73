package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/kafka/client"
)

// publishCommand plays the seed's User Service: it publishes plain records
// (no Watermill headers), as any Kafka producer would.
func publishCommand(ctx context.Context, args []string, env Env) int {
	fset := flag.NewFlagSet("eventrouter publish", flag.ContinueOnError)
	fset.SetOutput(env.Stderr)
	path := fset.String("config", config.DefaultPath, "configuration `file` to take the brokers, TLS and SASL settings from, if it exists")
	brokers := fset.String("brokers", "", "comma-separated `host:port` list; overrides "+config.BrokersEnv+" and the config file")
	topic := fset.String("topic", "user-registered", "`topic` to publish to")
	key := fset.String("key", "", "Kafka `key` of every event; default: the value of --key-field")
	keyField := fset.String("key-field", "user_id", "JSON `field` whose value is the key when --key is not set; empty for no key")
	fset.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: eventrouter publish [flags] [EVENT]\n\nPublishes EVENT, or each line of stdin, and prints topic, partition and offset for each.\n\n"+
			"Environment: "+config.BrokersEnv+" (the brokers, unless --brokers), and the variables the file names, such as kafka.sasl.password_env.\nExit codes: 0 all published, 1 some failed, 2 bad arguments.\n\n")
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		return flagExit(err)
	}
	if fset.NArg() > 1 {
		fmt.Fprintln(env.Stderr, "eventrouter publish: give one EVENT argument, or none to read stdin (quote the JSON)")
		return ExitUsage
	}
	kcfg, addrs, err := publishBrokers(*brokers, *path, env.Getenv)
	if err != nil {
		fmt.Fprintf(env.Stderr, "eventrouter publish: %s\n", oneLine(err))
		return ExitUsage
	}
	access, err := client.New(kcfg, addrs, env.Getenv)
	if err != nil {
		fmt.Fprintf(env.Stderr, "eventrouter publish: %s\n", oneLine(err))
		return ExitUsage
	}
	if err := access.Refusal(ctx); err != nil {
		fmt.Fprintf(env.Stderr, "eventrouter publish: %s\n", err)
		return ExitError
	}
	c := access.Publisher()
	c.ClientID = "eventrouter-publish"
	producer, err := sarama.NewAsyncProducer(addrs, c)
	if err != nil {
		fmt.Fprintf(env.Stderr, "eventrouter publish: connect to kafka at %s: %v\n", strings.Join(addrs, ","), err)
		return ExitError
	}

	var input io.Reader = env.Stdin
	if fset.NArg() == 1 {
		input = strings.NewReader(fset.Arg(0))
	}
	p := publisher{producer: producer, topic: *topic, key: *key, keyField: *keyField, out: env.Stdout, errOut: env.Stderr}
	sent, failed := p.run(ctx, input)
	if failed > 0 || sent == 0 {
		if sent == 0 && failed == 0 {
			fmt.Fprintln(env.Stderr, "eventrouter publish: no event to publish")
		}
		return ExitError
	}
	return ExitOK
}

// publishBrokers picks the brokers: the flag, then the environment, then
// the config file if there is one, then the embedded broker's default. The
// other Kafka settings, TLS and SASL among them, come from the config file
// if there is one.
func publishBrokers(flagValue, path string, getenv func(string) string) (config.Kafka, []string, error) {
	cfg, err := config.Load(path, getenv)
	if errors.Is(err, fs.ErrNotExist) {
		cfg, err = config.Defaults(), nil
		cfg.Kafka.Brokers = []string{cfg.Kafka.Embedded.Listen}
		if list := getenv(config.BrokersEnv); strings.TrimSpace(list) != "" {
			cfg.Kafka.Brokers = strings.Split(strings.ReplaceAll(list, " ", ""), ",")
		}
	}
	if err != nil {
		return config.Kafka{}, nil, err
	}
	brokers := cfg.Brokers()
	if list := flagValue; strings.TrimSpace(list) != "" {
		brokers = strings.Split(strings.ReplaceAll(list, " ", ""), ",")
	}
	return cfg.Kafka, brokers, nil
}

type publisher struct {
	producer sarama.AsyncProducer
	topic    string
	key      string
	keyField string
	out      io.Writer
	errOut   io.Writer
}

// run publishes each non-empty line and reports each result as it comes.
// It closes the producer, which flushes what is in flight.
func (p publisher) run(ctx context.Context, input io.Reader) (sent, failed int) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		successes, errs := p.producer.Successes(), p.producer.Errors()
		for successes != nil || errs != nil {
			select {
			case m, ok := <-successes:
				if !ok {
					successes = nil
					continue
				}
				sent++
				fmt.Fprintf(p.out, "topic=%s partition=%d offset=%d key=%s\n", m.Topic, m.Partition, m.Offset, keyString(m.Key))
			case e, ok := <-errs:
				if !ok {
					errs = nil
					continue
				}
				failed++
				fmt.Fprintf(p.errOut, "eventrouter publish: line %v: %v\n", e.Msg.Metadata, e.Err)
			}
		}
	}()

	scanner := bufio.NewScanner(input)
	scanner.Buffer(make([]byte, 64*1024), 16*1024*1024)
	line := 0
	for scanner.Scan() && ctx.Err() == nil {
		line++
		value := strings.TrimSpace(scanner.Text())
		if value == "" {
			continue
		}
		msg := &sarama.ProducerMessage{Topic: p.topic, Value: sarama.StringEncoder(value), Metadata: line}
		if k := p.keyFor(value); k != "" {
			msg.Key = sarama.StringEncoder(k)
		}
		select {
		case p.producer.Input() <- msg:
		case <-ctx.Done():
		}
	}
	readErr := scanner.Err()
	p.producer.AsyncClose()
	<-done
	if readErr != nil {
		fmt.Fprintf(p.errOut, "eventrouter publish: read stdin: %v\n", readErr)
		failed++
	}
	return sent, failed
}

// keyFor returns the key of one event: --key, or the --key-field value of
// a JSON object. An event that is not JSON is still published, unkeyed.
func (p publisher) keyFor(value string) string {
	if p.key != "" || p.keyField == "" {
		return p.key
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal([]byte(value), &fields) != nil {
		return ""
	}
	raw, ok := fields[p.keyField]
	if !ok {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

func keyString(k sarama.Encoder) string {
	if k == nil {
		return ""
	}
	b, _ := k.Encode()
	return string(b)
}
