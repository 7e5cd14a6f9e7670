package vmm

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gvmm/gvmm/memguard"
	"github.com/gvmm/gvmm/vmm/vmmtest"
)

// Toy owner page tables in guest RAM: virtual guardVA maps guardGPA.
const (
	guardPML4 = 0x200000
	guardVA   = 0x10000
	guardGPA  = 0x400000
)

func writeOwnerTables(t *testing.T, mem *Memory) memguard.VCPUContext {
	t.Helper()
	put := func(gpa, v uint64) {
		b := make([]byte, 8)
		binary.LittleEndian.PutUint64(b, v)
		if err := mem.WriteAt(b, gpa); err != nil {
			t.Fatal(err)
		}
	}
	const pdpt, pd, pt, userRW = guardPML4 + 0x1000, guardPML4 + 0x2000, guardPML4 + 0x3000, 7
	put(guardPML4, pdpt|userRW)
	put(pdpt, pd|userRW)
	put(pd, pt|userRW)
	put(pt+(guardVA>>12)*8, guardGPA|userRW)
	return memguard.VCPUContext{CR0: cr0PG | cr0PE, CR3: guardPML4, CR4: cr4PAE, EFER: eferLMA | eferLME, CPL: 3}
}

// slotCovers reports whether some RAM slot of m maps gpa.
func slotCovers(m *Machine, gpa uint64) bool {
	m.layoutMu.Lock()
	defer m.layoutMu.Unlock()
	for _, s := range m.slots {
		if gpa >= s.gpa && gpa-s.gpa < s.size {
			return true
		}
	}
	return false
}

// registerGuardPage has owner protect its page at guardVA (confidential)
// through the guard's port interface and applies the new slot layout; it
// returns the region id.
func registerGuardPage(t *testing.T, m *Machine, owner memguard.VCPUContext) uint64 {
	t.Helper()
	res := m.Memguard().HandleIO(owner, memguard.Regs{RAX: memguard.OpRegister, RBX: guardVA, RCX: pageSize,
		RSI: uint64(memguard.Confidential), RDX: memguard.Port})
	if int64(res.Regs.RAX) != 0 || !res.LayoutChanged {
		t.Fatalf("register: RAX %d, layout changed %v", int64(res.Regs.RAX), res.LayoutChanged)
	}
	if err := m.applyLayout(nil); err != nil {
		t.Fatal(err)
	}
	return res.Regs.RBX
}

