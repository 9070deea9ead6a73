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
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

func printTable(w io.Writer, r Results) {
	fmt.Fprintf(w, "\neventrouter benchmark, %s\nbroker: %s\nmachine: %s\n%d messages of %d bytes, %d partitions, median of %d run(s)\n\n",
		r.Date, r.Broker, r.Machine, r.Messages, r.Size, r.Partitions, r.Repeats)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	section := func(title string, rows []Row) {
		fmt.Fprintf(tw, "%s\tmsgs/s\tvs sarama\tvs kafka tool\tvs baseline\t\n", title)
		for _, row := range rows {
			if len(row.Runs) == 0 {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t  (%s)\n", row.Name, row.Note)
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
			fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%s\n", row.Name, row.MsgsPerSec, ratio(row.VsSarama), tool, label(row), note)
		}
		fmt.Fprintln(tw, "\t\t\t\t\t")
	}
	section("consume", r.Consume)
	section("publish", r.Publish)
	_ = tw.Flush()
	io := r.IOBound
	fmt.Fprintf(w, "I/O-bound: %d new users, a notifier that takes %.0f ms per send; max_in_flight %d allows %.0f msgs/s\n",
		io.Users, io.LatencyMs, io.MaxInFlight, io.BoundPerSec)
	for _, row := range io.Rows {
		fmt.Fprintf(w, "  %-40s %8.0f msgs/s  %s, %s of the bound\n", row.Name, row.MsgsPerSec, label(row), ratio(row.MsgsPerSec/io.BoundPerSec))
	}
	fmt.Fprintf(w, "real SMTP: %d welcome emails into Mailpit\n", io.Emails)
	for _, row := range io.SMTP {
		fmt.Fprintf(w, "  %-40s %8.0f emails/s  %s\n", row.Name, row.MsgsPerSec, label(row))
	}
	l := r.Latency
	fmt.Fprintf(w, "latency, produce to handled, %d msgs/s offered, %d messages: p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
		l.RatePerSec, l.Messages, l.P50Ms, l.P99Ms, l.P999Ms)
	fmt.Fprintf(w, "daemon peak RSS during its consume run: %.1f MiB (of which file pages, the ledger's mapped file, at the end: %.1f MiB)\n", r.PeakRSSMiB, r.FileRSSMiB)
}

func writeJSON(path string, r Results) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// writeChart draws two panels: each consume and publish row's throughput
// relative to bare sarama, and the I/O-bound rows in messages per second
// beside the bound max_in_flight allows; absolute rates are written on the
// bars.
func writeChart(path string, r Results) error {
	top := plot.New()
	top.Title.Text = fmt.Sprintf("eventrouter vs bare sarama (= 1.0): %d messages of %d B, %d partitions, %s",
		r.Messages, r.Size, r.Partitions, shortBroker(r.Broker))
	var rows []Row
	var names []string
	for _, row := range r.Consume {
		rows, names = append(rows, row), append(names, "consume: "+row.Name)
	}
	for _, row := range r.Publish {
		rows, names = append(rows, row), append(names, "publish: "+row.Name)
	}
	if err := bars(top, rows, names, func(row Row) float64 { return row.VsSarama },
		func(row Row) string { return fmt.Sprintf("  %.0f msgs/s (%s)", row.MsgsPerSec, ratio(row.VsSarama)) }); err != nil {
		return err
	}
	top.X.Min, top.X.Max = 0, 1.6
	top.X.Label.Text = "throughput relative to bare sarama (consume: consumer group; publish: async producer)"

	io := r.IOBound
	bottom := plot.New()
	bottom.Title.Text = fmt.Sprintf("I/O-bound: %d users, %.0f ms per send (and real SMTP into Mailpit), key vs partition ordering",
		io.Users, io.LatencyMs)
	rows, names = nil, nil
	bound := Row{Name: fmt.Sprintf("bound: max_in_flight %d / %.0f ms", io.MaxInFlight, io.LatencyMs), MsgsPerSec: io.BoundPerSec, Runs: []float64{io.BoundPerSec}}
	for _, row := range append(append([]Row{bound}, io.Rows...), io.SMTP...) {
		rows, names = append(rows, row), append(names, row.Name)
	}
	most := 1.0
	for _, row := range rows {
		most = max(most, row.MsgsPerSec)
	}
	if err := bars(bottom, rows, names, func(row Row) float64 { return row.MsgsPerSec },
		func(row Row) string {
			text := fmt.Sprintf("  %.0f msgs/s", row.MsgsPerSec)
			if row.Baseline != "" {
				text += " (" + label(row) + ")"
			}
			return text
		}); err != nil {
		return err
	}
	bottom.X.Min, bottom.X.Max = 0, most*1.6
	bottom.X.Label.Text = "messages per second"

	const w, h = 12 * vg.Inch, 9 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadY: vg.Points(12), PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(4)}
	canvases := plot.Align([][]*plot.Plot{{top}, {bottom}}, tiles, dc)
	top.Draw(canvases[0][0])
	bottom.Draw(canvases[1][0])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// bars adds a horizontal bar per row to p, of length value(row), labelled
// text(row), or "did not run".
func bars(p *plot.Plot, rows []Row, names []string, value func(Row) float64, text func(Row) string) error {
	var values plotter.Values
	var labels plotter.XYLabels
	for i, row := range rows {
		v := value(row)
		values = append(values, v)
		t := "did not run"
		if len(row.Runs) > 0 {
			t = text(row)
		}
		labels.XYs = append(labels.XYs, plotter.XY{X: v, Y: float64(i)})
		labels.Labels = append(labels.Labels, t)
	}
	b, err := plotter.NewBarChart(values, vg.Points(16))
	if err != nil {
		return err
	}
	b.Color = plotutil.Color(0)
	b.Horizontal = true
	l, err := plotter.NewLabels(labels)
	if err != nil {
		return err
	}
	p.Add(b, l)
	p.NominalY(names...)
	return nil
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
