package memguard

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func TestHandleAccess(t *testing.T) {
	e := newEnv(t, 2, Config{InjectFaults: true})
	conf := mustRegister(e, userVA, pageSize, Confidential)
	integ := mustRegister(e, userVA+pageSize, pageSize, Integrity)
	copy(e.m.b[dataBase:], "secret!!")
	copy(e.m.b[dataBase+pageSize:], "public!!")
	kernel := e.ctx
	kernel.CPL = 0
	// With PTI the kernel enters on the other half of the pair; without,
	// on the same root: neither at CPL 0 is the owner.
	otherProc := userCtx(e.p.root + 2*pageSize)
	ownerPCID := e.ctx
	ownerPCID.CR3 = e.p.root | 0x7ff | 1<<63
	tests := []struct {
		name      string
		ctx       VCPUContext
		gpa       uint64
		write     bool
		in        string
		want      string // read result, or memory afterwards for writes
		handled   bool
		violation bool
	}{
		{"owner reads", e.ctx, dataBase, false, "", "secret!!", true, false},
		{"owner with other PCID", ownerPCID, dataBase + 2, false, "", "cret!!\x00\x00", true, false},
		{"kernel reads", kernel, dataBase, false, "", "\x00\x00\x00\x00\x00\x00\x00\x00", true, true},
		{"other reads", otherProc, dataBase, false, "", "\x00\x00\x00\x00\x00\x00\x00\x00", true, true},
		{"kernel writes", kernel, dataBase, true, "XXXXXXXX", "secret!!", true, true},
		{"other writes integrity", otherProc, dataBase + pageSize, true, "XXXXXXXX", "public!!", true, true},
		{"other reads integrity", otherProc, dataBase + pageSize, false, "", "public!!", true, false},
		{"owner writes integrity", e.ctx, dataBase + pageSize, true, "PUBLIC!!", "PUBLIC!!", true, false},
		{"owner writes", e.ctx, dataBase, true, "SECRET!!", "SECRET!!", true, false},
		{"unprotected", kernel, dataBase + 2*pageSize, false, "", "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := make([]byte, 8)
			copy(data, tt.in)
			before := e.g.Status().Violations
			clear(e.m.dirty)
			r := e.g.HandleAccess(tt.ctx, tt.gpa, data, tt.write)
			if r.Handled != tt.handled || r.Violation != tt.violation || r.InjectFault != tt.violation {
				t.Fatalf("result %+v", r)
			}
			if !tt.handled {
				return
			}
			got := data
			if tt.write {
				got = e.m.b[tt.gpa : tt.gpa+8]
				if !tt.violation && !e.m.dirty[tt.gpa&^0xfff] {
					t.Error("owner write not marked dirty")
				}
			}
			if string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			after := e.g.Status().Violations
			if tt.violation != (after == before+1) {
				t.Errorf("violations %d -> %d", before, after)
			}
		})
	}
	s := e.g.Status()
	if len(s.Regions) != 2 || s.Regions[0].ID != conf || s.Regions[0].Violations != 3 || s.Regions[1].ID != integ || s.Regions[1].Violations != 1 {
		t.Errorf("status %+v", s)
	}
}

func TestHandleAccessOwnerGone(t *testing.T) {
	e := newEnv(t, 2, Config{})
	mustRegister(e, userVA, 2*pageSize, Confidential)
	copy(e.m.b[dataBase:], "secret")
	kernel := e.ctx
	kernel.CPL = 0
	// The owner is alive: the kernel's write is dropped.
	if r := e.g.HandleAccess(kernel, dataBase, []byte("kernel"), true); !r.Violation || r.LayoutChanged {
		t.Fatalf("alive owner: %+v", r)
	}
	// The owner exits: its PTE is cleared and the kernel reuses the page.
	e.m.put64(e.p.leafEntry(userVA), 0)
	buf := make([]byte, 6)
	r := e.g.HandleAccess(kernel, dataBase, buf, false)
	if r.Violation || !r.LayoutChanged || !r.Handled {
		t.Fatalf("dead owner: %+v", r)
	}
	if !bytes.Equal(buf, make([]byte, 6)) || !bytes.Equal(e.m.b[dataBase:dataBase+6], make([]byte, 6)) {
		t.Errorf("secret survived the owner: read %q, memory %q", buf, e.m.b[dataBase:dataBase+6])
	}
	if s := e.g.Status(); s.Protected != 0 {
		t.Errorf("region not released: %+v", s)
	}
	if r := e.g.HandleAccess(kernel, dataBase, []byte("kernel"), true); r.Handled {
		t.Errorf("released page still handled: %+v", r)
	}
}

