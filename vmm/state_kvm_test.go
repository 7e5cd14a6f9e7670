package vmm

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gvmm/gvmm/kvm"
	"github.com/gvmm/gvmm/vmm/vmmtest"
)

// requireKVM skips without /dev/kvm, or fails when GVMM_REQUIRE_KVM=1 (the
// nested harness sets it: a KVM test that only ever skips proves nothing).
func requireKVM(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		if os.Getenv("GVMM_REQUIRE_KVM") == "1" {
			t.Fatalf("needs /dev/kvm: %v", err)
		}
		t.Skipf("needs /dev/kvm: %v", err)
	}
	f.Close()
}

// newCodeMachine makes a machine of cpus vCPUs whose "kernel" is code, at
// the 64-bit entry point (vmmtest.BzImage), closed when the test ends.
func newCodeMachine(t *testing.T, code []byte, cpus int) *Machine {
	t.Helper()
	kernel := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(kernel, vmmtest.BzImage(code, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{KernelPath: kernel, MemoryBytes: MinMemory, CPUs: cpus})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// counterCode increments the 64-bit counter at the address in RAX forever:
// mov rax, 0x30000; 1: inc qword [rax]; jmp 1b.
var counterCode = []byte{0x48, 0xb8, 0x00, 0x00, 0x03, 0, 0, 0, 0, 0, 0x48, 0xff, 0x00, 0xeb, 0xfb}

func counter(t *testing.T, m *Machine, gpa uint64) uint64 {
	t.Helper()
	b := make([]byte, 8)
	if err := m.Memory().ReadAt(b, gpa); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b)
}

func waitCounter(t *testing.T, m *Machine, gpa, above uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for counter(t, m, gpa) <= above {
		if time.Now().After(deadline) {
			t.Fatalf("counter at %#x stayed at %d", gpa, counter(t, m, gpa))
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPauseSaveRestore runs a guest that counts in memory, pauses it (the
// count stops), saves every vCPU and the VM-wide state, points the guest
// at another counter through a modified register file, then restores the
// saved state: the guest goes back to counting at the first address, and
// a second save matches the first.
func TestPauseSaveRestore(t *testing.T) {
	requireKVM(t)
	m := newCodeMachine(t, counterCode, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		_, err := m.Run(ctx)
		ran <- err
	}()
	const a, b = 0x30000, 0x40000
	waitCounter(t, m, a, 0)

	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	c1 := counter(t, m, a)
	time.Sleep(20 * time.Millisecond)
	if c2 := counter(t, m, a); c2 != c1 {
		t.Fatalf("paused guest still counts: %d then %d", c1, c2)
	}
	saved, err := m.SaveVCPUs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vmState, err := m.SaveVM()
	if err != nil {
		t.Fatal(err)
	}
	if len(saved) != 2 || saved[0].Regs.RAX != a || len(saved[0].MSRs) == 0 || len(saved[0].CPUID) == 0 || len(saved[0].XSave.Region) == 0 {
		t.Fatalf("saved state looks empty: RAX %#x, %d MSRs, %d CPUID leaves, %d XSAVE bytes",
			saved[0].Regs.RAX, len(saved[0].MSRs), len(saved[0].CPUID), len(saved[0].XSave.Region))
	}

	moved := append([]VCPUState(nil), saved...)
	moved[0].Regs.RAX = b
	// With NMIs masked (the guest never IRETs), an NMI stays pending: the
	// restore must carry it (KVM drops it without a flag).
	moved[0].Events.NMI.Pending, moved[0].Events.NMI.Masked = 1, 1
	if err := m.RestoreVCPUs(ctx, moved); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, m, b, 0)

	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if pending, err := m.SaveVCPUs(ctx); err != nil {
		t.Fatal(err)
	} else if pending[0].Events.NMI.Pending != 1 {
		t.Errorf("vCPU 0 NMI pending = %d after restoring a masked pending NMI, want 1", pending[0].Events.NMI.Pending)
	}
	if err := m.RestoreVCPUs(ctx, saved); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreVM(&vmState); err != nil {
		t.Fatal(err)
	}
	again, err := m.SaveVCPUs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range saved {
		if !reflect.DeepEqual(again[i].Sregs, saved[i].Sregs) || again[i].Regs != saved[i].Regs ||
			again[i].XCRs != saved[i].XCRs || !reflect.DeepEqual(again[i].CPUID, saved[i].CPUID) ||
			again[i].MPState != saved[i].MPState {
			t.Errorf("vCPU %d: state read back after restore differs", i)
		}
	}
	before := counter(t, m, a)
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, m, a, before)

	if _, err := m.SaveVCPUs(ctx); err != ErrNotPaused {
		t.Errorf("SaveVCPUs on a running machine: %v, want ErrNotPaused", err)
	}
	bad := append([]VCPUState(nil), saved...)
	bad[1].ID = 7
	m.Pause(ctx)
	if err := m.RestoreVCPUs(ctx, bad); err == nil {
		t.Error("a state for the wrong vCPU was restored")
	}
	if err := m.RestoreVCPUs(ctx, saved[:1]); err == nil {
		t.Error("one state for two vCPUs was restored")
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// readerCode reads the UART's receive register into memory forever:
//
//	mov edi, 0x30000; mov edx, 0x3f8
//	1: in al, dx; mov [rdi], al; inc rdi; jmp 1b
var readerCode = []byte{0xbf, 0x00, 0x00, 0x03, 0x00, 0xba, 0xf8, 0x03, 0x00, 0x00, 0xec, 0x88, 0x07, 0x48, 0xff, 0xc7, 0xeb, 0xf8}

// TestPauseCompletesPendingIO pauses a guest that does nothing but read
// bytes from the UART, again and again, and checks each saved state: a
// byte the UART has handed out is in guest memory, or in AL with RIP past
// the "in". A vCPU saved between an "in" exit and its completion would
// sit on the "in" with the byte gone, and a restored copy would lose it.
func TestPauseCompletesPendingIO(t *testing.T) {
	requireKVM(t)
	m := newCodeMachine(t, readerCode, 1)
	input := make([]byte, serialInputMax)
	for i := range input {
		input[i] = byte(i%255) + 1
	}
	if n := m.serial.Input(input); n != len(input) {
		t.Fatalf("queued %d of %d input bytes", n, len(input))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		m.Run(ctx)
	}()
	// Before m.Close (a cleanup, so run later): Run must be over.
	defer func() { cancel(); <-ran }()
	const base = 0x30000
	waitCounter(t, m, base, 0)
	checked := 0
	for round := 0; round < 20; round++ {
		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := m.SaveVCPUs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m.serial.mu.Lock()
		consumed := len(input) - len(m.serial.in)
		m.serial.mu.Unlock()
		regs := st[0].Regs
		stored := int(regs.RDI - base)
		op := make([]byte, 1)
		if err := m.Memory().ReadAt(op, regs.RIP); err != nil {
			t.Fatal(err)
		}
		switch {
		case consumed == len(input):
			// The input ran out: the guest now reads zeros.
		case op[0] == 0xec && stored != consumed:
			t.Fatalf("round %d: saved at the \"in\" with %d bytes stored but %d handed out: the last read is lost", round, stored, consumed)
		case op[0] == 0x88 && (stored+1 != consumed || byte(regs.RAX) != input[stored]):
			t.Fatalf("round %d: saved after the \"in\" with AL %#x, %d bytes stored, %d handed out", round, byte(regs.RAX), stored, consumed)
		default:
			checked++
		}
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if checked == 0 {
		t.Fatal("the input ran out before any pause could be checked")
	}
	got := make([]byte, 16)
	if err := m.Memory().ReadAt(got, base); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(input[:16]) {
		t.Errorf("guest stored %x, want %x", got, input[:16])
	}
}

// runCounting runs m (a counterCode machine) until the test ends, and
// returns once the guest counts.
func runCounting(t *testing.T, m *Machine) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() {
		_, err := m.Run(ctx)
		ran <- err
	}()
	t.Cleanup(func() {
		cancel()
		<-ran
	})
	waitCounter(t, m, 0x30000, 0)
	return ctx
}

// TestVCPUThreadNames: each vCPU thread is named vcpuN while it runs, so
// that tools and the migration bench can tell the guest's CPU time apart.
func TestVCPUThreadNames(t *testing.T) {
	requireKVM(t)
	m := newCodeMachine(t, counterCode, 2)
	runCounting(t, m)
	want := map[string]bool{"vcpu0": false, "vcpu1": false}
	for _, v := range m.vcpus {
		tid := v.tid.Load()
		b, err := os.ReadFile(filepath.Join("/proc/self/task", strconv.Itoa(int(tid)), "comm"))
		if err != nil {
			t.Fatalf("vCPU %d thread %d: %v", v.id, tid, err)
		}
		name := strings.TrimSpace(string(b))
		if _, ok := want[name]; !ok || want[name] {
			t.Errorf("vCPU %d thread is named %q", v.id, name)
		}
		want[name] = true
	}
}

// TestRestoreAdvancesClocks: a state restored into a fresh machine by
// RestoreState as a live migration restores it (AdvanceClock:
// KVM_CLOCK_REALTIME, then the TSC offsets) has kvmclock and every TSC
// moved on by the time it was away; restored as a snapshot is, both go on
// from their saved values. Where KVM gives no realtime or host TSC with
// the clock (no master clock: a host whose TSC is not its clocksource) or
// lacks KVM_VCPU_TSC_OFFSET, the live migration's restore must fall back
// to the snapshot's behaviour. Which of the two it checks is in the log:
// in the nested machine (no master clock) it is the fallback.
func TestRestoreAdvancesClocks(t *testing.T) {
	requireKVM(t)
	const away = 300 * time.Millisecond
	run := func(t *testing.T, m *Machine) context.Context {
		ctx := runCounting(t, m)
		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		return ctx
	}
	for _, advance := range []bool{true, false} {
		t.Run(fmt.Sprintf("advance=%v", advance), func(t *testing.T) {
			src := newCodeMachine(t, counterCode, 2)
			ctx := run(t, src)
			if err := src.Quiesce(ctx); err != nil {
				t.Fatal(err)
			}
			state, err := src.SaveState(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// What the source saved, as RestoreState will read it.
			byID := make(map[string]StateComponent, len(state))
			for _, c := range state {
				byID[c.ID] = c
			}
			var vm VMState
			if err := decodeComponent(byID["kvm/vm"], &vm); err != nil {
				t.Fatal(err)
			}
			vcpus := make([]VCPUState, 2)
			for i := range vcpus {
				if err := decodeComponent(byID[fmt.Sprintf("vcpu/%d", i)], &vcpus[i]); err != nil {
					t.Fatal(err)
				}
			}
			canAdvance := vcpus[0].HasTSCOffset && vm.Clock.Flags&kvm.ClockRealtime != 0 && vm.Clock.Flags&kvm.ClockHostTSC != 0
			want := advance && canAdvance
			path := "fallback (the clocks go on from their saved values)"
			if want {
				path = "advance"
			}
			t.Logf("TSC offset attribute %v, clock flags %#x: checking the %s", vcpus[0].HasTSCOffset, vm.Clock.Flags, path)
			// The destination starts after the time away: a TSC that
			// does not count it is at least that far behind.
			time.Sleep(away)
			dst := newCodeMachine(t, counterCode, 2)
			dctx := run(t, dst)
			if err := dst.RestoreState(dctx, state, RestoreOptions{AdvanceClock: advance}); err != nil {
				t.Fatal(err)
			}
			now, err := dst.vm.GetClock()
			if err != nil {
				t.Fatal(err)
			}
			moved := time.Duration(now.Clock - vm.Clock.Clock)
			offsets := make([]uint64, len(vcpus))
			if err := dst.eachVCPU(dctx, func(i int, v *vcpu) error {
				var err error
				offsets[i], err = v.cpu.TSCOffset()
				return err
			}); err != nil && vcpus[0].HasTSCOffset {
				t.Fatal(err)
			}
			if want && moved < away || !want && moved > 50*time.Millisecond {
				t.Errorf("kvmclock moved %v across %v away; want it moved on: %v", moved, away, want)
			}
			if !vcpus[0].HasTSCOffset {
				return // no offsets to compare
			}
			for i, st := range vcpus {
				// Both machines' offsets are from the same host TSC: a
				// guest TSC that counts the time away keeps its offset,
				// one that goes on from its saved value loses that time.
				lost := time.Duration(ticksToNs(int64(st.TSCOffset-offsets[i]), st.TSCKHz))
				t.Logf("vCPU %d: kvmclock moved %v, TSC lost %v", i, moved, lost)
				if want && (lost < -20*time.Millisecond || lost > 20*time.Millisecond) {
					t.Errorf("vCPU %d: the TSC lost %v of the %v away, want none", i, lost, away)
				}
				if !want && lost < away {
					t.Errorf("vCPU %d: the TSC lost only %v of the %v away, want all of it", i, lost, away)
				}
			}
		})
	}
}

// ticksToNs converts TSC ticks at khz to nanoseconds (nsToTicks inverted,
// without overflow for any span a test sees).
func ticksToNs(ticks int64, khz uint32) int64 {
	k := int64(khz)
	return ticks/k*1e6 + ticks%k*1e6/k
}
