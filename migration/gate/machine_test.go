package gate

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gvmm/gvmm/migration"
	"github.com/gvmm/gvmm/policy"
)

// fakeMachine is a running guest for migration.Migrate: static memory, a
// record of pauses and resumes.
type fakeMachine struct {
	mem []byte

	mu      sync.Mutex
	running bool
	pauses  int
	resumes int
}

const fakeMem = 64 * migration.PageSize

func newFakeMachine() *fakeMachine {
	m := &fakeMachine{mem: make([]byte, fakeMem), running: true}
	rand.Read(m.mem[:fakeMem/2]) // half random, half zero pages
	return m
}

func (m *fakeMachine) Regions() []migration.Region {
	return []migration.Region{{GPA: 0, Data: m.mem}}
}
func (m *fakeMachine) StartDirtyLog() error { return nil }
func (m *fakeMachine) TakeDirty() ([][]uint64, error) {
	return [][]uint64{make([]uint64, (fakeMem/migration.PageSize+63)/64)}, nil
}
func (m *fakeMachine) StopDirtyLog() error { return nil }
func (m *fakeMachine) Pause(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.running = false
	m.pauses++
	return nil
}
func (m *fakeMachine) Resume(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.running = true
	m.resumes++
	return nil
}
func (m *fakeMachine) SaveState(context.Context) ([]migration.Component, error) {
	return []migration.Component{{ID: "cpu/0", Data: []byte("vcpu state")}}, nil
}
func (m *fakeMachine) Throttle(int) {}

// neverPaused reports whether the guest ran throughout.
func (m *fakeMachine) neverPaused() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.running && m.pauses == 0
}

// fakeDest receives into memory of the same layout.
type fakeDest struct {
	mem   []byte
	comps []migration.Component
}

func newFakeDest() *fakeDest { return &fakeDest{mem: make([]byte, fakeMem)} }

func (d *fakeDest) Regions() []migration.Region { return []migration.Region{{GPA: 0, Data: d.mem}} }
func (d *fakeDest) RestoreState(_ context.Context, c []migration.Component) error {
	d.comps = c
	return nil
}

// attempt is one migration, gate and stream, between two test hosts.
type attempt struct {
	out    *Outcome
	srcErr error // the gate's or Migrate's
	acc    *Accepted
	dstErr error // the gate's or Receive's
	vm     *fakeMachine
	dst    *fakeDest
	stats  migration.Stats
}

// runAttempt runs one migration of a fresh fake guest: the destination
// accepts on ln and receives; the source authorizes with a, handshakes
// with addr and, if a key was released, migrates over connections to
// dataAddr (the destination's address unless a test interposes).
func runAttempt(t testing.TB, ctx context.Context, a func() (*Outcome, error), d *Destination, ln net.Listener, dataAddr string) *attempt {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	at := &attempt{vm: newFakeMachine(), dst: newFakeDest()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		acc, err := d.Accept(ctx, ln)
		at.acc = acc
		if err != nil {
			at.dstErr = err
			return
		}
		_, at.dstErr = migration.Receive(ctx, ln, acc.Key.Bytes(), at.dst, migration.ReceiveOptions{})
	}()
	at.out, at.srcErr = a()
	if at.srcErr == nil {
		conns, err := dialN(ctx, dataAddr, 2)
		if err != nil {
			at.srcErr = err
		} else {
			at.stats, at.srcErr = migration.Migrate(ctx, at.vm, conns, at.out.Key.Bytes(), migration.Options{})
		}
	}
	if r, ok := isRefused(at.srcErr); ok && !r.Remote && r.Decision.Stage == policy.StagePrecheck && r.Decision.Rule != "mutual-tls" {
		// Refused before the destination was contacted: it still waits.
		cancel()
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cancel() // a destination still waiting for a source that gave up
		<-done
	}
	t.Cleanup(func() {
		if at.out != nil && at.out.Key != nil {
			at.out.Key.Destroy()
		}
		if at.acc != nil && at.acc.Key != nil {
			at.acc.Key.Destroy()
		}
	})
	return at
}

func dialN(ctx context.Context, addr string, n int) ([]net.Conn, error) {
	var conns []net.Conn
	var d net.Dialer
	for i := 0; i < n; i++ {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// arrived reports whether the destination holds the guest's memory.
func (at *attempt) arrived() bool {
	return at.srcErr == nil && at.dstErr == nil && bytes.Equal(at.vm.mem, at.dst.mem) && len(at.dst.comps) == 1
}

// refusedKeepsRunning checks a refused attempt: a RefusedError, nothing
// released, the guest never paused.
func (at *attempt) refusedKeepsRunning(t testing.TB) *RefusedError {
	t.Helper()
	r, ok := isRefused(at.srcErr)
	if !ok {
		t.Fatalf("source error %v, want a refusal", at.srcErr)
	}
	if at.out != nil {
		t.Fatalf("a refused handshake returned an outcome")
	}
	if !at.vm.neverPaused() {
		t.Fatalf("the source guest was paused by a refused migration")
	}
	if at.dstErr == nil {
		t.Fatalf("the destination received a refused migration")
	}
	return r
}