func TestCheckOwners(t *testing.T) {
	tests := []struct {
		name  string
		kill  func(e *env)
		alive bool
	}{
		{"alive", func(e *env) {}, true},
		{"write-protected is alive", func(e *env) {
			le := e.p.leafEntry(userVA)
			e.m.put64(le, (dataBase)|ptePresent|pteUser)
		}, true},
		{"pte cleared", func(e *env) { e.m.put64(e.p.leafEntry(userVA+pageSize), 0) }, false},
		{"remapped", func(e *env) { e.p.mapPage(userVA, dataBase+0x10000, pageSize, userRW) }, false},
		{"made supervisor", func(e *env) { e.m.put64(e.p.leafEntry(userVA), dataBase|ptePresent|pteWrite) }, false},
		{"root reused as data", func(e *env) {
			for i := uint64(0); i < pageSize; i++ {
				e.m.b[e.p.root+i] = 0x41
			}
		}, false},
		{"root reused as another table", func(e *env) {
			// Same frame at the same VA, but through new tables.
			clear(e.m.b[e.p.root : e.p.root+pageSize])
			e.p.mapPage(userVA, dataBase, pageSize, userRW)
			e.p.mapPage(userVA+pageSize, dataBase+pageSize, pageSize, userRW)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, 2, Config{})
			mustRegister(e, userVA, 2*pageSize, Integrity)
			copy(e.m.b[dataBase:], "secret")
			tt.kill(e)
			n := e.g.CheckOwners()
			if (n == 0) != tt.alive {
				t.Fatalf("released %d", n)
			}
			wiped := bytes.Equal(e.m.b[dataBase:dataBase+6], make([]byte, 6))
			if wiped == tt.alive {
				t.Errorf("wiped %v", wiped)
			}
		})
	}
}

func TestMeasure(t *testing.T) {
	e := newEnv(t, 2, Config{})
	id := mustRegister(e, userVA, 2*pageSize, Integrity)
	if err := e.g.AddRange("kernel-text", 0x200000, 0x10000); err != nil {
		t.Fatal(err)
	}
	if err := e.g.AddRange("bad", memSize-pageSize, 2*pageSize); err == nil {
		t.Error("range outside RAM accepted")
	}
	if _, err := e.g.MeasureAll("test"); err != nil {
		t.Fatal(err)
	}
	// The owner writes through gvmm: a change, expected.
	e.g.HandleAccess(e.ctx, dataBase, []byte("owner"), true)
	m, err := e.g.MeasureRegion(id, "test")
	if err != nil || !m.Changed || m.Unexpected {
		t.Fatalf("owner write: %+v %v", m, err)
	}
	// The guest asks through the port: same digest, in four registers.
	r := e.g.HandleIO(e.ctx, Regs{RAX: OpMeasure, RBX: id})
	if r.Regs.RAX != 0 || r.Regs.RBX != le64(m.Digest[0:]) || r.Regs.RDI != le64(m.Digest[24:]) {
		t.Errorf("OpMeasure %+v, digest %x", r.Regs, m.Digest)
	}
	if r := e.g.HandleIO(userCtx(0x200000), Regs{RAX: OpMeasure, RBX: id}); Errno(-int64(r.Regs.RAX)) != EPERM {
		t.Errorf("OpMeasure by another: %+v", r.Regs)
	}
	// Something else (DMA the VMM did not filter) changes it: violation.
	e.m.b[dataBase+pageSize] ^= 1
	e.m.b[0x200000] ^= 1
	ms, err := e.g.MeasureAll("periodic")
	if err != nil || len(ms) != 2 || !ms[0].Unexpected || !ms[1].Changed || ms[1].Range != "kernel-text" {
		t.Fatalf("unexpected change: %+v %v", ms, err)
	}
	s := e.g.Status()
	if s.Violations != 1 || s.Regions[0].Violations != 1 || s.Regions[0].Unexpected != 1 || s.Regions[0].Last == nil || s.Ranges[0].Last == nil {
		t.Errorf("status %+v", s)
	}
	// A later measurement sees no new change; the count stays.
	if ms, err := e.g.MeasureAll("periodic"); err != nil || ms[0].Unexpected {
		t.Fatalf("unchanged region: %+v %v", ms, err)
	}
	if s := e.g.Status(); s.Regions[0].Unexpected != 1 {
		t.Errorf("unexpected changes %d after a clean measurement, want 1", s.Regions[0].Unexpected)
	}
	if l := e.g.Log(); len(l) != 8 {
		t.Errorf("log has %d entries", len(l))
	}
}

