package memguard

import (
	"bytes"
	"testing"
)

func TestRegister(t *testing.T) {
	const n = 8
	tests := []struct {
		name  string
		setup func(e *env)
		ctx   func(c VCPUContext) VCPUContext
		va    uint64
		len   uint64
		mode  Mode
		want  Errno
	}{
		{name: "ok", va: userVA, len: n * pageSize, mode: Confidential},
		{name: "ok integrity", va: userVA + pageSize, len: pageSize, mode: Integrity},
		{name: "kernel mode", va: userVA, len: pageSize, mode: Confidential, ctx: func(c VCPUContext) VCPUContext { c.CPL = 0; return c }, want: EPERM},
		{name: "not paging", va: userVA, len: pageSize, mode: Confidential, ctx: func(c VCPUContext) VCPUContext { c.EFER = 0; return c }, want: EPERM},
		{name: "bad mode", va: userVA, len: pageSize, mode: 7, want: EINVAL},
		{name: "unaligned va", va: userVA + 1, len: pageSize, mode: Confidential, want: EINVAL},
		{name: "unaligned len", va: userVA, len: 100, mode: Confidential, want: EINVAL},
		{name: "empty", va: userVA, len: 0, mode: Confidential, want: EINVAL},
		{name: "wraps", va: 0xfffffffffffff000, len: 2 * pageSize, mode: Confidential, want: EOVERFLOW},
		{name: "kernel half", va: 0xffff800000000000, len: pageSize, mode: Confidential, want: EOVERFLOW},
		{name: "crosses user limit", va: 1<<47 - pageSize, len: 2 * pageSize, mode: Confidential, want: EOVERFLOW},
		{name: "unmapped", va: userVA, len: (n + 1) * pageSize, mode: Confidential, want: EFAULT},
		{name: "too many pages", va: userVA, len: 1 << 40, mode: Confidential, want: ENOSPC},
		{name: "supervisor page", mode: Confidential, va: 0x10000, len: pageSize, want: EFAULT,
			setup: func(e *env) { e.p.mapPage(0x10000, dataBase+0x100000, pageSize, ptePresent|pteWrite) }},
		{name: "read-only page", mode: Integrity, va: 0x10000, len: pageSize, want: EFAULT,
			setup: func(e *env) { e.p.mapPage(0x10000, dataBase+0x100000, pageSize, ptePresent|pteUser) }},
		{name: "outside RAM", mode: Confidential, va: 0x10000, len: pageSize, want: EACCES,
			setup: func(e *env) { e.p.mapPage(0x10000, 0xc0000000, pageSize, userRW) }},
		{name: "device memory", mode: Confidential, va: 0x10000, len: pageSize, want: EACCES,
			setup: func(e *env) { e.p.mapPage(0x10000, 0xe0000, pageSize, userRW) }},
		{name: "page table", mode: Confidential, va: 0x10000, len: pageSize, want: EACCES,
			setup: func(e *env) { e.p.mapPage(0x10000, tableBase, pageSize, userRW) }},
		{name: "same frame twice", mode: Confidential, va: 0x10000, len: 2 * pageSize, want: EBUSY,
			setup: func(e *env) {
				e.p.mapPage(0x10000, dataBase+0x100000, pageSize, userRW)
				e.p.mapPage(0x11000, dataBase+0x100000, pageSize, userRW)
			}},
		{name: "va overlap", va: userVA, len: pageSize, mode: Integrity, want: EBUSY,
			setup: func(e *env) { mustRegister(e, userVA, 2*pageSize, Confidential) }},
		{name: "gpa overlap other owner", va: 0x10000, len: pageSize, mode: Integrity, want: EBUSY,
			setup: func(e *env) {
				mustRegister(e, userVA, pageSize, Confidential)
				e.p.mapPage(0x10000, dataBase, pageSize, userRW)
			}},
		{name: "region limit", va: userVA + 2*pageSize, len: pageSize, mode: Integrity, want: ENOSPC,
			setup: func(e *env) {
				mustRegister(e, userVA, pageSize, Confidential)
				mustRegister(e, userVA+pageSize, pageSize, Confidential)
			}},
		{name: "page limit", va: userVA, len: 5 * pageSize, mode: Integrity, want: ENOSPC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Reserved: []Range{{0, 0x100000}}}
			if tt.name == "region limit" {
				cfg.MaxRegions = 2
			}
			if tt.name == "page limit" {
				cfg.MaxPages = 4
			}
			if tt.name == "device memory" {
				cfg.RAM = []Range{{0, 0xc0000000}}
			}
			e := newEnv(t, n, cfg)
			if tt.setup != nil {
				tt.setup(e)
			}
			ctx := e.ctx
			if tt.ctx != nil {
				ctx = tt.ctx(ctx)
			}
			before := e.g.Status()
			r := e.g.HandleIO(ctx, Regs{RAX: OpRegister, RBX: tt.va, RCX: tt.len, RSI: uint64(tt.mode), RDX: Port})
			if got := Errno(-int64(r.Regs.RAX)); got != tt.want {
				t.Fatalf("result %d (%v), want -%d (%v)", int64(r.Regs.RAX), got, tt.want, tt.want)
			}
			if r.Regs.RDX != Port {
				t.Errorf("RDX changed to %#x", r.Regs.RDX)
			}
			after := e.g.Status()
			if tt.want == 0 {
				if r.Regs.RBX == 0 || !r.LayoutChanged || after.Protected != before.Protected+int(tt.len/pageSize) {
					t.Errorf("ok: id %d changed %v protected %d", r.Regs.RBX, r.LayoutChanged, after.Protected)
				}
			} else if r.LayoutChanged || after.Protected != before.Protected || after.Refusals != before.Refusals+1 {
				t.Errorf("refusal changed state: %+v", after)
			}
		})
	}
}

