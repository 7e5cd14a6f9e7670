package main

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/gvmm/gvmm/api"
	"time"

	"github.com/gvmm/gvmm/memguard"
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

func TestMemguardStatus(t *testing.T) {
	at := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		in      memguard.Status
		regions int
		digest  string
	}{
		{"empty", memguard.Status{}, 0, ""},
		{"unmeasured", memguard.Status{Regions: []memguard.RegionStatus{{ID: 1, Mode: memguard.Confidential, VA: 0x1000, Length: 4096}}, Protected: 1}, 1, ""},
		{"measured", memguard.Status{Regions: []memguard.RegionStatus{{ID: 2, Mode: memguard.Integrity, Violations: 3,
			Last: &memguard.Measurement{Time: at, Digest: [32]byte{0xab}}}}, Violations: 3, Refusals: 1, Protected: 1}, 1,
			"ab00000000000000000000000000000000000000000000000000000000000000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := memguardStatus(tc.in, nil)
			if got == nil || len(got.Regions) != tc.regions || got.Violations != tc.in.Violations ||
				got.Refusals != tc.in.Refusals || got.ProtectedPages != tc.in.Protected {
				t.Fatalf("memguardStatus(%+v) = %+v", tc.in, got)
			}
			if tc.regions == 0 {
				return
			}
			r, in := got.Regions[0], tc.in.Regions[0]
			if r.ID != in.ID || r.Mode != in.Mode.String() || r.VA != in.VA || r.Violations != in.Violations || r.Digest != tc.digest {
				t.Errorf("region %+v from %+v", r, in)
			}
			if tc.digest != "" && !r.MeasuredAt.Equal(at) {
				t.Errorf("measured at %v, want %v", r.MeasuredAt, at)
			}
		})
	}
}

func TestMemguardStatusRangesAndLog(t *testing.T) {
	at := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	in := memguard.Status{Ranges: []memguard.RangeStatus{
		{Name: "kernel-code", GPA: 0x1000000, Size: 0xe00000, Last: &memguard.Measurement{Time: at, Range: "kernel-code", Digest: [32]byte{1}, Changed: true}},
		{Name: "never", GPA: 0x2000000, Size: 4096},
	}}
	var log []memguard.Measurement
	for i := range 40 {
		log = append(log, memguard.Measurement{Time: at, Region: uint64(i), Trigger: "periodic"})
	}
	got := memguardStatus(in, log)
	if len(got.Ranges) != 2 || got.Ranges[0].Name != "kernel-code" || !got.Ranges[0].Changed || got.Ranges[0].Digest[:2] != "01" ||
		got.Ranges[1].Digest != "" || got.Ranges[1].Changed {
		t.Errorf("ranges %+v", got.Ranges)
	}
	if len(got.Log) != api.MaxMeasurementLog || got.Log[0].Region != 40-api.MaxMeasurementLog || got.Log[len(got.Log)-1].Region != 39 {
		t.Errorf("log of %d entries from region %d; want the latest %d", len(got.Log), got.Log[0].Region, api.MaxMeasurementLog)
	}
}

func TestParseMeasureRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want api.MeasureRequest
		err  bool
	}{
		{"kernel-code=0x1000000+0xe00000", api.MeasureRequest{Name: "kernel-code", GPA: 0x1000000, Size: 0xe00000}, false},
		{"k=4096+4096", api.MeasureRequest{Name: "k", GPA: 4096, Size: 4096}, false},
		{"=0+1", api.MeasureRequest{}, true},
		{"k=0x1000", api.MeasureRequest{}, true},
		{"k=0x1000+0", api.MeasureRequest{}, true},
		{"k=zz+1", api.MeasureRequest{}, true},
		{"k0x1000+1", api.MeasureRequest{}, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseMeasureRange(tc.in)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("parseMeasureRange(%q) = %+v, %v", tc.in, got, err)
			}
		})
	}
}
