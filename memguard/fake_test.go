package memguard

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"testing"
)

// fakeMem is guest RAM [0, len(b)) with a dirty record.
type fakeMem struct {
	b     []byte
	dirty map[uint64]bool
}

func newFakeMem(size int) *fakeMem { return &fakeMem{b: make([]byte, size), dirty: map[uint64]bool{}} }

func (m *fakeMem) ReadAt(p []byte, gpa uint64) error {
	if gpa > uint64(len(m.b)) || uint64(len(p)) > uint64(len(m.b))-gpa {
		return fmt.Errorf("read %#x+%d: out of range", gpa, len(p))
	}
	copy(p, m.b[gpa:])
	return nil
}

func (m *fakeMem) WriteAt(p []byte, gpa uint64) error {
	if gpa > uint64(len(m.b)) || uint64(len(p)) > uint64(len(m.b))-gpa {
		return fmt.Errorf("write %#x+%d: out of range", gpa, len(p))
	}
	copy(m.b[gpa:], p)
	for a := gpa &^ 0xfff; a < gpa+uint64(len(p)); a += pageSize {
		m.dirty[a] = true
	}
	return nil
}

func (m *fakeMem) put64(gpa, v uint64) { binary.LittleEndian.PutUint64(m.b[gpa:], v) }

// pt builds page tables in a fakeMem, allocating table pages from next.
type pt struct {
	m    *fakeMem
	la57 bool
	root uint64
	next uint64
}

func newPT(m *fakeMem, la57 bool, tableBase uint64) *pt {
	p := &pt{m: m, la57: la57, root: tableBase, next: tableBase + pageSize}
	return p
}

func (p *pt) alloc() uint64 {
	a := p.next
	p.next += pageSize
	clear(p.m.b[a : a+pageSize])
	return a
}

const userRW = ptePresent | pteWrite | pteUser

// mapPage maps va to gpa with a page of size (4K, 2M, 1G); leaf flags
// flags, intermediate entries userRW.
func (p *pt) mapPage(va, gpa, size, flags uint64) {
	levels := 4
	if p.la57 {
		levels = 5
	}
	table := p.root
	for level := levels; level >= 1; level-- {
		shift := uint(12 + 9*(level-1))
		e := table + ((va>>shift)&511)*8
		if uint64(1)<<shift == size {
			f := flags
			if level > 1 {
				f |= pteHuge
			}
			p.m.put64(e, gpa|f)
			return
		}
		cur := binary.LittleEndian.Uint64(p.m.b[e:])
		if cur&ptePresent == 0 {
			n := p.alloc()
			p.m.put64(e, n|userRW)
			cur = n | userRW
		}
		table = cur & physMask
	}
}

// leafEntry returns the GPA of the last-level entry mapping va.
func (p *pt) leafEntry(va uint64) uint64 {
	t, err := Walk(p.m, p.root, p.la57, va)
	if err != nil {
		panic(err)
	}
	shift := uint(12)
	if t.PageSize == 2<<20 {
		shift = 21
	} else if t.PageSize == 1<<30 {
		shift = 30
	}
	return t.Tables[t.Levels-1] + ((va>>shift)&511)*8
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

const (
	memSize   = 8 << 20
	tableBase = 0x100000 // page tables from 1 MiB
	dataBase  = 0x400000 // user pages from 4 MiB
)

func userCtx(root uint64) VCPUContext {
	return VCPUContext{CR0: cr0PG | 1, CR3: root, CR4: cr4PAE, EFER: eferLMA | 1<<8, CPL: 3, RIP: 0x401000}
}

// env is a guard over a fake machine with one owner mapping n pages at va.
type env struct {
	m   *fakeMem
	p   *pt
	g   *Guard
	ctx VCPUContext
}

const userVA = 0x7f0000000000

func newEnv(t testing.TB, n int, cfg Config) *env {
	t.Helper()
	m := newFakeMem(memSize)
	p := newPT(m, false, tableBase)
	for i := 0; i < n; i++ {
		p.mapPage(userVA+uint64(i)*pageSize, dataBase+uint64(i)*pageSize, pageSize, userRW)
	}
	cfg.Memory = m
	if cfg.RAM == nil {
		cfg.RAM = []Range{{0, memSize}}
	}
	cfg.Logger = quiet()
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{m: m, p: p, g: g, ctx: userCtx(p.root | 0x805)} // PCID bits set
}

func (e *env) register(va, length uint64, mode Mode) (uint64, int64) {
	r := e.g.HandleIO(e.ctx, Regs{RAX: OpRegister, RBX: va, RCX: length, RSI: uint64(mode), RDX: Port})
	return r.Regs.RBX, int64(r.Regs.RAX)
}
