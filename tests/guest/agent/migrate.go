package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// heartbeat prints "gvmm-hb SEQ MONO_MS REAL_MS" every period until it
// is killed: SEQ counts from 1, MONO_MS and REAL_MS are the guest's
// CLOCK_MONOTONIC (since the command started) and CLOCK_REALTIME in
// milliseconds. Whoever reads the console timestamps the lines as they
// arrive: the longest gap between two of them across a live migration is
// the downtime the guest saw, measured the same way whatever the VMM;
// MONO_MS tells how far the guest's own clock moved meanwhile.
//
//	agent heartbeat PERIOD_MS
func heartbeat(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: agent heartbeat PERIOD_MS")
	}
	ms, err := strconv.Atoi(args[0])
	if err != nil || ms < 1 || ms > 60000 {
		return fmt.Errorf("heartbeat period %q: want 1 to 60000 ms", args[0])
	}
	w := bufio.NewWriter(os.Stdout)
	start := time.Now()
	t := time.NewTicker(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	for seq := 1; ; seq++ {
		now := time.Now()
		fmt.Fprintf(w, "gvmm-hb %d %d %d\n", seq, now.Sub(start).Milliseconds(), now.UnixMilli())
		if err := w.Flush(); err != nil {
			return fmt.Errorf("heartbeat: %w", err)
		}
		<-t.C
	}
}

// dirty rewrites MIB MiB of its own memory, one 8-byte word per 4 KiB
// page, at most PAGES_PER_SEC pages a second (0: as fast as it can),
// forever, so that a migration has pages dirtied under it at a known rate.
// Each word holds the pass number; it prints "gvmm-dirty: running" once
// the buffer is touched, then a line per 10 passes with the rate reached.
//
//	agent dirty MIB PAGES_PER_SEC
func dirty(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: agent dirty MIB PAGES_PER_SEC")
	}
	mib, err := strconv.Atoi(args[0])
	if err != nil || mib < 1 || mib > 1<<14 {
		return fmt.Errorf("dirty size %q: want 1 to 16384 MiB", args[0])
	}
	rate, err := strconv.Atoi(args[1])
	if err != nil || rate < 0 {
		return fmt.Errorf("dirty rate %q: want pages a second, 0 for no limit", args[1])
	}
	const page = 4096
	buf := make([]byte, mib<<20)
	pages := len(buf) / page
	for i := 0; i < len(buf); i += page {
		buf[i] = 1
	}
	fmt.Println("gvmm-dirty: running")
	// The rate is held in slices of 10 ms: write the pages due, then sleep.
	const slice = 10 * time.Millisecond
	perSlice := rate / 100
	if rate > 0 && perSlice == 0 {
		perSlice = 1
	}
	start := time.Now()
	written := 0
	for pass := uint64(1); ; pass++ {
		for p := 0; p < pages; p++ {
			buf[p*page] = byte(pass)
			buf[p*page+1] = byte(pass >> 8)
			written++
			if perSlice > 0 && written%perSlice == 0 {
				time.Sleep(slice)
			}
		}
		if pass%10 == 0 {
			el := time.Since(start)
			fmt.Printf("gvmm-dirty: pass %d, %.0f pages/s\n", pass, float64(written)/el.Seconds())
		}
	}
}

// tcpEcho connects to HOST:PORT and answers every line it reads with
// "echo " and the line, until the peer closes: a TCP connection a test
// can hold open across a live migration and use on both sides of it.
//
//	agent tcpecho HOST:PORT
func tcpEcho(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: agent tcpecho HOST:PORT")
	}
	c, err := net.DialTimeout("tcp", args[0], 30*time.Second)
	if err != nil {
		return fmt.Errorf("tcpecho: %w", err)
	}
	defer c.Close()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if _, err := fmt.Fprintf(c, "echo %s\n", sc.Text()); err != nil {
			return fmt.Errorf("tcpecho: %w", err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("tcpecho: %w", err)
	}
	return nil
}
