package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKVMStats: the counters of the VMs given are summed, a
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
	vms := []string{filepath.Join(dir, "42-11"), filepath.Join(dir, "42-12")}
	before, err := readKVMStats(dir, vms)
	if err != nil {
		t.Fatal(err)
	}
	if before["exits"] != 150 || before["irq_injections"] != 7 {
		t.Fatalf("before: %v", before)
	}
	write("42-11", "exits", "1100")
	write("42-11", "irq_injections", "207")
	after, err := readKVMStats(dir, vms)
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
	if _, err := readKVMStats(dir, nil); err == nil {
		t.Error("a process without VMs has statistics")
	}
	write("42-11", "exits", "many")
	if _, err := readKVMStats(dir, vms); err == nil {
		t.Error("a malformed counter was read")
	}
}

// TestVMDirs: only directories named after one of the process's threads
// and one of its descriptors that is a KVM VM count.
func TestVMDirs(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Open(dir) // a descriptor that is no VM
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pid := os.Getpid()
	for _, name := range []string{fmt.Sprintf("%d-%d", pid, f.Fd()), fmt.Sprintf("%d-999", pid), "1-3"} {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got := vmDirs(dir, pid); len(got) != 0 {
		t.Fatalf("vmDirs = %v, want none (no descriptor is a VM)", got)
	}
}