func mustRegister(e *env, va, length uint64, mode Mode) uint64 {
	id, rc := e.register(va, length, mode)
	if rc != 0 {
		panic(Errno(-rc).Error())
	}
	return id
}

func TestUnregisterWipes(t *testing.T) {
	e := newEnv(t, 2, Config{})
	id := mustRegister(e, userVA, 2*pageSize, Confidential)
	copy(e.m.b[dataBase:], "secret")
	other := userCtx(0x200000)
	tests := []struct {
		name string
		ctx  VCPUContext
		id   uint64
		want Errno
	}{
		{"kernel", func() VCPUContext { c := e.ctx; c.CPL = 0; return c }(), id, EPERM},
		{"other owner", other, id, EPERM},
		{"unknown", e.ctx, id + 1, ENOENT},
		{"owner", e.ctx, id, 0},
		{"twice", e.ctx, id, ENOENT},
	}
	for _, tt := range tests {
		r := e.g.HandleIO(tt.ctx, Regs{RAX: OpUnregister, RBX: tt.id})
		if got := Errno(-int64(r.Regs.RAX)); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
	if !bytes.Equal(e.m.b[dataBase:dataBase+6], make([]byte, 6)) {
		t.Error("pages not wiped")
	}
	if !e.m.dirty[dataBase] {
		t.Error("wipe not marked dirty")
	}
	if s := e.g.Status(); s.Protected != 0 || len(s.Regions) != 0 {
		t.Errorf("status after unregister: %+v", s)
	}
}

func TestVersionAndUnknown(t *testing.T) {
	e := newEnv(t, 1, Config{})
	r := e.g.HandleIO(e.ctx, Regs{RAX: OpVersion})
	if r.Regs.RAX != 0 || r.Regs.RBX != ABIVersion || r.Regs.RCX != DefaultMaxRegions {
		t.Errorf("version: %+v", r.Regs)
	}
	r = e.g.HandleIO(e.ctx, Regs{RAX: 99})
	if Errno(-int64(r.Regs.RAX)) != ENOSYS {
		t.Errorf("unknown op: %+v", r.Regs)
	}
}

func TestLayout(t *testing.T) {
	const M = 1 << 20
	ram := []Range{{0, 16 * M}, {32 * M, 16 * M}}
	p := func(gpa uint64, m Mode) ProtectedPage { return ProtectedPage{gpa, m} }
	tests := []struct {
		name  string
		pages []ProtectedPage
		max   int
		want  []Slot
		err   bool
	}{
		{"none", nil, 8, []Slot{{0, 16 * M, false}, {32 * M, 16 * M, false}}, false},
		{"one confidential", []ProtectedPage{p(M, Confidential)}, 8,
			[]Slot{{0, M, false}, {M + pageSize, 15*M - pageSize, false}, {32 * M, 16 * M, false}}, false},
		{"merged integrity", []ProtectedPage{p(M+pageSize, Integrity), p(M, Integrity)}, 8,
			[]Slot{{0, M, false}, {M, 2 * pageSize, true}, {M + 2*pageSize, 15*M - 2*pageSize, false}, {32 * M, 16 * M, false}}, false},
		{"mixed adjacent", []ProtectedPage{p(0, Integrity), p(pageSize, Confidential), p(2*pageSize, Integrity)}, 8,
			[]Slot{{0, pageSize, true}, {2 * pageSize, pageSize, true}, {3 * pageSize, 16*M - 3*pageSize, false}, {32 * M, 16 * M, false}}, false},
		{"end of range", []ProtectedPage{p(16*M-pageSize, Confidential), p(48*M-pageSize, Integrity)}, 8,
			[]Slot{{0, 16*M - pageSize, false}, {32 * M, 16*M - pageSize, false}, {48*M - pageSize, pageSize, true}}, false},
		{"too many", []ProtectedPage{p(M, Confidential), p(3*M, Confidential)}, 3, nil, true},
		{"outside RAM", []ProtectedPage{p(20*M, Confidential)}, 8, nil, true},
		{"past the end", []ProtectedPage{p(60*M, Confidential)}, 8, nil, true},
		{"unaligned", []ProtectedPage{p(M+1, Confidential)}, 8, nil, true},
		{"duplicate", []ProtectedPage{p(M, Confidential), p(M, Integrity)}, 8, nil, true},
		{"bad mode", []ProtectedPage{p(M, 0)}, 8, nil, true},
	}
	for _, tt := range tests {
		got, err := Layout(ram, tt.pages, tt.max)
		if (err != nil) != tt.err {
			t.Errorf("%s: err %v", tt.name, err)
			continue
		}
		if !tt.err && !equalSlots(got, tt.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.name, got, tt.want)
		}
	}
}

