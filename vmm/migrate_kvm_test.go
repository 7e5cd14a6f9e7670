package vmm

import (
	"context"
	"testing"
)

// pageDirty reports whether gpa's page is set in per-region bitmaps.
func pageDirty(m *Machine, bms [][]uint64, gpa uint64) bool {
	for i, r := range m.Memory().Regions() {
		if gpa >= r.GPA && gpa-r.GPA < uint64(len(r.Data)) {
			p := (gpa - r.GPA) / pageSize
			return bms[i][p/64]&(1<<(p%64)) != 0
		}
	}
	return false
}

// TestMigrateInProcess moves a counting 2-vCPU guest from one machine to an
// incoming one in the same process the way a migration does: dirty
// logging on, a full copy while it runs, a copy of what it dirtied, pause
// and quiesce, the last dirty pages and the whole state, restore, resume.
// KVM's dirty log must report the counter's page (a vCPU write) and the
// VMM bitmap a VMM write; the destination must go on counting from where
// the source stopped.
func TestMigrateInProcess(t *testing.T) {
	requireKVM(t)
	src := newCodeMachine(t, counterCode, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srcRan := make(chan error, 1)
	go func() { _, err := src.Run(ctx); srcRan <- err }()
	const a = 0x30000
	waitCounter(t, src, a, 0)

	if err := src.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	cfg, err := src.Description().Config()
	if err != nil {
		t.Fatal(err)
	}
	dst, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	info, err := src.MigrationInfo()
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := DecodeMigrationInfo(info)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.CheckCompatible(decoded); err != nil {
		t.Fatalf("same host is not compatible with itself: %v", err)
	}
	copyAll := func() {
		for i, r := range src.Memory().Regions() {
			copy(dst.Memory().Regions()[i].Data, r.Data)
		}
	}
	copyDirty := func(bms [][]uint64) (n int) {
		dregs := dst.Memory().Regions()
		for i, r := range src.Memory().Regions() {
			for p := 0; p < len(r.Data)/pageSize; p++ {
				if bms[i][p/64]&(1<<(p%64)) != 0 {
					copy(dregs[i].Data[p*pageSize:(p+1)*pageSize], r.Data[p*pageSize:(p+1)*pageSize])
					n++
				}
			}
		}
		return n
	}
	if _, err := src.TakeDirty(); err != nil {
		t.Fatal(err)
	}
	copyAll()
	const vmmWrite = 0x50000
	if err := src.Memory().WriteAt([]byte("vmm"), vmmWrite); err != nil {
		t.Fatal(err)
	}
	before := counter(t, src, a)
	waitCounter(t, src, a, before)
	bms, err := src.TakeDirty()
	if err != nil {
		t.Fatal(err)
	}
	if !pageDirty(src, bms, a) {
		t.Fatal("KVM's dirty log missed the page the guest counts in")
	}
	if !pageDirty(src, bms, vmmWrite) {
		t.Fatal("the VMM bitmap missed a VMM write")
	}
	copyDirty(bms)

	src.Throttle(50)
	waitCounter(t, src, a, counter(t, src, a))
	src.Throttle(0)

	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Quiesce(ctx); err != nil {
		t.Fatal(err)
	}
	if bms, err = src.TakeDirty(); err != nil {
		t.Fatal(err)
	}
	copyDirty(bms)
	state, err := src.SaveState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stopped := counter(t, src, a)
	if err := src.StopDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if got := counter(t, dst, a); got != stopped {
		t.Fatalf("destination memory has counter %d, source stopped at %d", got, stopped)
	}

	dstRan := make(chan error, 1)
	go func() { _, err := dst.Run(ctx); dstRan <- err }()
	if err := dst.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dst.RestoreState(ctx, state, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	src.HandedOver()
	if err := <-srcRan; err != nil {
		t.Fatalf("source Run: %v", err)
	}
	if err := dst.Resume(); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, dst, a, stopped)

	// A state with a component missing or one too many is refused.
	if err := dst.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dst.RestoreState(ctx, state[1:], RestoreOptions{}); err == nil {
		t.Error("a state without its machine description was restored")
	}
	extra := append(append([]StateComponent(nil), state...), StateComponent{ID: "evil", Data: []byte(`{"v":1,"s":{}}`)})
	if err := dst.RestoreState(ctx, extra, RestoreOptions{}); err == nil {
		t.Error("a state with an unknown component was restored")
	}
	cancel()
	if err := <-dstRan; err != nil {
		t.Fatalf("destination Run: %v", err)
	}
}
