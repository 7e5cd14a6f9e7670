package vmm

import (
	"context"
	"slices"
	"testing"

	"github.com/gvmm/gvmm/memguard"
)

// TestMergeDirty checks that a slot's dirty log lands at the slot's place
// in its region's bitmap, whether the slot starts on a bitmap word or not.
func TestMergeDirty(t *testing.T) {
	mem, err := NewMemory(MinMemory)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	m := &Machine{mem: mem}
	const regionPages uint64 = MinMemory / pageSize
	for _, tc := range []struct {
		name  string
		slot  ramSlot
		bits  []uint64 // pages of the slot set in its log
		pages []uint64 // pages of the region expected set
	}{
		{"whole region", ramSlot{gpa: 0, size: MinMemory}, []uint64{0, 63, 64, regionPages - 1}, []uint64{0, 63, 64, regionPages - 1}},
		{"word aligned", ramSlot{gpa: 128 * pageSize, size: 64 * pageSize}, []uint64{0, 5, 63}, []uint64{128, 133, 191}},
		{"unaligned", ramSlot{gpa: 0x30000, size: pageSize}, []uint64{0}, []uint64{0x30}},
		{"unaligned, across words", ramSlot{gpa: 0x31000, size: 100 * pageSize}, []uint64{0, 14, 15, 99}, []uint64{0x31, 0x3f, 0x40, 0x31 + 99}},
		{"bits past the slot ignored", ramSlot{gpa: 0x31000, size: 2 * pageSize}, []uint64{1, 2, 63}, []uint64{0x32}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bm := make([]uint64, (tc.slot.size/pageSize+63)/64)
			for _, p := range tc.bits {
				if p/64 < uint64(len(bm)) {
					bm[p/64] |= 1 << (p % 64)
				}
			}
			into := [][]uint64{make([]uint64, (regionPages+63)/64)}
			m.mergeDirty(tc.slot, bm, into)
			var got []uint64
			for p := uint64(0); p < regionPages; p++ {
				if into[0][p/64]&(1<<(p%64)) != 0 {
					got = append(got, p)
				}
			}
			if !slices.Equal(got, tc.pages) {
				t.Errorf("pages %v, want %v", got, tc.pages)
			}
		})
	}
}

// TestSplitSlotsDirtyLog runs a guest that counts in memory while the RAM
// slots are split and merged again the way memguard does it, with dirty
// logging on: the counter's page is reported dirty from its own slot and
// from a slot deleted since the last TakeDirty, an untouched page is not,
// and with no slot at all over the counter the guest still counts
// through MMIO exits completed on the backing page.
func TestSplitSlotsDirtyLog(t *testing.T) {
	requireKVM(t)
	for _, tc := range []struct {
		name   string
		manual bool
	}{
		{"manual protection", true},
		{"protection by KVM", false},
	} {
		t.Run(tc.name, func(t *testing.T) { testSplitSlotsDirtyLog(t, tc.manual) })
	}
}

// testSplitSlotsDirtyLog runs TestSplitSlotsDirtyLog with manual dirty-log
// protection (where the kernel has it) or without, as on kernels that
// lack KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.
func testSplitSlotsDirtyLog(t *testing.T, manual bool) {
	m := newCodeMachine(t, counterCode, 2)
	m.noManualDirty = !manual
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { _, err := m.Run(ctx); ran <- err }()
	const a, untouched = 0x30000, 0x200000
	waitCounter(t, m, a, 0)
	change := func(slots []memguard.Slot) {
		t.Helper()
		m.layoutMu.Lock()
		defer m.layoutMu.Unlock()
		if err := m.changeSlots(nil, m.guard.Load(), slots); err != nil {
			t.Fatal(err)
		}
	}
	whole := []memguard.Slot{{GPA: 0, Size: MinMemory}}
	split := []memguard.Slot{{GPA: 0, Size: a}, {GPA: a, Size: pageSize}, {GPA: a + pageSize, Size: MinMemory - a - pageSize}}
	hole := []memguard.Slot{{GPA: 0, Size: a}, {GPA: a + pageSize, Size: MinMemory - a - pageSize}}

	change(split)
	if len(m.slots) != 3 {
		t.Fatalf("%d slots after a split, want 3", len(m.slots))
	}
	waitCounter(t, m, a, counter(t, m, a))
	if m.precopy.Load() {
		t.Fatal("precopy (the vCPUs' yield back-off) is on before StartDirtyLog")
	}
	if err := m.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if !m.precopy.Load() {
		t.Error("precopy (the vCPUs' yield back-off) is off after StartDirtyLog")
	}
	if m.manualDirty != manual {
		if manual {
			t.Skip("this kernel lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with INITIALLY_SET")
		}
		t.Fatal("manual dirty-log protection is on although the machine was told to keep it off")
	}
	if _, err := m.TakeDirty(); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, m, a, counter(t, m, a))
	bms, err := m.TakeDirty()
	if err != nil {
		t.Fatal(err)
	}
	if !pageDirty(m, bms, a) {
		t.Error("the counter's page, in a slot of its own, is not dirty")
	}
	if pageDirty(m, bms, untouched) {
		t.Error("an untouched page is dirty")
	}
	// Merging deletes the counter's slot: its log must survive.
	waitCounter(t, m, a, counter(t, m, a))
	change(whole)
	if bms, err = m.TakeDirty(); err != nil {
		t.Fatal(err)
	}
	if !pageDirty(m, bms, a) {
		t.Error("the counter's page is not dirty after its slot was deleted")
	}
	if err := m.StopDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if m.precopy.Load() {
		t.Error("precopy (the vCPUs' yield back-off) is still on after StopDirtyLog")
	}
	// No slot over the counter: every increment exits and is completed
	// on the backing page.
	change(hole)
	waitCounter(t, m, a, counter(t, m, a))
	change(whole)
	if len(m.slots) != 1 || m.slots[0].id != 0 {
		t.Fatalf("slots %+v after merging, want slot 0 over all RAM", m.slots)
	}
	waitCounter(t, m, a, counter(t, m, a))
	cancel()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
