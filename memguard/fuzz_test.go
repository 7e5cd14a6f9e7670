package memguard

import (
	"testing"
)

// FuzzHandleRequest drives the port and the MMIO path with hostile
// registers and contexts over a guest whose page tables the fuzzer also
// writes. Nothing may panic, and the registry's invariants must hold.
func FuzzHandleRequest(f *testing.F) {
	f.Add(uint64(OpRegister), uint64(userVA), uint64(pageSize), uint64(Confidential), uint8(3), uint64(0), uint64(0), []byte{})
	f.Add(uint64(OpRegister), uint64(userVA), uint64(4*pageSize), uint64(Integrity), uint8(3), uint64(0x805), uint64(dataBase), []byte{1})
	f.Add(uint64(OpUnregister), uint64(1), uint64(0), uint64(0), uint8(3), uint64(0), uint64(0), []byte{})
	f.Add(uint64(OpMeasure), uint64(1), uint64(0), uint64(0), uint8(0), uint64(1<<63), uint64(0), []byte{})
	f.Add(uint64(0xffffffff), ^uint64(0), ^uint64(0), ^uint64(0), uint8(255), ^uint64(0), ^uint64(0), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, op, rbx, rcx, rsi uint64, cpl uint8, cr3bits, gpa uint64, scribble []byte) {
		e := newEnv(t, 8, Config{MaxPages: 16, MaxRegions: 4, MaxSlots: 8, InjectFaults: true})
		mustRegister(e, userVA+4*pageSize, pageSize, Confidential)
		// Let the fuzzer scribble over the page tables.
		if len(scribble) > 0 {
			off := tableBase + (gpa%(4*pageSize))&^7
			copy(e.m.b[off:off+uint64(min(len(scribble), 64))], scribble)
		}
		ctx := e.ctx
		ctx.CPL = cpl
		ctx.CR3 ^= cr3bits
		for i := 0; i < 2; i++ {
			r := e.g.HandleIO(ctx, Regs{RAX: op, RBX: rbx, RCX: rcx, RSI: rsi, RDX: Port})
			if r.Regs.RDX != Port {
				t.Fatal("RDX changed")
			}
			if int64(r.Regs.RAX) > 0 {
				t.Fatalf("positive result %d", r.Regs.RAX)
			}
		}
		data := make([]byte, 1+gpa%8)
		e.g.HandleAccess(ctx, gpa, data, cpl&1 == 0)
		e.g.HandleAccess(ctx, dataBase+gpa%(8*pageSize), data, cpl&1 == 1)
		e.g.CheckOwners()
		_, _ = e.g.MeasureAll("fuzz")
		s := e.g.Status()
		if s.Protected > 16 || len(s.Regions) > 4 {
			t.Fatalf("limits broken: %+v", s)
		}
		if sl, _, err := e.g.Slots(); err != nil || len(sl) > 8 {
			t.Fatalf("slots %d %v", len(sl), err)
		}
		if st, err := e.g.Save(); err == nil {
			if _, err := Restore(Config{Memory: e.m, RAM: []Range{{0, memSize}}, Logger: quiet(), MaxPages: 16, MaxRegions: 4, MaxSlots: 8}, st); err != nil {
				t.Fatalf("restore of a fresh save: %v", err)
			}
		}
	})
}

// FuzzWalk walks hostile page tables: a four-page table area the fuzzer
// fills, any root and any address.
func FuzzWalk(f *testing.F) {
	f.Add([]byte{}, uint64(tableBase), uint64(0x1000), false)
	f.Add([]byte{0x07, 0x10, 0x10, 0, 0, 0, 0, 0}, uint64(tableBase), uint64(0), true)
	f.Add([]byte{0x87, 0, 0x20, 0, 0, 0, 0, 0}, uint64(tableBase), ^uint64(0), false)
	f.Fuzz(func(t *testing.T, tables []byte, root, va uint64, la57 bool) {
		m := newFakeMem(2 << 20)
		copy(m.b[tableBase:tableBase+4*pageSize], tables)
		tr, err := Walk(m, root, la57, va)
		if err != nil {
			return
		}
		if tr.Levels < 2 || tr.Levels > 5 || (tr.PageSize != pageSize && tr.PageSize != 2<<20 && tr.PageSize != 1<<30) {
			t.Fatalf("translation %+v", tr)
		}
		if tr.GPA&(tr.PageSize-1) != va&(tr.PageSize-1) || tr.GPA > 1<<52 {
			t.Fatalf("translation %+v of %#x", tr, va)
		}
	})
}
