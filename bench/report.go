package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

func printTable(w io.Writer, r Results) {
	fmt.Fprintf(w, "\neventrouter benchmark, %s\nbroker: %s\nmachine: %s\n%d messages of %d bytes, %d partitions, median of %d run(s)\n\n",
		r.Date, r.Broker, r.Machine, r.Messages, r.Size, r.Partitions, r.Repeats)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	section := func(title string, rows []Row) {
		fmt.Fprintf(tw, "%s\tmsgs/s\tvs sarama\tvs kafka tool\t\n", title)
		for _, row := range rows {
			if len(row.Runs) == 0 {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t%s\n", row.Name, row.Note)
				continue
			}
			tool := "-"
			if row.VsKafkaTool > 0 {
				tool = fmt.Sprintf("%.2fx", row.VsKafkaTool)
			}
			fmt.Fprintf(tw, "%s\t%.0f\t%.2fx\t%s\t%s\n", row.Name, row.MsgsPerSec, row.VsSarama, tool, row.Note)
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

// writeChart draws each row's throughput relative to bare sarama.
func writeChart(path string, r Results) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("eventrouter vs bare sarama (= 1.0), %d x %d B, %s", r.Messages, r.Size, shortBroker(r.Broker))
	p.Y.Label.Text = "throughput relative to bare sarama"
	var names []string
	var values plotter.Values
	for _, rows := range [][]Row{r.Consume, r.Publish} {
		for _, row := range rows {
			kind := "consume"
			if &rows[0] == &r.Publish[0] {
				kind = "publish"
			}
			names = append(names, kind+": "+row.Name)
			values = append(values, row.VsSarama)
		}
	}
	bars, err := plotter.NewBarChart(values, vg.Points(22))
	if err != nil {
		return err
	}
	bars.Color = plotutil.Color(0)
	bars.Horizontal = true
	p.Add(bars)
	p.NominalY(names...)
	p.X.Label.Text = "ratio to bare sarama (consume: consumer group; publish: async producer)"
	p.Y.Label.Text = ""
	return p.Save(11*vg.Inch, 5*vg.Inch, path)
}

func shortBroker(b string) string {
	if len(b) > 20 {
		return b[:20]
	}
	return b
}
