package memguard_test

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/gvmm/gvmm/memguard"
)

// ram is a toy guest RAM of 8 MiB with one process whose page tables map
// virtual 0x10000 to guest-physical 0x400000.
type ram []byte

func (m ram) ReadAt(p []byte, gpa uint64) error  { copy(p, m[gpa:]); return nil }
func (m ram) WriteAt(p []byte, gpa uint64) error { copy(m[gpa:], p); return nil }

func toyGuest() (ram, uint64) {
	m := make(ram, 8<<20)
	put := func(gpa, v uint64) {
		for i := 0; i < 8; i++ {
			m[gpa+uint64(i)] = byte(v >> (8 * i))
		}
	}
	const pml4, pdpt, pd, pt, rw = 0x100000, 0x101000, 0x102000, 0x103000, 7
	put(pml4, pdpt|rw)
	put(pdpt, pd|rw)
	put(pd, pt|rw)
	put(pt+0x10*8, 0x400000|rw)
	return m, pml4
}

// The VMM's side of protected memory: a request at the port, the slot
// layout to apply, and mediated accesses at MMIO exits.
func Example() {
	mem, cr3 := toyGuest()
	g, _ := memguard.New(memguard.Config{
		Memory: mem,
		RAM:    []memguard.Range{{GPA: 0, Size: 8 << 20}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	owner := memguard.VCPUContext{CR0: 1<<31 | 1, CR3: cr3, CR4: 1 << 5, EFER: 1<<10 | 1<<8, CPL: 3}

	// KVM_EXIT_IO, OUT to memguard.Port: registers in, registers out.
	res := g.HandleIO(owner, memguard.Regs{RAX: memguard.OpRegister, RBX: 0x10000, RCX: 4096, RSI: uint64(memguard.Confidential), RDX: memguard.Port})
	fmt.Println("result", int64(res.Regs.RAX), "region", res.Regs.RBX, "layout changed", res.LayoutChanged)

	// Pause the vCPUs and apply the layout.
	slots, _, _ := g.Slots()
	for _, s := range slots {
		fmt.Printf("slot %#x+%#x read-only=%v\n", s.GPA, s.Size, s.ReadOnly)
	}

	// KVM_EXIT_MMIO at the protected page: the owner writes, the kernel
	// reads.
	g.HandleAccess(owner, 0x400000, []byte("secret!!"), true)
	kernel := owner
	kernel.CPL = 0
	data := make([]byte, 8)
	r := g.HandleAccess(kernel, 0x400000, data, false)
	fmt.Printf("kernel read %q violation=%v\n", data, r.Violation)
	fmt.Println("violations", g.Status().Violations)
	// Output:
	// result 0 region 1 layout changed true
	// slot 0x0+0x400000 read-only=false
	// slot 0x401000+0x3ff000 read-only=false
	// kernel read "\x00\x00\x00\x00\x00\x00\x00\x00" violation=true
	// violations 1
}
