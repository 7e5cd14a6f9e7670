package main

import (
	"context"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The console reader passes on a prompt without its newline (followed by
// ash's cursor query too) and files heartbeats away with their arrival.
func TestConsoleReader(t *testing.T) {
	m := &mig{c: config{}, w: io.Discard}
	pr, pw := io.Pipe()
	v := &vm{label: "src", m: m, lines: make(chan string, 16)}
	go v.read(pr)
	go func() {
		io.WriteString(pw, "gvmm-guest: userspace up\r\nguest# \x1b[6n")
		time.Sleep(10 * time.Millisecond)
		io.WriteString(pw, "gvmm-hb 1 0 1000\r\ngvmm-hb 2 20 1020\r\n")
		time.Sleep(50 * time.Millisecond)
		io.WriteString(pw, "gvmm-hb 3 40 1040\r\n")
		pw.Close()
	}()
	if err := v.waitFor(context.Background(), regexp.MustCompile(`guest# `), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := m.hb.waitCount(context.Background(), "src", 3, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	gap, clk, where, err := m.hb.gap()
	if err != nil {
		t.Fatal(err)
	}
	if gap < 40 || gap > 1000 || clk != 20 || !strings.Contains(where, "from src beat 2") {
		t.Errorf("gap %.1f ms, clock %v ms (%s); want about 50 and 20, after beat 2", gap, clk, where)
	}
}

// A hole in the heartbeat's sequence (a guest that restarted) is an error.
func TestGapRefusesAHole(t *testing.T) {
	var b beats
	now := time.Now()
	b.add("src", "gvmm-hb 1 0 0", now)
	b.add("dst", "gvmm-hb 4 60 60", now.Add(time.Second))
	if _, _, _, err := b.gap(); err == nil {
		t.Fatal("a missing heartbeat went unnoticed")
	}
}

// One line cut in two where the consoles switch is forgiven.
func TestGapForgivesOneCutLine(t *testing.T) {
	var b beats
	now := time.Now()
	b.add("src", "gvmm-hb 1 0 0", now)
	b.add("dst", "gvmm-hb 3 40 40", now.Add(100*time.Millisecond))
	if gap, _, _, err := b.gap(); err != nil || gap != 100 {
		t.Fatalf("gap %v, %v; want 100 ms", gap, err)
	}
}
