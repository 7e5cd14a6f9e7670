package migration

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// testKey is a fixed test key.
var testKey = []byte("0123456789abcdef0123456789abcdef")

// mmapGuest returns anonymous memory outside the Go heap, as a VMM's guest
// RAM is. The race detector does not watch it, so the fake guest may write
// pages while the sender reads them: the pre-copy race is by design, and the
// dirty log (not a lock) is what makes it correct.
func mmapGuest(t testing.TB, size int) []byte {
	t.Helper()
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		t.Fatalf("mmap %d bytes: %v", size, err)
	}
	t.Cleanup(func() { _ = syscall.Munmap(b) })
	return b
}

// fakeSource is a Source over mmap'd memory split into two regions (at 0
// and at 4 GiB), with a goroutine that dirties pages of a hot set at a
// rate, slowed by Throttle, and stops while paused.
type fakeSource struct {
	mem     []byte
	regions []Region
	rate    int // pages per second, before throttling
	hot     int // the dirtier writes pages [0, hot)

	mu       sync.Mutex // guards everything below, and a write with its dirty bit
	dirty    [][]uint64
	logging  bool
	paused   bool
	pauses   int
	resumes  int
	snapshot []byte // mem at the last Pause
	comps    []Component

	// Hooks, set before the migration starts.
	pauseErr   error
	onSave     func()
	noSnapshot bool // benchmarks: Pause does not copy the guest

	throttle    atomic.Int32
	maxThrottle atomic.Int32
	stop        chan struct{}
	done        chan struct{}
}

func newFakeSource(t testing.TB, size, rate, hot int, seed uint64) *fakeSource {
	t.Helper()
	mem := mmapGuest(t, size)
	rng := rand.New(rand.NewPCG(seed, 7))
	for off := 0; off < size; off += PageSize {
		p := mem[off : off+PageSize]
		switch rng.IntN(4) {
		case 0: // zero
		case 1: // compressible
			for i := 0; i < PageSize; i += 16 {
				copy(p[i:], "guest page text ")
			}
			binary.LittleEndian.PutUint64(p, uint64(off))
		default: // incompressible
			for i := 0; i < PageSize; i += 8 {
				binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
			}
		}
	}
	half := size / 2 / PageSize * PageSize
	f := &fakeSource{
		mem:     mem,
		regions: []Region{{GPA: 0, Data: mem[:half]}, {GPA: 4 << 30, Data: mem[half:]}},
		rate:    rate, hot: min(hot, size/PageSize),
		comps: []Component{
			{ID: "vcpu/0", Data: []byte("registers of vcpu 0")},
			{ID: "vcpu/1", Data: make([]byte, 100<<10)},
			{ID: "virtio-blk/0", Data: nil},
		},
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	for i := range f.comps[1].Data {
		f.comps[1].Data[i] = byte(rng.Uint32())
	}
	f.dirty = make([][]uint64, len(f.regions))
	for i, r := range f.regions {
		f.dirty[i] = make([]uint64, bitmapWords(r))
	}
	go f.dirtier(seed)
	t.Cleanup(f.close)
	return f
}

func (f *fakeSource) close() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
	<-f.done
}

// dirtier writes rate pages a second (less the throttle) in 1 ms steps.
func (f *fakeSource) dirtier(seed uint64) {
	defer close(f.done)
	if f.rate == 0 || f.hot == 0 {
		return
	}
	rng := rand.New(rand.NewPCG(seed, 9))
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var carry float64
	var counter uint64
	for {
		select {
		case <-f.stop:
			return
		case <-tick.C:
		}
		carry += float64(f.rate) / 1000 * float64(100-f.throttle.Load()) / 100
		n := int(carry)
		carry -= float64(n)
		for range n {
			f.mu.Lock()
			if f.paused {
				f.mu.Unlock()
				carry = 0
				break
			}
			counter++
			page := rng.IntN(f.hot)
			off := page*PageSize + rng.IntN(PageSize/8)*8
			binary.LittleEndian.PutUint64(f.mem[off:], counter|1)
			if f.logging {
				f.markDirty(off)
			}
			f.mu.Unlock()
		}
	}
}

// markDirty marks the page holding mem offset off; f.mu held.
func (f *fakeSource) markDirty(off int) {
	for i, r := range f.regions {
		base := len(f.mem) - cap(r.Data) // offset of r.Data in mem
		if off >= base && off < base+len(r.Data) {
			p := (off - base) / PageSize
			f.dirty[i][p/64] |= 1 << (p % 64)
			return
		}
	}
}