// TestMemguardSaveRestore registers a confidential region through the
// guard's port interface on a running machine, checks its page leaves the
// slots while the guest keeps running and that devices cannot reach it,
// and moves the machine's state to an incoming machine: the region, its
// owner and its contents come back and its page is out of the
// destination's slots, while a destination whose copy of the page differs
// refuses the state.
func TestMemguardSaveRestore(t *testing.T) {
	requireKVM(t)
	src := newCodeMachine(t, counterCode, 2)
	owner := writeOwnerTables(t, src.Memory())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srcRan := make(chan error, 1)
	go func() { _, err := src.Run(ctx); srcRan <- err }()
	const a = 0x30000
	waitCounter(t, src, a, 0)

	registerGuardPage(t, src, owner)
	if slotCovers(src, guardGPA) || !slotCovers(src, guardGPA-pageSize) || !slotCovers(src, guardGPA+pageSize) {
		t.Fatalf("slots %+v: want all RAM but the protected page", src.slots)
	}
	waitCounter(t, src, a, counter(t, src, a))
	dev := deviceMemory{src}
	if _, err := dev.Slice(guardGPA+pageSize-8, 16); !errors.Is(err, memguard.ErrProtectedDMA) {
		t.Errorf("a device's view of the protected page: %v, want %v", err, memguard.ErrProtectedDMA)
	}
	if err := dev.WriteAt([]byte{1}, guardGPA); !errors.Is(err, memguard.ErrProtectedDMA) {
		t.Errorf("a device's write to the protected page: %v, want %v", err, memguard.ErrProtectedDMA)
	}
	if _, err := dev.Slice(guardGPA+pageSize, pageSize); err != nil {
		t.Errorf("a device's view of the next page: %v", err)
	}
	secret := []byte("secret!!")
	if r := src.Memguard().HandleAccess(owner, guardGPA, secret, true); !r.Handled || r.Violation {
		t.Fatalf("owner write: %+v", r)
	}

	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Quiesce(ctx); err != nil {
		t.Fatal(err)
	}
	state, err := src.SaveState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := src.Description().Config()
	if err != nil {
		t.Fatal(err)
	}
	restore := func(tamper bool) (*Machine, chan error, error) {
		dst, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range src.Memory().Regions() {
			copy(dst.Memory().Regions()[i].Data, r.Data)
		}
		if tamper {
			if err := dst.Memory().WriteAt([]byte("changed!"), guardGPA); err != nil {
				t.Fatal(err)
			}
		}
		ran := make(chan error, 1)
		go func() { _, err := dst.Run(ctx); ran <- err }()
		if err := dst.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		return dst, ran, dst.RestoreState(ctx, state, RestoreOptions{})
	}

	bad, badRan, err := restore(true)
	if !errors.Is(err, memguard.ErrMeasurementMismatch) {
		t.Errorf("restore over a changed protected page: %v, want %v", err, memguard.ErrMeasurementMismatch)
	}
	bad.HandedOver()
	<-badRan
	bad.Close()

	dst, dstRan, err := restore(false)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	st := dst.Memguard().Status()
	if len(st.Regions) != 1 || st.Regions[0].Mode != memguard.Confidential || st.Regions[0].Owner != guardPML4 || st.Regions[0].VA != guardVA {
		t.Fatalf("restored regions %+v", st.Regions)
	}
	if slotCovers(dst, guardGPA) || !slotCovers(dst, guardGPA+pageSize) {
		t.Fatalf("destination slots %+v: want all RAM but the protected page", dst.slots)
	}
	got := make([]byte, len(secret))
	if r := dst.Memguard().HandleAccess(owner, guardGPA, got, false); !r.Handled || string(got) != string(secret) {
		t.Fatalf("owner read on the destination: %q (%+v)", got, r)
	}
	kernel0 := owner
	kernel0.CPL = 0
	if r := dst.Memguard().HandleAccess(kernel0, guardGPA, got, false); !r.Violation || string(got) == string(secret) {
		t.Fatalf("kernel read on the destination: %q (%+v)", got, r)
	}
	src.HandedOver()
	if err := <-srcRan; err != nil {
		t.Fatalf("source Run: %v", err)
	}
	stopped := counter(t, dst, a)
	if err := dst.Resume(); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, dst, a, stopped)
	cancel()
	if err := <-dstRan; err != nil {
		t.Fatalf("destination Run: %v", err)
	}
}

