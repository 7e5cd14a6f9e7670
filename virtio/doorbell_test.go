package virtio_test

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/gvmm/gvmm/virtio"
	"github.com/gvmm/gvmm/virtio/rng"
	"github.com/gvmm/gvmm/virtio/virtiotest"
	"golang.org/x/sys/unix"
)

// waitReturns runs wait and reports its error, failing if it blocks for
// long.
func waitReturns(t *testing.T, wait func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not return")
		return nil
	}
}

// blocks reports whether wait is still blocked after a short while.
func blocks(wait func() error) bool {
	done := make(chan error, 1)
	go func() { done <- wait() }()
	select {
	case <-done:
		return false
	case <-time.After(50 * time.Millisecond):
		return true
	}
}

// TestDoorbell: rings coalesce into one wakeup, an eventfd write (what
// KVM_IOEVENTFD does) rings it, Clear consumes rings, and a closed
// doorbell fails Wait.
func TestDoorbell(t *testing.T) {
	tests := []struct {
		name  string
		rings int
		kvm   bool // write the eventfd as KVM would rather than Ring
		clear bool // consume with Clear (after epoll) rather than Wait
	}{
		{"one ring", 1, false, false},
		{"rings coalesce", 3, false, false},
		{"ioeventfd write", 1, true, false},
		{"cleared", 2, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, err := virtio.NewDoorbell()
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			for range tt.rings {
				if tt.kvm {
					var one [8]byte
					binary.NativeEndian.PutUint64(one[:], 1)
					if _, err := unix.Write(db.FD(), one[:]); err != nil {
						t.Fatal(err)
					}
				} else {
					db.Ring()
				}
			}
			wait := db.Wait
			if tt.clear {
				wait = db.Clear
			}
			if err := waitReturns(t, wait); err != nil {
				t.Fatal(err)
			}
			if !blocks(db.Wait) {
				t.Fatal("a second Wait returned: the rings were not consumed")
			}
			db.Ring() // ends the blocked Wait
		})
	}
	t.Run("closed", func(t *testing.T) {
		db, err := virtio.NewDoorbell()
		if err != nil {
			t.Fatal(err)
		}
		db.Close()
		if err := waitReturns(t, db.Wait); err == nil {
			t.Fatal("Wait on a closed doorbell succeeded")
		}
		db.Ring() // a no-op, not a panic
	})
}

// TestKick: with and without a doorbell, Notify before Wait is not lost,
// Wait blocks without one, and the end of the context ends Wait.
func TestKick(t *testing.T) {
	for _, withDB := range []bool{false, true} {
		name := map[bool]string{false: "channel", true: "doorbell"}[withDB]
		t.Run(name, func(t *testing.T) {
			env := &virtio.Env{}
			if withDB {
				db, err := virtio.NewDoorbell()
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				env.Doorbells = []*virtio.Doorbell{nil, db}
			}
			ctx, cancel := context.WithCancel(context.Background())
			k := virtio.NewKick(ctx, env, 1)
			wait := func() error { return k.Wait(ctx) }
			k.Notify()
			k.Notify()
			if err := waitReturns(t, wait); err != nil {
				t.Fatal(err)
			}
			if !blocks(wait) {
				t.Fatal("Wait returned with no notification pending")
			}
			k.Notify() // ends the blocked Wait
			cancel()
			if err := waitReturns(t, wait); !errors.Is(err, context.Canceled) {
				t.Fatalf("Wait after cancel = %v, want %v", err, context.Canceled)
			}
		})
	}
}

// TestPCIDoorbells: a queue's worker is woken by its doorbell alone, as
// when KVM signals the ioeventfd, and by a notification that came as an
// MMIO write; a wrong number of doorbells is refused.
func TestPCIDoorbells(t *testing.T) {
	mem := virtiotest.NewMemory(memBase, memSize)
	// An eventfd write is no synchronization the race detector sees.
	mem.SnapshotReads = true
	db, err := virtio.NewDoorbell()
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := virtio.NewPCI(rng.New(nil), mem, &fakeIRQ{}, virtio.PCIOptions{
		BARAddr: 0xe000_0000, Doorbells: []*virtio.Doorbell{db, db},
	}); err == nil {
		t.Fatal("NewPCI took two doorbells for one queue")
	}
	p, err := virtio.NewPCI(rng.New(nil), mem, &fakeIRQ{}, virtio.PCIOptions{
		BARAddr: 0xe000_0000, Doorbells: []*virtio.Doorbell{db},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	f := fn{t, p}
	d := virtiotest.NewDriver(mem, 16)
	buf := d.Alloc(32)
	f.negotiate(virtio.FVersion1 | virtio.FEventIdx)
	f.setupQueue(0, d, virtio.NoVector)
	f.bw(ccStatus, 1, uint64(f.status()|virtio.StatusDriverOK))
	time.Sleep(10 * time.Millisecond) // let the worker's first drain pass

	d.AddChain(virtiotest.Buf{Addr: buf, Len: 32, Write: true})
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	if _, err := unix.Write(db.FD(), one[:]); err != nil { // KVM's ioeventfd
		t.Fatal(err)
	}
	waitUsed(t, d, 1)

	d.AddChain(virtiotest.Buf{Addr: buf, Len: 32, Write: true})
	f.bw(0x3000, 2, 0) // notify queue 0 through the BAR
	waitUsed(t, d, 2)

	// After a reset and a new activation the doorbell still wakes it.
	f.bw(ccStatus, 1, 0)
	d = virtiotest.NewDriver(mem, 16) // the same rings, from index 0
	d.SetAvailIdx(0)
	buf = d.Alloc(32)
	f.negotiate(virtio.FVersion1)
	f.setupQueue(0, d, virtio.NoVector)
	f.bw(ccStatus, 1, uint64(f.status()|virtio.StatusDriverOK))
	time.Sleep(10 * time.Millisecond)
	d.AddChain(virtiotest.Buf{Addr: buf, Len: 32, Write: true})
	if _, err := unix.Write(db.FD(), one[:]); err != nil {
		t.Fatal(err)
	}
	waitUsed(t, d, 1)
}
