package main

import (
	"testing"
	"time"
)

func TestParseTaskStat(t *testing.T) {
	tests := []struct {
		line string
		name string
		cpu  time.Duration
		ok   bool
	}{
		{"1234 (vcpu0) R 1 1234 1234 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 1 0 500 0 0", "vcpu0", 1750 * time.Millisecond, true},
		{"77 (CPU 0/KVM) S 1 77 77 0 -1 4194560 100 0 0 0 3 4 0 0 20 0 1 0 500 0 0", "CPU 0/KVM", 70 * time.Millisecond, true},
		{"78 (a) b)) S 1 77 77 0 -1 4194560 100 0 0 0 1 1 0 0 20 0 1 0 500 0 0", "a) b)", 20 * time.Millisecond, true},
		{"79 (short) S 1 2", "", 0, false},
		{"no parens at all", "", 0, false},
		{"80 (x) S 1 77 77 0 -1 4194560 100 0 0 0 -3 1 0", "", 0, false},
	}
	for _, tt := range tests {
		name, cpu, ok := parseTaskStat(tt.line)
		if name != tt.name || cpu != tt.cpu || ok != tt.ok {
			t.Errorf("parseTaskStat(%q) = %q, %v, %v; want %q, %v, %v", tt.line, name, cpu, ok, tt.name, tt.cpu, tt.ok)
		}
	}
}

func TestThreadCPUSubAndString(t *testing.T) {
	before := threadCPU{"vcpu0": time.Second, "gvmm": 2 * time.Second}
	after := threadCPU{"vcpu0": 3 * time.Second, "gvmm": 2500 * time.Millisecond, "new": 100 * time.Millisecond}
	d := after.sub(before)
	want := `2.60 s, "vcpu0" 2.00 s, "gvmm" 0.50 s, "new" 0.10 s`
	if got := d.String(); got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
}

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		in          string
		busy, total time.Duration
		bad         bool
	}{
		{"cpu  100 5 50 800 10 2 3 0 0 0\ncpu0 1 2 3 4\n", 1600 * time.Millisecond, 9700 * time.Millisecond, false},
		{"cpu 1 2 3 4\n", 60 * time.Millisecond, 100 * time.Millisecond, false},
		{"cpu0 1 2 3 4 5\n", 0, 0, true},
		{"cpu 1 x 3 4 5\n", 0, 0, true},
		{"", 0, 0, true},
	}
	for _, tt := range tests {
		busy, total, err := parseProcStat(tt.in)
		if (err != nil) != tt.bad || busy != tt.busy || total != tt.total {
			t.Errorf("parseProcStat(%q) = %v, %v, %v; want %v, %v, error %v", tt.in, busy, total, err, tt.busy, tt.total, tt.bad)
		}
	}
}