func TestMeasureLogBounded(t *testing.T) {
	e := newEnv(t, 1, Config{LogSize: 3})
	id := mustRegister(e, userVA, pageSize, Integrity)
	for i := 0; i < 10; i++ {
		if _, err := e.g.MeasureRegion(id, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if l := e.g.Log(); len(l) != 3 {
		t.Errorf("log has %d entries", len(l))
	}
}

// BenchmarkMeasure64MiB times a full measurement of a 64 MiB region.
func BenchmarkMeasure64MiB(b *testing.B) {
	const size = 64 << 20
	m := newFakeMem(size + 8<<20)
	p := newPT(m, false, tableBase)
	for off := uint64(0); off < size; off += 2 << 20 {
		p.mapPage(userVA+off, 4<<20+off, 2<<20, userRW)
	}
	g, err := New(Config{Memory: m, RAM: []Range{{0, uint64(len(m.b))}}, Logger: quiet(), MaxPages: size / pageSize})
	if err != nil {
		b.Fatal(err)
	}
	r := g.HandleIO(userCtx(p.root), Regs{RAX: OpRegister, RBX: userVA, RCX: size, RSI: uint64(Integrity)})
	if r.Regs.RAX != 0 {
		b.Fatalf("register: %d", int64(r.Regs.RAX))
	}
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := g.MeasureRegion(r.Regs.RBX, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestRegisterReleasesDeadOwner(t *testing.T) {
	e := newEnv(t, 1, Config{})
	mustRegister(e, userVA, pageSize, Confidential)
	copy(e.m.b[dataBase:], "secret")
	// The owner dies; a new process gets the frame at another address
	// before any check ran.
	e.m.put64(e.p.leafEntry(userVA), 0)
	other := newPT(e.m, false, tableBase+0x40000)
	other.mapPage(0x10000, dataBase, pageSize, userRW)
	r := e.g.HandleIO(userCtx(other.root), Regs{RAX: OpRegister, RBX: 0x10000, RCX: pageSize, RSI: uint64(Confidential)})
	if r.Regs.RAX != 0 || !r.LayoutChanged {
		t.Fatalf("register over a dead owner's frame: %+v", r)
	}
	if string(e.m.b[dataBase:dataBase+6]) == "secret" {
		t.Error("dead owner's secret handed to the new owner")
	}
	if s := e.g.Status(); len(s.Regions) != 1 || s.Regions[0].Owner != other.root {
		t.Errorf("status %+v", s)
	}
}

// BenchmarkHandleAccessOwner is gvmm's own share of one mediated owner
// access (an 8-byte read); the exit to user space and back comes on top.
func BenchmarkHandleAccessOwner(b *testing.B) {
	e := newEnv(b, 16, Config{})
	mustRegister(e, userVA, 16*pageSize, Confidential)
	data := make([]byte, 8)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r := e.g.HandleAccess(e.ctx, dataBase+uint64(i%(16*512))*8, data, false); r.Violation {
			b.Fatal("violation")
		}
	}
}

// BenchmarkHandleAccessUnprotected is the cost for an MMIO exit that is
// not memguard's (device MMIO), which the VMM asks first.
func BenchmarkHandleAccessUnprotected(b *testing.B) {
	e := newEnv(b, 16, Config{})
	mustRegister(e, userVA, 16*pageSize, Confidential)
	data := make([]byte, 4)
	for i := 0; i < b.N; i++ {
		if e.g.HandleAccess(e.ctx, 0xfec00000, data, false).Handled {
			b.Fatal("handled")
		}
	}
}

// TestConcurrent runs the vCPU paths and the periodic work at once, for
// the race detector.
func TestConcurrent(t *testing.T) {
	e := newEnv(t, 8, Config{})
	kernel := e.ctx
	kernel.CPL = 0
	done := make(chan struct{})
	for w := 0; w < 4; w++ {
		go func(w int) {
			defer func() { done <- struct{}{} }()
			data := make([]byte, 8)
			for i := 0; i < 200; i++ {
				switch w {
				case 0:
					id, rc := e.register(userVA+uint64(i%8)*pageSize, pageSize, Mode(1+i%2))
					if rc == 0 {
						e.g.HandleIO(e.ctx, Regs{RAX: OpUnregister, RBX: id})
					}
				case 1:
					e.g.HandleAccess(e.ctx, dataBase+uint64(i%8)*pageSize, data, i%2 == 0)
					e.g.HandleAccess(kernel, dataBase+uint64(i%8)*pageSize, data, i%2 == 1)
				case 2:
					e.g.CheckOwners()
					_, _ = e.g.MeasureAll("test")
				case 3:
					_ = e.g.Status()
					_, _, _ = e.g.Slots()
					_ = e.g.Protected(dataBase, 8*pageSize)
				}
			}
		}(w)
	}
	for w := 0; w < 4; w++ {
		<-done
	}
}

func TestRun(t *testing.T) {
	e := newEnv(t, 1, Config{})
	mustRegister(e, userVA, pageSize, Integrity)
	e.m.put64(e.p.leafEntry(userVA), 0) // the owner dies
	ctx, cancel := context.WithCancel(context.Background())
	changed := make(chan struct{}, 1)
	go func() {
		<-changed
		cancel()
	}()
	err := e.g.Run(ctx, time.Millisecond, func() { changed <- struct{}{} })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("run: %v", err)
	}
	if s := e.g.Status(); s.Protected != 0 {
		t.Errorf("dead owner kept: %+v", s)
	}
	if err := e.g.Run(context.Background(), 0, nil); err == nil {
		t.Error("zero interval accepted")
	}
}