// TestMemguardMigrateInProcess live-migrates a counting guest with a
// confidential region the way TestMigrateInProcess does (dirty log on, a
// full copy while it runs, the dirty pages, pause, the last dirty pages
// and the state). The owner's write, which gvmm performs on the backing
// page while the guest runs, must be in the VMM-side dirty bitmap, so the
// region's page reaches the destination with the dirty pages only. There
// the protection (no slot over the page, kernel reads refused), the
// content (the owner reads its secret) and the measurement (the restored
// digest equals the source's) are intact and the guest counts on. A
// destination that missed that page refuses the state with a
// measurement mismatch, so it never resumes.
func TestMemguardMigrateInProcess(t *testing.T) {
	requireKVM(t)
	src := newCodeMachine(t, counterCode, 2)
	owner := writeOwnerTables(t, src.Memory())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srcRan := make(chan error, 1)
	go func() { _, err := src.Run(ctx); srcRan <- err }()
	const a = 0x30000
	waitCounter(t, src, a, 0)
	id := registerGuardPage(t, src, owner)

	if err := src.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	cfg, err := src.Description().Config()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.TakeDirty(); err != nil {
		t.Fatal(err)
	}
	// The full copy, before the owner writes its secret.
	image := make([][]byte, len(src.Memory().Regions()))
	for i, r := range src.Memory().Regions() {
		image[i] = append([]byte(nil), r.Data...)
	}
	copyDirty := func(bms [][]uint64, skip uint64) {
		for i, r := range src.Memory().Regions() {
			for p := 0; p < len(r.Data)/pageSize; p++ {
				if bms[i][p/64]&(1<<(p%64)) != 0 && r.GPA+uint64(p)*pageSize != skip {
					copy(image[i][p*pageSize:(p+1)*pageSize], r.Data[p*pageSize:(p+1)*pageSize])
				}
			}
		}
	}
	secret := []byte("migrated secret")
	if r := src.Memguard().HandleAccess(owner, guardGPA+8, secret, true); !r.Handled || r.Violation {
		t.Fatalf("owner write: %+v", r)
	}
	waitCounter(t, src, a, counter(t, src, a))
	bms, err := src.TakeDirty()
	if err != nil {
		t.Fatal(err)
	}
	if !pageDirty(src, bms, guardGPA) {
		t.Fatal("the owner's write through gvmm is not in the dirty bitmap")
	}
	if !pageDirty(src, bms, a) {
		t.Fatal("KVM's dirty log missed the page the guest counts in")
	}
	// Two images from here: one with every dirty page, one that misses
	// the protected page.
	lossy := make([][]byte, len(image))
	for i := range image {
		lossy[i] = append([]byte(nil), image[i]...)
	}
	full := image
	copyDirty(bms, 0)
	image = lossy
	copyDirty(bms, guardGPA)
	image = full

	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Quiesce(ctx); err != nil {
		t.Fatal(err)
	}
	if bms, err = src.TakeDirty(); err != nil {
		t.Fatal(err)
	}
	copyDirty(bms, 0)
	image = lossy
	copyDirty(bms, guardGPA)
	image = full
	srcDigest, err := src.Memguard().MeasureRegion(id, "test")
	if err != nil {
		t.Fatal(err)
	}
	state, err := src.SaveState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.StopDirtyLog(); err != nil {
		t.Fatal(err)
	}
	stopped := counter(t, src, a)

	restore := func(img [][]byte) (*Machine, chan error, error) {
		dst, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range dst.Memory().Regions() {
			copy(r.Data, img[i])
		}
		ran := make(chan error, 1)
		go func() { _, err := dst.Run(ctx); ran <- err }()
		if err := dst.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		return dst, ran, dst.RestoreState(ctx, state, RestoreOptions{})
	}
	bad, badRan, err := restore(lossy)
	if !errors.Is(err, memguard.ErrMeasurementMismatch) {
		t.Errorf("restore without the owner's last write: %v, want %v", err, memguard.ErrMeasurementMismatch)
	}
	bad.HandedOver()
	<-badRan
	bad.Close()

	dst, dstRan, err := restore(full)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	src.HandedOver()
	if err := <-srcRan; err != nil {
		t.Fatalf("source Run: %v", err)
	}
	if got := counter(t, dst, a); got != stopped {
		t.Fatalf("destination memory has counter %d, source stopped at %d", got, stopped)
	}
	st := dst.Memguard().Status()
	if len(st.Regions) != 1 || st.Regions[0].ID != id || st.Regions[0].Mode != memguard.Confidential ||
		st.Regions[0].Owner != guardPML4 || st.Regions[0].Last == nil {
		t.Fatalf("restored regions %+v", st.Regions)
	}
	if st.Regions[0].Last.Digest != srcDigest.Digest || st.Regions[0].Last.Trigger != "restore" {
		t.Errorf("destination measurement %x (%s), source %x", st.Regions[0].Last.Digest, st.Regions[0].Last.Trigger, srcDigest.Digest)
	}
	if slotCovers(dst, guardGPA) || !slotCovers(dst, guardGPA+pageSize) {
		t.Fatalf("destination slots %+v: want all RAM but the protected page", dst.slots)
	}
	if err := dst.Resume(); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, dst, a, stopped)
	got := make([]byte, len(secret))
	if r := dst.Memguard().HandleAccess(owner, guardGPA+8, got, false); !r.Handled || string(got) != string(secret) {
		t.Fatalf("owner read on the destination: %q (%+v)", got, r)
	}
	kernel0 := owner
	kernel0.CPL = 0
	if r := dst.Memguard().HandleAccess(kernel0, guardGPA+8, got, false); !r.Violation || string(got) == string(secret) {
		t.Fatalf("kernel read on the destination: %q (%+v)", got, r)
	}
	again, err := dst.Memguard().MeasureRegion(id, "test")
	if err != nil || again.Digest != srcDigest.Digest {
		t.Errorf("destination measures %x (%v), source %x", again.Digest, err, srcDigest.Digest)
	}
	cancel()
	if err := <-dstRan; err != nil {
		t.Fatalf("destination Run: %v", err)
	}
}

// counterAt is counterCode counting at gpa instead.
func counterAt(gpa uint64) []byte {
	code := append([]byte(nil), counterCode...)
	binary.LittleEndian.PutUint64(code[2:10], gpa)
	return code
}

