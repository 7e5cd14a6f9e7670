package main

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gvmm/gvmm/vmm"
)

// TestHolderRetireWaitsForOperation: retire cancels a running snapshot or
// migration and returns only after it ended, so the machine is never
// closed (guest memory unmapped) under it; afterwards no new one starts.
func TestHolderRetireWaitsForOperation(t *testing.T) {
	h := &machineHolder{}
	h.set(new(vmm.Machine)) // begin only needs a machine to hand out
	_, ctx, err := h.begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.begin(context.Background()); err == nil {
		t.Fatal("a second operation started while one runs")
	}
	var ended atomic.Bool
	go func() {
		<-ctx.Done() // the operation notices the cancellation...
		time.Sleep(50 * time.Millisecond)
		ended.Store(true) // ...and stops touching the machine
		h.end()
	}()
	h.retire()
	if !ended.Load() {
		t.Fatal("retire returned while the operation still ran")
	}
	if _, _, err := h.begin(context.Background()); !errors.Is(err, errNoMachine) {
		t.Fatalf("begin after retire: %v, want errNoMachine", err)
	}
	h.retire() // nothing running: returns at once
}