func (f *fakeSource) Regions() []Region { return f.regions }

func (f *fakeSource) StartDirtyLog() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logging = true
	for _, m := range f.dirty {
		clear(m)
	}
	return nil
}

func (f *fakeSource) TakeDirty() ([][]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.logging {
		return nil, errors.New("dirty log not started")
	}
	out := make([][]uint64, len(f.dirty))
	for i, m := range f.dirty {
		out[i] = append([]uint64(nil), m...)
		clear(m)
	}
	return out, nil
}

func (f *fakeSource) StopDirtyLog() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logging = false
	return nil
}

func (f *fakeSource) Pause(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pauses++
	if f.pauseErr != nil {
		return f.pauseErr
	}
	f.paused = true
	if !f.noSnapshot {
		f.snapshot = append([]byte(nil), f.mem...)
	}
	return nil
}

func (f *fakeSource) Resume(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resumes++
	f.paused = false
	return nil
}

func (f *fakeSource) SaveState(ctx context.Context) ([]Component, error) {
	f.mu.Lock()
	paused := f.paused
	f.mu.Unlock()
	if !paused {
		return nil, errors.New("save state while running")
	}
	if f.onSave != nil {
		f.onSave()
	}
	return f.comps, nil
}

func (f *fakeSource) Throttle(percent int) {
	f.throttle.Store(int32(percent))
	if int32(percent) > f.maxThrottle.Load() {
		f.maxThrottle.Store(int32(percent))
	}
}

// regionAt returns the snapshot bytes of region i.
func (f *fakeSource) snapshotOf(i int) []byte {
	base := len(f.mem) - cap(f.regions[i].Data)
	return f.snapshot[base : base+len(f.regions[i].Data)]
}

// fakeDest is a Destination over Go memory with the source's layout.
type fakeDest struct {
	regions    []Region
	restoreErr error
	restored   []Component
}

func newFakeDest(src *fakeSource) *fakeDest {
	d := &fakeDest{}
	for _, r := range src.regions {
		b := make([]byte, len(r.Data))
		for i := range b { // garbage the stream must overwrite
			b[i] = 0xa5
		}
		d.regions = append(d.regions, Region{GPA: r.GPA, Data: b})
	}
	return d
}

func (d *fakeDest) Regions() []Region { return d.regions }

func (d *fakeDest) RestoreState(ctx context.Context, comps []Component) error {
	if d.restoreErr != nil {
		return d.restoreErr
	}
	d.restored = comps
	return nil
}

// limitConn writes at most rate bytes per second.
type limitConn struct {
	net.Conn
	p pacer
}

func (c *limitConn) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), 16<<10)
		w, err := c.Conn.Write(b[:k])
		n += w
		if err != nil {
			return n, err
		}
		b = b[k:]
		c.p.pace(w)
	}
	return n, nil
}

// pacer holds a stream of bytes to rate bytes per second.
type pacer struct {
	rate  float64
	start time.Time
	bytes float64
}

// pace accounts for n more bytes and sleeps until they are due.
func (p *pacer) pace(n int) {
	if p.start.IsZero() {
		p.start = time.Now()
	}
	p.bytes += float64(n)
	if d := time.Until(p.start.Add(time.Duration(p.bytes / p.rate * float64(time.Second)))); d > 0 {
		time.Sleep(d)
	}
}

// breakConn fails (and closes the connection) after limit bytes.
type breakConn struct {
	net.Conn
	mu    sync.Mutex
	limit int
}

func (c *breakConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(b) > c.limit {
		n, _ := c.Conn.Write(b[:c.limit])
		c.limit = 0
		_ = c.Conn.Close()
		return n, errors.New("connection broken by the test")
	}
	c.limit -= len(b)
	return c.Conn.Write(b)
}

// wrapListener wraps each accepted connection.
type wrapListener struct {
	net.Listener
	wrap func(net.Conn) net.Conn
}

func (l wrapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.wrap(c), nil
}

// slowReadConn reads at most p.rate bytes per second.
type slowReadConn struct {
	net.Conn
	p pacer
}

func (c *slowReadConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b[:min(len(b), 16<<10)])
	c.p.pace(n)
	return n, err
}
