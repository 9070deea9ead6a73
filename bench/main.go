// Command bench measures eventrouter against the bare sarama client and
// Kafka's own perf tools on the same broker and the same topic, and reports
// ratios, which survive a noisy machine where absolute numbers do not.
//
//	go run ./bench              # real Kafka, started by scripts/kafka.sh if needed
//	go run ./bench --embedded   # the embedded broker, no Java needed
//	go run ./bench --short      # small counts, to prove the harness works
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"syscall"
	"time"
)

func main() { os.Exit(run()) }

// options are the benchmark's flags.
type options struct {
	embedded   bool
	short      bool
	messages   int
	size       int
	partitions int
	repeats    int
	rate       int
	latencyFor time.Duration
	out        string
	cpuProfile string
	only       string
}

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var o options
	flag.BoolVar(&o.embedded, "embedded", false, "run against the embedded kfake broker instead of Apache Kafka")
	flag.BoolVar(&o.short, "short", false, "small counts and one run each: proves the harness works, measures nothing")
	flag.IntVar(&o.messages, "messages", 100_000, "messages per consume and publish run")
	flag.IntVar(&o.size, "size", 200, "message size in bytes")
	flag.IntVar(&o.partitions, "partitions", 6, "partitions of every benchmark topic")
	flag.IntVar(&o.repeats, "repeats", 3, "runs per measurement; the median is reported")
	flag.IntVar(&o.rate, "rate", 5000, "offered rate of the latency run, messages per second; keep it below the router's throughput, or the run measures a growing queue")
	flag.DurationVar(&o.latencyFor, "latency-duration", 10*time.Second, "length of the latency run")
	flag.StringVar(&o.out, "out", "bench", "directory for results.json and results.png")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of an in-process end-to-end router run to this file")
	flag.StringVar(&o.only, "only", "", "measure only the consume and publish sides whose name contains this, such as \"PostgreSQL\" (ratios to skipped sides are 0)")
	report := flag.String("report", "", "print the table and redraw the chart of an earlier results.json, without measuring")
	flag.Parse()
	if *report != "" {
		res, err := readJSON(*report)
		if err == nil {
			printTable(os.Stdout, res)
			err = writeChart(filepath.Join(filepath.Dir(*report), "results.png"), res)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 1
		}
		return 0
	}
	if o.short {
		o.messages, o.repeats, o.latencyFor = 2000, 1, 2*time.Second
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := newBench(ctx, o, logger)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	defer b.close()
	res, err := b.runAll(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	printTable(os.Stdout, res)
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	if err := writeJSON(filepath.Join(o.out, "results.json"), res); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	if err := writeChart(filepath.Join(o.out, "results.png"), res); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	fmt.Printf("\nwrote %s and %s\n", filepath.Join(o.out, "results.json"), filepath.Join(o.out, "results.png"))
	return 0
}

// Row is one measured side of the benchmark.
type Row struct {
	// Name says what ran.
	Name string `json:"name"`
	// MsgsPerSec is the median throughput.
	MsgsPerSec float64 `json:"msgs_per_sec"`
	// Runs are every run's throughput.
	Runs []float64 `json:"runs"`
	// VsSarama is MsgsPerSec over the bare sarama row's.
	VsSarama float64 `json:"vs_sarama"`
	// VsKafkaTool is MsgsPerSec over Kafka's perf tool's, 0 if it did not run.
	VsKafkaTool float64 `json:"vs_kafka_tool"`
	// Note explains a row that did not run or ran differently.
	Note string `json:"note,omitempty"`
	// Baseline names the row this one is best compared with, and
	// VsBaseline is MsgsPerSec over that row's.
	Baseline   string  `json:"baseline,omitempty"`
	VsBaseline float64 `json:"vs_baseline,omitempty"`
}

// IOBound is the notification route with slow I/O, in key and partition
// mode.
type IOBound struct {
	// Users is how many new users the 20 ms notifier rows handle.
	Users int `json:"users"`
	// LatencyMs is what the benchmark notifier takes per send.
	LatencyMs float64 `json:"latency_ms"`
	// MaxInFlight is the route's bound, and BoundPerSec what it allows:
	// MaxInFlight / latency.
	MaxInFlight int     `json:"max_in_flight"`
	BoundPerSec float64 `json:"bound_per_sec"`
	Rows        []Row   `json:"rows"`
	// Emails is how many welcome emails the SMTP rows send into Mailpit.
	Emails int   `json:"emails"`
	SMTP   []Row `json:"smtp"`
}

// Latency is produce-to-handled latency at a fixed offered rate.
type Latency struct {
	RatePerSec int     `json:"rate_per_sec"`
	Messages   int     `json:"messages"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	P999Ms     float64 `json:"p999_ms"`
}

// Results is everything one run of the benchmark measured.
type Results struct {
	Date       string  `json:"date"`
	Machine    string  `json:"machine"`
	Broker     string  `json:"broker"`
	Messages   int     `json:"messages"`
	Size       int     `json:"size"`
	Partitions int     `json:"partitions"`
	Repeats    int     `json:"repeats"`
	Consume    []Row   `json:"consume"`
	Publish    []Row   `json:"publish"`
	Latency    Latency `json:"latency"`
	IOBound    IOBound `json:"io_bound"`
	// PeakRSSMiB is the daemon's peak resident memory during its consume
	// run (VmHWM).
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	// FileRSSMiB is how much of its resident memory was file pages (the
	// ledger's memory-mapped file) at the end of that run.
	FileRSSMiB float64 `json:"file_rss_mib"`
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range splitLines(string(b)) {
			if len(line) > 10 && line[:10] == "model name" {
				model = line[13:]
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d cores, %s/%s, %s", model, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}