func equalSlots(a, b []Slot) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRegisterSlotLimit(t *testing.T) {
	e := newEnv(t, 8, Config{MaxSlots: 2})
	// Pages 0 and 2 confidential would split RAM into 3 slots.
	mustRegister(e, userVA, pageSize, Confidential)
	if _, rc := e.register(userVA+2*pageSize, pageSize, Confidential); Errno(-rc) != ENOSPC {
		t.Errorf("slot limit: %d", rc)
	}
	// Adjacent confidential page merges: still 2 slots.
	if _, rc := e.register(userVA+pageSize, pageSize, Confidential); rc != 0 {
		t.Errorf("adjacent: %d", rc)
	}
	s, _, err := e.g.Slots()
	if err != nil || len(s) != 2 {
		t.Errorf("slots %+v %v", s, err)
	}
}

func TestProtected(t *testing.T) {
	e := newEnv(t, 4, Config{})
	mustRegister(e, userVA+pageSize, pageSize, Integrity)
	tests := []struct {
		gpa, n uint64
		want   bool
	}{
		{dataBase, pageSize, false},
		{dataBase, pageSize + 1, true},
		{dataBase + pageSize + 100, 1, true},
		{dataBase + 2*pageSize, 100, false},
		{dataBase, 0, false},
		{^uint64(0) - 10, 100, false},
		{0, ^uint64(0), true},
	}
	for _, tt := range tests {
		if got := e.g.Protected(tt.gpa, tt.n); got != tt.want {
			t.Errorf("Protected(%#x, %#x) = %v", tt.gpa, tt.n, got)
		}
	}
}

func TestRegisterPageSizes(t *testing.T) {
	tests := []struct {
		name string
		la57 bool
		size uint64
	}{
		{"4-level 4K", false, pageSize},
		{"4-level 2M", false, 2 << 20},
		{"5-level 4K", true, pageSize},
		{"5-level 2M", true, 2 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newFakeMem(memSize)
			p := newPT(m, tt.la57, tableBase)
			const va = 0x40000000
			p.mapPage(va, 0x200000, tt.size, userRW)
			g, err := New(Config{Memory: m, RAM: []Range{{0, memSize}}, Logger: quiet()})
			if err != nil {
				t.Fatal(err)
			}
			ctx := userCtx(p.root)
			if tt.la57 {
				ctx.CR4 |= cr4LA57
			}
			// Four pages inside the mapping, from its second page.
			r := g.HandleIO(ctx, Regs{RAX: OpRegister, RBX: va + pageSize, RCX: 4 * pageSize, RSI: uint64(Confidential)})
			want := int64(0)
			if tt.size == pageSize {
				want = -int64(EFAULT) // only one 4K page is mapped
			}
			if int64(r.Regs.RAX) != want {
				t.Fatalf("register: %d, want %d", int64(r.Regs.RAX), want)
			}
			if want != 0 {
				return
			}
			if !g.Protected(0x201000, 4*pageSize) || g.Protected(0x200000, pageSize) || g.Protected(0x205000, pageSize) {
				t.Error("wrong pages protected")
			}
			if n := g.CheckOwners(); n != 0 {
				t.Errorf("live owner released (%d)", n)
			}
		})
	}
}

// TestNewLimits: a VMM cannot configure more regions than
// MaxRegionsLimit; zero means the default.
func TestNewLimits(t *testing.T) {
	m := newFakeMem(memSize)
	for _, tc := range []struct {
		max, want int
		ok        bool
	}{
		{0, DefaultMaxRegions, true},
		{8, 8, true},
		{MaxRegionsLimit, MaxRegionsLimit, true},
		{MaxRegionsLimit + 1, 0, false},
	} {
		g, err := New(Config{Memory: m, RAM: []Range{{0, memSize}}, Logger: quiet(), MaxRegions: tc.max})
		if (err == nil) != tc.ok {
			t.Fatalf("MaxRegions %d: err %v, want ok %v", tc.max, err, tc.ok)
		}
		if err == nil && g.cfg.MaxRegions != tc.want {
			t.Errorf("MaxRegions %d: configured %d, want %d", tc.max, g.cfg.MaxRegions, tc.want)
		}
	}
}
