package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
)

// progressMode is how a long command shows on standard error how far it
// is: idem sim, idem bench, idem keys ls, idem wf ls and idem migrate share
// it.
type progressMode int

const (
	// progressOff writes nothing (--quiet).
	progressOff progressMode = iota
	// progressTerminal redraws one line in place (carriage return, erase
	// to the end of the line) and erases it when the command ends.
	progressTerminal
	// progressLines writes plain lines, at most one per progressEvery
	// (and one per event a command reports, such as a migration), for
	// logs and CI.
	progressLines
)

// progressEvery is the least time between two plain progress lines.
const progressEvery = 10 * time.Second

// progressPeriod is how often the terminal line is redrawn.
const progressPeriod = 250 * time.Millisecond

// progressModeFor is the mode for a command writing progress to stderr:
// off with --quiet, a redrawn line when stderr is a terminal, plain lines
// otherwise.
func progressModeFor(stderr io.Writer, quiet bool) progressMode {
	switch {
	case quiet:
		return progressOff
	case isTerminal(stderr):
		return progressTerminal
	}
	return progressLines
}

// dataProgressModeFor is progressModeFor for a command that streams its
// data to stdout as it goes (keys ls, wf ls): when stdout is a terminal
// too, the data shows the progress and a line redrawn between its lines
// would garble it, so there is none.
func dataProgressModeFor(stdout, stderr io.Writer, quiet bool) progressMode {
	m := progressModeFor(stderr, quiet)
	if m == progressTerminal && isTerminal(stdout) {
		return progressOff
	}
	return m
}

// isTerminal reports whether w is a terminal (a character device), where
// a progress line redrawn in place is welcome; pipes and files get plain
// lines.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress writes a long command's progress to standard error, never to
// standard output, where the command's data goes. status is the text at
// the moment it is called; the command keeps the counts it reads (atomics
// when goroutines advance them).
type progress struct {
	w      io.Writer
	mode   progressMode
	now    func() time.Time
	prefix string // of plain lines, like "idem sim: "
	status func() string
	every  time.Duration

	mu    sync.Mutex
	last  time.Time // of the last plain line, or the start
	drawn bool      // a terminal line is on the screen
	quit  chan struct{}
	ended chan struct{}
}

// newProgress returns the progress of a command in mode; plain lines
// start with prefix. The clock is time.Now (tests set now).
func newProgress(w io.Writer, mode progressMode, prefix string, status func() string) *progress {
	p := &progress{w: w, mode: mode, now: time.Now, prefix: prefix, status: status, every: progressEvery}
	p.last = p.now()
	return p
}

// start begins the terminal line: drawn at once, then redrawn every
// period until stop. In the other modes it only marks the start, from
// which the first plain line is due after p.every.
func (p *progress) start(period time.Duration) {
	p.mu.Lock()
	p.last = p.now()
	p.mu.Unlock()
	if p.mode != progressTerminal || p.quit != nil {
		return
	}
	p.draw()
	p.quit, p.ended = make(chan struct{}), make(chan struct{})
	go func(quit, ended chan struct{}) {
		defer close(ended)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
				p.draw()
			}
		}
	}(p.quit, p.ended)
}

// draw redraws the terminal line with the current status.
func (p *progress) draw() {
	if p.mode != progressTerminal {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "\r\x1b[K%s", p.status())
	p.drawn = true
}

// advanced says the command got further: as plain lines, the status is
// written when p.every has passed since the last line (or the start).
// Goroutines may call it at once.
func (p *progress) advanced() {
	if p.mode != progressLines {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := p.now(); now.Sub(p.last) >= p.every {
		p.last = now
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.status())
	}
}

// event says something worth its own line happened (a migration begins,
// a turn of bench ends): as plain lines, the status is written at once;
// on a terminal the line is redrawn.
func (p *progress) event() {
	switch p.mode {
	case progressTerminal:
		p.draw()
	case progressLines:
		p.mu.Lock()
		defer p.mu.Unlock()
		p.last = p.now()
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.status())
	}
}

// stop ends the redrawing and erases the terminal line, so what the
// command prints next starts clean. It may be called more than once.
func (p *progress) stop() {
	if p.quit != nil {
		close(p.quit)
		<-p.ended
		p.quit, p.ended = nil, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

// pageProgress is the progress of a listing fetched page by page (idem
// keys ls, idem wf ls): "fetched P pages, N WHAT".
type pageProgress struct {
	*progress
	what         string
	pages, items atomic.Int64
}

// newPageProgress returns the progress of a listing in mode (of
// dataProgressModeFor: the listing writes its data to stdout as it
// goes); what names an item ("record"). start begins it.
func newPageProgress(w io.Writer, mode progressMode, prefix, what string) *pageProgress {
	p := &pageProgress{what: what}
	p.progress = newProgress(w, mode, prefix, p.status)
	return p
}

func (p *pageProgress) status() string {
	pages, items := p.pages.Load(), p.items.Load()
	return fmt.Sprintf("fetched %d %s, %d %s", pages, plural(int(pages), "page"), items, plural(int(items), p.what))
}

// page counts a page of n items.
func (p *pageProgress) page(n int) {
	p.pages.Add(1)
	p.items.Add(int64(n))
	p.advanced()
}

// listPages calls list for pages of at most idem.MaxListSize items from
// cursor on, until the listing ends or limit items came (0: no limit),
// counting each page. list writes at most size items after cursor and
// returns how many it wrote and the cursor of the next page, "" at the
// end. listPages returns the cursor where it stopped, "" at the end.
func (p *pageProgress) listPages(limit int, cursor string, list func(size int, cursor string) (int, string, error)) (string, error) {
	listed := 0
	for {
		size := idem.MaxListSize
		if limit > 0 {
			size = min(size, limit-listed)
		}
		n, next, err := list(size, cursor)
		if err != nil {
			return "", err
		}
		listed += n
		p.page(n)
		cursor = next
		if cursor == "" || (limit > 0 && listed >= limit) {
			return cursor, nil
		}
	}
}
