package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

func printTable(w io.Writer, r Results) {
	fmt.Fprintf(w, "\neventrouter benchmark, %s\nbroker: %s\nmachine: %s\n%d messages of %d bytes, %d partitions, median of %d run(s)\n\n",
		r.Date, r.Broker, r.Machine, r.Messages, r.Size, r.Partitions, r.Repeats)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	section := func(title string, rows []Row) {
		fmt.Fprintf(tw, "%s\tmsgs/s\tvs sarama\tvs kafka tool\t\n", title)
		for _, row := range rows {
			if len(row.Runs) == 0 {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t  (%s)\n", row.Name, row.Note)
				continue
			}
			tool := "-"
			if row.VsKafkaTool > 0 {
				tool = ratio(row.VsKafkaTool)
			}
			note := ""
			if row.Note != "" {
				note = "  (" + row.Note + ")"
			}
			fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\n", row.Name, row.MsgsPerSec, ratio(row.VsSarama), tool, note)
		}
		fmt.Fprintln(tw, "\t\t\t\t")
	}
	section("consume", r.Consume)
	section("publish", r.Publish)
	_ = tw.Flush()
	l := r.Latency
	fmt.Fprintf(w, "latency, produce to handled, %d msgs/s offered, %d messages: p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
		l.RatePerSec, l.Messages, l.P50Ms, l.P99Ms, l.P999Ms)
	fmt.Fprintf(w, "daemon peak RSS during its consume run: %.1f MiB\n", r.PeakRSSMiB)
}

func writeJSON(path string, r Results) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// writeChart draws each row's throughput relative to bare sarama, with
// the absolute rate written beside each bar.
func writeChart(path string, r Results) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("eventrouter vs bare sarama (= 1.0): %d messages of %d B, %d partitions, %s",
		r.Messages, r.Size, r.Partitions, shortBroker(r.Broker))
	var names []string
	var values plotter.Values
	var labels plotter.XYLabels
	add := func(kind string, rows []Row) {
		for _, row := range rows {
			names = append(names, kind+": "+row.Name)
			values = append(values, row.VsSarama)
			text := "did not run"
			if len(row.Runs) > 0 {
				text = fmt.Sprintf("  %.0f msgs/s (%s)", row.MsgsPerSec, ratio(row.VsSarama))
			}
			labels.XYs = append(labels.XYs, plotter.XY{X: row.VsSarama, Y: float64(len(values) - 1)})
			labels.Labels = append(labels.Labels, text)
		}
	}
	add("consume", r.Consume)
	add("publish", r.Publish)
	bars, err := plotter.NewBarChart(values, vg.Points(18))
	if err != nil {
		return err
	}
	bars.Color = plotutil.Color(0)
	bars.Horizontal = true
	text, err := plotter.NewLabels(labels)
	if err != nil {
		return err
	}
	p.Add(bars, text)
	p.NominalY(names...)
	p.X.Min, p.X.Max = 0, 1.45
	p.X.Label.Text = "throughput relative to bare sarama (consume: consumer group; publish: async producer)"
	return p.Save(12*vg.Inch, 5*vg.Inch, path)
}

// ratio prints small ratios with enough digits to tell them apart.
func ratio(x float64) string {
	if x < 0.1 {
		return fmt.Sprintf("%.3fx", x)
	}
	return fmt.Sprintf("%.2fx", x)
}

func shortBroker(b string) string {
	if i := strings.Index(b, " ("); i > 0 {
		return b[:i]
	}
	return b
}

// readJSON loads results written by an earlier run.
func readJSON(path string) (Results, error) {
	var r Results
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(b, &r)
}
