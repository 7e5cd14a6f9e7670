// Command agent runs inside gvmm's test guest (tests/guest) and reports on
// the machine it sees, so that tests can check what gvmm gave the guest.
//
// It is built static (CGO_ENABLED=0) and installed as /bin/agent.
//
//	agent info                      prints "gvmm-agent: cpus=N mem_kib=M"
//	agent disk read|write DEV MIB   times O_DIRECT sequential I/O on DEV (iobench.go)
//	agent tcpsend HOST:PORT MIB     sends MIB MiB over TCP (iobench.go)
//	agent heartbeat PERIOD_MS       prints a timestamped line every period (migrate.go)
//	agent dirty MIB PAGES_PER_SEC   dirties MIB MiB of memory at a rate (migrate.go)
//	agent tcpecho HOST:PORT         echoes lines on a TCP connection (migrate.go)
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: agent info")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "info":
		line, err := info("/sys/devices/system/cpu/online", "/proc/meminfo")
		if err != nil {
			fmt.Fprintf(os.Stderr, "gvmm-agent: %v\n", err)
			os.Exit(1)
		}
		fmt.Println(line)
	case "disk":
		os.Exit(runIOCommand(diskBench, os.Args[2:]))
	case "tcpsend":
		os.Exit(runIOCommand(tcpSend, os.Args[2:]))
	case "heartbeat", "dirty", "tcpecho":
		f := map[string]func([]string) error{"heartbeat": heartbeat, "dirty": dirty, "tcpecho": tcpEcho}[os.Args[1]]
		if err := f(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "gvmm-agent: %v\n", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "agent: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

// info reads the online CPUs and the memory size from the given files.
func info(cpuOnline, meminfo string) (string, error) {
	b, err := os.ReadFile(cpuOnline)
	if err != nil {
		return "", err
	}
	cpus, err := countCPUList(strings.TrimSpace(string(b)))
	if err != nil {
		return "", fmt.Errorf("%s: %w", cpuOnline, err)
	}
	f, err := os.Open(meminfo)
	if err != nil {
		return "", err
	}
	defer f.Close()
	mem, err := memTotalKiB(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", meminfo, err)
	}
	return fmt.Sprintf("gvmm-agent: cpus=%d mem_kib=%d", cpus, mem), nil
}

// countCPUList counts the CPUs in a kernel CPU list such as "0-3,5".
func countCPUList(s string) (int, error) {
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("bad CPU list %q", s)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, fmt.Errorf("bad CPU list %q", s)
			}
		}
		n += b - a + 1
	}
	return n, nil
}

// memTotalKiB returns the MemTotal line of /proc/meminfo, in KiB.
func memTotalKiB(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "MemTotal:" && f[2] == "kB" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no MemTotal line")
}
