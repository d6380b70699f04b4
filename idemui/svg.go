package idemui

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/idemkit/idem/workflow"
)

// series is one line of a chart.
type series struct {
	Name   string
	Values []float64
}

// lineChart draws series over the sample times as an inline SVG: axes,
// the largest value and the first and last time as labels, one polyline
// (class "data sN") per series with points, and a legend. Every text is
// escaped; colours come from the stylesheet by class.
func lineChart(title, unit string, times []time.Time, ss []series) string {
	const w, h, left, right, top, bottom = 640.0, 220.0, 56.0, 12.0, 28.0, 40.0
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %g %g" width="%g" height="%g" role="img" aria-label="%s">`, w, h, w, h, esc(title))
	fmt.Fprintf(&b, `<text class="title" x="%g" y="18">%s</text>`, left, esc(title))
	maxV := 0.0
	for _, s := range ss {
		for _, v := range s.Values {
			maxV = math.Max(maxV, v)
		}
	}
	if maxV == 0 {
		maxV = 1
	}
	pw, ph := w-left-right, h-top-bottom
	fmt.Fprintf(&b, `<line class="axis" x1="%g" y1="%g" x2="%g" y2="%g"/>`, left, top+ph, left+pw, top+ph)
	fmt.Fprintf(&b, `<line class="axis" x1="%g" y1="%g" x2="%g" y2="%g"/>`, left, top, left, top+ph)
	fmt.Fprintf(&b, `<line class="grid" x1="%g" y1="%g" x2="%g" y2="%g"/>`, left, top, left+pw, top)
	fmt.Fprintf(&b, `<text class="tick" x="%g" y="%g" text-anchor="end">%s</text>`, left-4, top+4, esc(formatValue(maxV, unit)))
	fmt.Fprintf(&b, `<text class="tick" x="%g" y="%g" text-anchor="end">0</text>`, left-4, top+ph+4)
	if len(times) == 0 {
		fmt.Fprintf(&b, `<text class="empty" x="%g" y="%g" text-anchor="middle">no samples yet</text></svg>`, left+pw/2, top+ph/2)
		return b.String()
	}
	fmt.Fprintf(&b, `<text class="tick" x="%g" y="%g">%s</text>`, left, h-bottom+16, times[0].UTC().Format("15:04:05"))
	fmt.Fprintf(&b, `<text class="tick" x="%g" y="%g" text-anchor="end">%s UTC</text>`, left+pw, h-bottom+16, times[len(times)-1].UTC().Format("15:04:05"))
	x := func(i int) float64 {
		if len(times) == 1 {
			return left + pw/2
		}
		return left + pw*float64(i)/float64(len(times)-1)
	}
	for si, s := range ss {
		var pts []string
		for i, v := range s.Values {
			pts = append(pts, strconv.FormatFloat(x(i), 'f', 1, 64)+","+strconv.FormatFloat(top+ph-ph*v/maxV, 'f', 1, 64))
		}
		fmt.Fprintf(&b, `<polyline class="data s%d" data-series="%s" points="%s"/>`, si, esc(s.Name), strings.Join(pts, " "))
		lx := left + float64(si)*95
		fmt.Fprintf(&b, `<rect class="key s%d" x="%g" y="%g" width="10" height="10"/><text class="legend" x="%g" y="%g">%s</text>`,
			si, lx, h-14, lx+14, h-5, esc(s.Name))
	}
	b.WriteString(`</svg>`)
	return b.String()
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "%":
		return strconv.FormatFloat(v*100, 'f', 1, 64) + " %"
	case "s":
		d := time.Duration(v * float64(time.Second))
		switch {
		case d >= time.Second:
			return d.Round(10 * time.Millisecond).String()
		case d >= time.Millisecond:
			return d.Round(10 * time.Microsecond).String()
		}
		return d.Round(time.Microsecond).String()
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

func esc(s string) string { return html.EscapeString(s) }

// edgeKey names a transition for the path: from, event and to.
func edgeKey(from, event, to string) string { return from + "\x00" + event + "\x00" + to }

// path is what an instance's history says it went through.
type path struct {
	visited map[string]bool
	taken   map[string]bool
}

// pathOf reads the states an instance entered and the transitions it took
// from its history.
func pathOf(in *workflow.Instance) path {
	p := path{visited: map[string]bool{}, taken: map[string]bool{}}
	for _, e := range in.History {
		switch e.Kind {
		case workflow.EntryStarted:
			p.visited[e.State] = true
		case workflow.EntryTransition:
			p.visited[e.From], p.visited[e.To] = true, true
			p.taken[edgeKey(e.From, e.Event, e.To)] = true
		case workflow.EntryResumed:
			p.visited[e.To] = true
		}
	}
	p.visited[in.State] = true
	return p
}

// diagram draws def's state machine as an inline SVG: states in columns
// by their distance from the initial state, transitions as arrows with
// their event and action. With in, the states it visited carry the class
// "visited", the one it is in "current", and the transitions it took
// "taken". Names are only ever text, escaped.
func diagram(def *workflow.Definition, in *workflow.Instance) string {
	const nodeW, nodeH, colW, rowH, pad = 150.0, 40.0, 280.0, 84.0, 30.0
	// Layers: breadth first from the initial state.
	layer := map[string]int{}
	order := []string{}
	add := func(name string, l int) {
		if _, ok := layer[name]; !ok {
			layer[name] = l
			order = append(order, name)
		}
	}
	add(def.Initial, 0)
	for i := 0; i < len(order); i++ {
		for _, t := range def.Transitions {
			if t.From == order[i] {
				add(t.To, layer[order[i]]+1)
			}
		}
	}
	maxLayer := 0
	for _, l := range layer {
		maxLayer = max(maxLayer, l)
	}
	for _, s := range def.States { // unreachable states: a column of their own
		add(s.Name, maxLayer+1)
	}
	rows := map[int]int{}
	type pos struct{ x, y float64 }
	at := map[string]pos{}
	width, height := 0.0, 0.0
	for _, name := range order {
		l := layer[name]
		p := pos{pad + float64(l)*colW, pad + float64(rows[l])*rowH}
		rows[l]++
		at[name] = p
		width, height = max(width, p.x+nodeW+pad), max(height, p.y+nodeH+pad+20)
	}
	var p path
	if in != nil {
		p = pathOf(in)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="diagram" viewBox="0 0 %g %g" width="%g" height="%g" role="img" aria-label="state machine of %s v%d">`,
		width, height, width, height, esc(def.Name), def.Version)
	b.WriteString(`<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path class="head" d="M0,0L10,5L0,10z"/></marker>`)
	b.WriteString(`<marker id="arrow-taken" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path class="head taken" d="M0,0L10,5L0,10z"/></marker></defs>`)
	pairs := map[string]int{} // transitions between the same two states so far
	for _, t := range def.Transitions {
		a, okA := at[t.From]
		c, okC := at[t.To]
		if !okA || !okC {
			continue
		}
		class := "edge"
		marker := "arrow"
		if p.taken[edgeKey(t.From, t.Event, t.To)] {
			class, marker = "edge taken", "arrow-taken"
		}
		label := t.Event
		if label == "" {
			label = "(auto)"
		}
		if t.Action != nil && t.Action.Name != "" {
			label += " / " + t.Action.Name
		}
		var d string
		var lx, ly float64
		if t.From == t.To {
			x0, y0 := a.x+nodeW*0.3, a.y
			d = fmt.Sprintf("M%.1f,%.1f C%.1f,%.1f %.1f,%.1f %.1f,%.1f", x0, y0, x0-10, y0-40, x0+nodeW*0.4+10, y0-40, x0+nodeW*0.4, y0)
			lx, ly = a.x+nodeW/2, y0-32
		} else {
			k := pairs[t.From+"\x00"+t.To] + pairs[t.To+"\x00"+t.From]
			pairs[t.From+"\x00"+t.To]++
			x1, y1 := a.x+nodeW, a.y+nodeH/2
			x2, y2 := c.x, c.y+nodeH/2
			if c.x <= a.x { // backwards or within a column: from the bottom, around
				x1, y1 = a.x+nodeW/2, a.y+nodeH
				x2, y2 = c.x+nodeW/2, c.y+nodeH
			}
			mx, my := (x1+x2)/2, (y1+y2)/2
			bend := 24.0 * float64(k)
			if c.x <= a.x {
				bend += 50
			}
			dx, dy := x2-x1, y2-y1
			n := math.Hypot(dx, dy)
			if n == 0 {
				n = 1
			}
			cx, cy := mx-dy/n*bend, my+dx/n*bend
			if c.x <= a.x && cy < my {
				cx, cy = mx+dy/n*bend, my-dx/n*bend
			}
			d = fmt.Sprintf("M%.1f,%.1f Q%.1f,%.1f %.1f,%.1f", x1, y1, cx, cy, x2, y2)
			lx, ly = (mx+cx)/2, (my+cy)/2-6
		}
		fmt.Fprintf(&b, `<g class="%s" data-from="%s" data-to="%s" data-event="%s"><path d="%s" marker-end="url(#%s)"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text></g>`,
			class, esc(t.From), esc(t.To), esc(t.Event), d, marker, lx, ly, esc(label))
	}
	for _, name := range order {
		q := at[name]
		class := "state"
		st, _ := def.State(name)
		if st.Terminal != workflow.NotTerminal {
			class += " terminal " + string(st.Terminal)
		}
		if name == def.Initial {
			class += " initial"
		}
		if p.visited[name] {
			class += " visited"
		}
		if in != nil && in.State == name {
			class += " current"
		}
		fmt.Fprintf(&b, `<g class="%s" data-state="%s"><rect x="%.1f" y="%.1f" width="%g" height="%g" rx="8"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text></g>`,
			class, esc(name), q.x, q.y, nodeW, nodeH, q.x+nodeW/2, q.y+nodeH/2+5, esc(name))
	}
	b.WriteString(`</svg>`)
	return b.String()
}
