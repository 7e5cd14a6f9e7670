package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCountCPUList(t *testing.T) {
	for s, want := range map[string]int{"0": 1, "0-1": 2, "0-3,5": 5, "0,2,4-7": 6} {
		if got, err := countCPUList(s); err != nil || got != want {
			t.Errorf("countCPUList(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "x", "3-1", "0-"} {
		if _, err := countCPUList(s); err == nil {
			t.Errorf("countCPUList(%q) accepted", s)
		}
	}
}

func TestInfo(t *testing.T) {
	dir := t.TempDir()
	cpu := filepath.Join(dir, "online")
	mem := filepath.Join(dir, "meminfo")
	os.WriteFile(cpu, []byte("0-1\n"), 0o644)
	os.WriteFile(mem, []byte("MemTotal:         504212 kB\nMemFree:  1 kB\n"), 0o644)
	got, err := info(cpu, mem)
	if err != nil || got != "gvmm-agent: cpus=2 mem_kib=504212" {
		t.Fatalf("info = %q, %v", got, err)
	}
	if _, err := memTotalKiB(strings.NewReader("MemFree: 1 kB\n")); err == nil {
		t.Fatal("missing MemTotal accepted")
	}
}