// TestMemguardInjectFaults has the guest kernel (the toy guest, at CPL 0)
// count in a page an owner protected as confidential. By default each of
// its accesses is refused (reads see zeros, writes are dropped), counted,
// and the guest runs on; with Config.MemguardInjectFaults the first
// refused access becomes a #GP in the guest, which (the toy guest has no
// IDT) ends it in a triple fault.
func TestMemguardInjectFaults(t *testing.T) {
	requireKVM(t)
	kernel := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(kernel, vmmtest.BzImage(counterAt(guardGPA), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, inject := range []bool{false, true} {
		t.Run(fmt.Sprintf("inject=%v", inject), func(t *testing.T) {
			m, err := New(Config{KernelPath: kernel, MemoryBytes: MinMemory, CPUs: 1, MemguardInjectFaults: inject})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			owner := writeOwnerTables(t, m.Memory())
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ran := make(chan error, 1)
			go func() { _, err := m.Run(ctx); ran <- err }()
			waitCounter(t, m, guardGPA, 0)
			res := m.Memguard().HandleIO(owner, memguard.Regs{RAX: memguard.OpRegister, RBX: guardVA, RCX: pageSize,
				RSI: uint64(memguard.Confidential), RDX: memguard.Port})
			if int64(res.Regs.RAX) != 0 {
				t.Fatalf("register: RAX %d", int64(res.Regs.RAX))
			}
			if err := m.applyLayout(nil); err != nil {
				t.Fatal(err)
			}
			if !inject {
				deadline := time.Now().Add(10 * time.Second)
				for m.Memguard().Status().Violations < 100 {
					if time.Now().After(deadline) {
						t.Fatalf("%d violations after 10s", m.Memguard().Status().Violations)
					}
					time.Sleep(time.Millisecond)
				}
				// Each refused access is one MMIO exit mediated by gvmm
				// (registers, special registers, the owner check).
				v0, t0 := m.Memguard().Status().Violations, time.Now()
				frozen := counter(t, m, guardGPA)
				time.Sleep(500 * time.Millisecond)
				v1, d := m.Memguard().Status().Violations, time.Since(t0)
				t.Logf("mediated accesses (refused, 1 vCPU): %.0f/s", float64(v1-v0)/d.Seconds())
				if got := counter(t, m, guardGPA); got != frozen {
					t.Errorf("the kernel's writes reached the protected page: %d, then %d", frozen, got)
				}
				select {
				case err := <-ran:
					t.Fatalf("the guest ended: %v", err)
				default:
				}
				cancel()
				if err := <-ran; err != nil {
					t.Fatalf("Run: %v", err)
				}
				return
			}
			select {
			case err := <-ran:
				var ge *GuestError
				if !errors.As(err, &ge) || !strings.Contains(ge.Reason, "triple fault") {
					t.Fatalf("Run: %v, want a triple fault", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the guest runs on 10s after a refused access with fault injection")
			}
			if v := m.Memguard().Status().Violations; v == 0 {
				t.Error("no violation counted")
			}
		})
	}
}

// TestMemguardMeasure64MiB registers 64 MiB of guest RAM as a measured
// range on a machine and times a full measurement (the issue's
// benchmark): the digest is SHA-256 of those bytes, and one changed byte
// shows as a change at the next measurement.
func TestMemguardMeasure64MiB(t *testing.T) {
	requireKVM(t)
	kernel := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(kernel, vmmtest.BzImage(counterCode, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{KernelPath: kernel, MemoryBytes: 2 * MinMemory, CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const gpa, size = 32 << 20, 64 << 20
	b, err := m.Memory().Slice(gpa, size)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = byte(i * 7)
	}
	if err := m.Memguard().AddRange("bench", gpa, size); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	ms, err := m.Memguard().MeasureAll("test")
	d := time.Since(t0)
	if err != nil || len(ms) != 1 {
		t.Fatalf("measure: %v (%d measurements)", err, len(ms))
	}
	if ms[0].Digest != sha256.Sum256(b) {
		t.Fatalf("digest %x is not SHA-256 of the range", ms[0].Digest)
	}
	t.Logf("full measurement of a 64 MiB range: %v (%.0f MiB/s)", d.Round(time.Millisecond), 64/d.Seconds())
	b[size/2]++
	if ms, err = m.Memguard().MeasureAll("test"); err != nil || !ms[0].Changed {
		t.Fatalf("after a changed byte: %+v, %v", ms, err)
	}
}
