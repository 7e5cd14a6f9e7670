package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKVMStats: the counters of every VM a process holds are summed, a
// counter the kernel lacks is left out, and growth is printed per MiB.
func TestKVMStats(t *testing.T) {
	dir := t.TempDir()
	write := func(vm, name, v string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(dir, vm), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, vm, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("42-11", "exits", "100")
	write("42-12", "exits", "50")
	write("42-11", "irq_injections", "7")
	write("43-11", "exits", "999") // another process
	before, err := readKVMStats(dir, 42)
	if err != nil {
		t.Fatal(err)
	}
	if before["exits"] != 150 || before["irq_injections"] != 7 {
		t.Fatalf("before: %v", before)
	}
	write("42-11", "exits", "1100")
	write("42-11", "irq_injections", "207")
	after, err := readKVMStats(dir, 42)
	if err != nil {
		t.Fatal(err)
	}
	got := formatKVMDelta(before, after, 10)
	for _, want := range []string{"exits=100", "irq_injections=20"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	if strings.Contains(got, "io_exits") {
		t.Errorf("%q names a counter the kernel does not keep", got)
	}
	if _, err := readKVMStats(dir, 7); err == nil {
		t.Error("a process without VMs has statistics")
	}
	write("42-11", "exits", "many")
	if _, err := readKVMStats(dir, 42); err == nil {
		t.Error("a malformed counter was read")
	}
}
