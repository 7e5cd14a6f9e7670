package main

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress writes the harness's own lines ("nested [ 12.3s] ...") and the
// output it relays from L1 or test binaries to one stream, a line at a
// time, so the two never interleave within a line.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func newProgress(w io.Writer) *progress { return &progress{w: w, start: time.Now()} }

// elapsed is the time since the harness started.
func (p *progress) elapsed() time.Duration { return time.Since(p.start) }

// say prints a harness line with the elapsed time.
func (p *progress) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "nested [%6.1fs] %s\n", p.elapsed().Seconds(), fmt.Sprintf(format, args...))
}

// relay prints one line of relayed output as it is.
func (p *progress) relay(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.w, line)
}
