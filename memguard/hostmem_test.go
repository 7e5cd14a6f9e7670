package memguard

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSecret(t *testing.T) {
	tests := []struct {
		n  int
		ok bool
	}{{1, true}, {4096, true}, {10000, true}, {0, false}, {-1, false}, {1 << 31, false}}
	for _, tt := range tests {
		s, err := NewSecret(tt.n)
		if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.EPERM) {
			t.Skipf("mlock limit too low here: %v", err)
		}
		if (err == nil) != tt.ok {
			t.Fatalf("NewSecret(%d): %v", tt.n, err)
		}
		if err != nil {
			continue
		}
		b := s.Bytes()
		if len(b) != tt.n {
			t.Fatalf("len %d", len(b))
		}
		copy(b, "key material")
		if err := s.Destroy(); err != nil {
			t.Fatal(err)
		}
		if s.Bytes() != nil || s.Destroy() != nil {
			t.Error("destroy not idempotent")
		}
	}
}

// hostFake is a fakeMem that shows its host mapping, so pages get locked.
type hostFake struct{ *fakeMem }

func (h hostFake) Slice(gpa, n uint64) ([]byte, error) {
	if gpa+n > uint64(len(h.b)) {
		return nil, errors.New("out of range")
	}
	return h.b[gpa : gpa+n], nil
}

func TestRegionLocked(t *testing.T) {
	e := newEnv(t, 2, Config{})
	g, err := New(Config{Memory: hostFake{e.m}, RAM: []Range{{0, memSize}}, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	r := g.HandleIO(e.ctx, Regs{RAX: OpRegister, RBX: userVA, RCX: 2 * pageSize, RSI: uint64(Confidential)})
	if r.Regs.RAX != 0 {
		t.Fatalf("register %d", int64(r.Regs.RAX))
	}
	s := g.Status()
	if !s.Regions[0].Locked {
		t.Skip("mlock refused here (RLIMIT_MEMLOCK)")
	}
	if r := g.HandleIO(e.ctx, Regs{RAX: OpUnregister, RBX: r.Regs.RBX}); r.Regs.RAX != 0 {
		t.Fatal("unregister")
	}
}

// TestDeferHostLock: with Config.DeferHostLock nothing is locked or
// unlocked until SyncHost, and a region released before SyncHost leaves
// nothing to do.
func TestDeferHostLock(t *testing.T) {
	tests := []struct {
		name        string
		syncBetween bool // SyncHost between register and unregister
		wantPending bool // after unregister
	}{
		{"synced, then released", true, true},
		{"released before sync", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, 2, Config{})
			g, err := New(Config{Memory: hostFake{e.m}, RAM: []Range{{0, memSize}}, Logger: quiet(), DeferHostLock: true})
			if err != nil {
				t.Fatal(err)
			}
			if g.HostPending() {
				t.Fatal("a new guard has host work pending")
			}
			r := g.HandleIO(e.ctx, Regs{RAX: OpRegister, RBX: userVA, RCX: 2 * pageSize, RSI: uint64(Confidential)})
			if r.Regs.RAX != 0 {
				t.Fatalf("register %d", int64(r.Regs.RAX))
			}
			if g.Status().Regions[0].Locked {
				t.Fatal("locked at registration despite DeferHostLock")
			}
			if !g.HostPending() {
				t.Fatal("no host lock pending after a registration")
			}
			if tt.syncBetween {
				g.SyncHost()
				if g.HostPending() {
					t.Fatal("host work pending after SyncHost")
				}
				if !g.Status().Regions[0].Locked {
					t.Skip("mlock refused here (RLIMIT_MEMLOCK)")
				}
			}
			if r := g.HandleIO(e.ctx, Regs{RAX: OpUnregister, RBX: r.Regs.RBX}); r.Regs.RAX != 0 {
				t.Fatal("unregister")
			}
			if got := g.HostPending(); got != tt.wantPending {
				t.Fatalf("pending after unregister = %v, want %v", got, tt.wantPending)
			}
			g.SyncHost()
			if g.HostPending() {
				t.Fatal("host work pending after the last SyncHost")
			}
		})
	}
}

func TestLockUnits(t *testing.T) {
	const mib = 1 << 20
	ram := []Range{{0, 3 * mib}, {4 * mib, 5 * mib}}
	tests := []struct {
		name  string
		pages []uint64
		want  []Range
	}{
		{"one page", []uint64{mib}, []Range{{0, 2 * mib}}},
		{"two pages of one block", []uint64{0x1ff000, 0x3000}, []Range{{0, 2 * mib}}},
		{"block clipped at the end of RAM", []uint64{2*mib + 0x5000}, []Range{{2 * mib, mib}}},
		{"block clipped at the start of a range", []uint64{4 * mib}, []Range{{4 * mib, 2 * mib}}},
		{"blocks in order", []uint64{8 * mib, 0x1000, 6 * mib}, []Range{{0, 2 * mib}, {6 * mib, 2 * mib}, {8 * mib, mib}}},
		{"outside RAM", []uint64{3 * mib}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := lockUnits(ram, tt.pages)
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// TestSharedLockUnit: two regions in one 2 MiB block lock it once; it
// stays locked until the second is released.
func TestSharedLockUnit(t *testing.T) {
	e := newEnv(t, 4, Config{})
	g, err := New(Config{Memory: hostFake{e.m}, RAM: []Range{{0, memSize}}, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for i := uint64(0); i < 2; i++ {
		r := g.HandleIO(e.ctx, Regs{RAX: OpRegister, RBX: userVA + i*pageSize, RCX: pageSize, RSI: uint64(Confidential)})
		if r.Regs.RAX != 0 {
			t.Fatalf("register %d: %d", i, int64(r.Regs.RAX))
		}
		ids = append(ids, r.Regs.RBX)
	}
	if !g.Status().Regions[0].Locked {
		t.Skip("mlock refused here (RLIMIT_MEMLOCK)")
	}
	uses := func() (n int) {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, c := range g.hostLocks {
			n += c
		}
		return n
	}
	if len(g.hostLocks) != 1 || uses() != 2 {
		t.Fatalf("lock units %v, want one block used twice", g.hostLocks)
	}
	for i, id := range ids {
		if r := g.HandleIO(e.ctx, Regs{RAX: OpUnregister, RBX: id}); r.Regs.RAX != 0 {
			t.Fatalf("unregister %d", id)
		}
		if got, want := uses(), 1-i; got != want {
			t.Fatalf("after %d releases: %d uses, want %d", i+1, got, want)
		}
	}
	if len(g.hostLocks) != 0 {
		t.Fatalf("lock units left: %v", g.hostLocks)
	}
}
