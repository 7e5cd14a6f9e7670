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
