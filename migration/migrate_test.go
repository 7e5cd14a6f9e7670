package migration

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gvmm/gvmm/migration/stream"
)

// outcome is what one migration did on both sides.
type outcome struct {
	stats    Stats
	err      error
	res      Result
	dstErr   error
	progress []Progress
}

type setup struct {
	dest    Destination // instead of the fakeDest, when set
	conns   int
	opts    Options
	ropts   ReceiveOptions
	dstKey  []byte
	wrap    func(i int, c net.Conn) net.Conn // source side
	wrapDst func(c net.Conn) net.Conn        // destination side
	ctx     context.Context
	timeout time.Duration // of the whole test run
}

// migrate runs Migrate from src to dst over loopback TCP.
func migrate(t *testing.T, src *fakeSource, dst *fakeDest, s setup) outcome {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx := s.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	if s.timeout == 0 {
		s.timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if s.conns == 0 {
		s.conns = 2
	}
	key := testKey
	dkey := s.dstKey
	if dkey == nil {
		dkey = key
	}
	var o outcome
	var wg sync.WaitGroup
	wg.Go(func() {
		// The destination has its own context: it must end because the
		// source went away, not because the test's context ended.
		dctx, dcancel := context.WithTimeout(context.Background(), s.timeout)
		defer dcancel()
		var d Destination = dst
		if s.dest != nil {
			d = s.dest
		}
		if s.ropts.Prepare != nil {
			d = nil
		}
		var l net.Listener = ln
		if s.wrapDst != nil {
			l = wrapListener{ln, s.wrapDst}
		}
		o.res, o.dstErr = Receive(dctx, l, dkey, d, s.ropts)
	})
	conns := make([]net.Conn, s.conns)
	for i := range conns {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if s.wrap != nil {
			c = s.wrap(i, c)
		}
		conns[i] = c
	}
	var mu sync.Mutex
	opts := s.opts
	opts.Progress = func(p Progress) {
		mu.Lock()
		o.progress = append(o.progress, p)
		mu.Unlock()
	}
	o.stats, o.err = Migrate(ctx, src, conns, key, opts)
	wg.Wait()
	return o
}

// checkSuccess checks a migration that must have succeeded.
func checkSuccess(t *testing.T, src *fakeSource, dst *fakeDest, o outcome) {
	t.Helper()
	if o.err != nil || o.dstErr != nil {
		t.Fatalf("migrate: %v; receive: %v", o.err, o.dstErr)
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	if !src.paused || src.resumes != 0 {
		t.Errorf("source after success: paused %v, resumed %d times; want paused, never resumed", src.paused, src.resumes)
	}
	if src.logging || src.throttle.Load() != 0 {
		t.Errorf("source after success: dirty log %v, throttle %d; want both off", src.logging, src.throttle.Load())
	}
	for i := range src.regions {
		want, got := src.snapshotOf(i), dst.regions[i].Data
		if !bytes.Equal(want, got) {
			for p := 0; p < len(want); p += PageSize {
				if !bytes.Equal(want[p:p+PageSize], got[p:p+PageSize]) {
					t.Fatalf("region %d page %#x differs from the source at Pause", i, p)
				}
			}
		}
	}
	if len(dst.restored) != len(src.comps) {
		t.Fatalf("restored %d components, want %d", len(dst.restored), len(src.comps))
	}
	for i, c := range src.comps {
		if dst.restored[i].ID != c.ID || !bytes.Equal(dst.restored[i].Data, c.Data) {
			t.Errorf("component %d: got %q (%d bytes), want %q (%d bytes)", i, dst.restored[i].ID, len(dst.restored[i].Data), c.ID, len(c.Data))
		}
	}
	st := o.stats
	if sum := st.Pause + st.FinalPass + st.StateSave + st.StateSend + st.AckWait; st.Downtime <= 0 || sum > st.Downtime+time.Millisecond {
		t.Errorf("downtime %v, its parts add up to %v", st.Downtime, sum)
	}
	if st.Components != len(src.comps) || st.WireBytes == 0 || st.Pages+st.ZeroPages < uint64(len(src.mem)/PageSize) {
		t.Errorf("stats %+v", st)
	}
	// The ack is read as it arrives, which can be before the source's
	// Finish returned: the restore then overlaps StateSend.
	if o.res.Restore > st.StateSend+st.AckWait {
		t.Errorf("destination restore %v longer than the source's state send and ack wait %v", o.res.Restore, st.StateSend+st.AckWait)
	}
	if n := len(o.progress); n == 0 || o.progress[n-1].Phase != PhaseDone {
		t.Errorf("progress reports: %d, last not PhaseDone", n)
	}
	t.Logf("passes %d, throttle %d%%, downtime %v (pause %v, final %d pages %v, save %v, send %v, ack %v [restore %v]), total %v, %.1f MB on the wire",
		st.Passes, st.Throttle, st.Downtime, st.Pause, st.FinalDirty, st.FinalPass, st.StateSave, st.StateSend, st.AckWait, o.res.Restore, st.Total, float64(st.WireBytes)/1e6)
}

// checkFailure checks a migration that must have failed on both sides and
// left the source running.
func checkFailure(t *testing.T, src *fakeSource, o outcome, want error) {
	t.Helper()
	if o.err == nil {
		t.Fatalf("migrate succeeded, want an error")
	}
	if want != nil && !errors.Is(o.err, want) {
		t.Errorf("migrate: %v; want %v", o.err, want)
	}
	if o.dstErr == nil {
		t.Errorf("receive succeeded after a failed migration")
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.paused {
		t.Errorf("source left paused")
	}
	if src.resumes != src.pauses {
		t.Errorf("source paused %d times, resumed %d times", src.pauses, src.resumes)
	}
	if src.logging || src.throttle.Load() != 0 {
		t.Errorf("source after failure: dirty log %v, throttle %d; want both off", src.logging, src.throttle.Load())
	}
	t.Logf("source: %v\ndestination: %v", o.err, o.dstErr)
}

func TestMigrateConverges(t *testing.T) {
	const mb = 1 << 20
	tests := []struct {
		name         string
		size         int
		rate, hot    int
		conns        int
		link         float64 // bytes per second on each connection; 0: unlimited
		opts         Options
		maxPasses    int
		wantThrottle bool
	}{
		{name: "idle", size: 8 * mb, conns: 2, maxPasses: 2},
		{name: "idle-one-conn", size: 4 * mb, conns: 1, maxPasses: 2},
		{name: "light-writer", size: 8 * mb, rate: 2000, hot: 256, conns: 2, maxPasses: 10},
		{name: "compression-off", size: 4 * mb, rate: 1000, hot: 128, conns: 3, opts: Options{Compression: stream.CompressOff}, maxPasses: 10},
		{
			// 40000 pages/s against 2 × 16 MiB/s (8192 pages/s): only
			// throttling above ~80 % lets it converge. Compression off:
			// on this slow link it would shrink the hot pages enough to
			// converge without throttling, now and then.
			name: "throttled", size: 8 * mb, rate: 40000, hot: 1024, conns: 2, link: 16 * mb,
			opts: Options{MaxDowntime: 30 * time.Millisecond, Compression: stream.CompressOff}, maxPasses: 40, wantThrottle: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := newFakeSource(t, tc.size, tc.rate, tc.hot, 1)
			dst := newFakeDest(src)
			s := setup{conns: tc.conns, opts: tc.opts}
			if tc.link > 0 {
				s.wrap = func(_ int, c net.Conn) net.Conn { return &limitConn{Conn: c, p: pacer{rate: tc.link}} }
			}
			o := migrate(t, src, dst, s)
			checkSuccess(t, src, dst, o)
			if o.stats.Passes > tc.maxPasses {
				t.Errorf("%d passes, want at most %d", o.stats.Passes, tc.maxPasses)
			}
			if got := o.stats.Throttle > 0; got != tc.wantThrottle {
				t.Errorf("throttle reached %d%%, want throttling %v", o.stats.Throttle, tc.wantThrottle)
			}
		})
	}
}

// Once the dirty set fits the budget, another pass runs only while passes
// keep halving it, it is above smallDirtyPages and fewer than refinePasses
// have run for that.
func TestSwitchNow(t *testing.T) {
	for _, tc := range []struct {
		name            string
		dirty, lastSent uint64
		refined         int
		want            bool
	}{
		{"idle after the full pass", 3, 65536, 0, true},
		{"few pages left", smallDirtyPages, 65536, 0, true},
		{"halved: one more pass", 159, 65536, 0, false},
		{"halved again", 70, 159, 1, false},
		{"did not halve", 100, 159, 1, true},
		{"refined enough", 500, 65536, refinePasses, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := switchNow(tc.dirty, tc.lastSent, tc.refined); got != tc.want {
				t.Errorf("switchNow(%d, %d, %d) = %v, want %v", tc.dirty, tc.lastSent, tc.refined, got, tc.want)
			}
		})
	}
}

// zeroedDest is a fakeDest that claims its memory started zero.
type zeroedDest struct{ *fakeDest }

func (zeroedDest) MemoryIsZero() bool { return true }

// With a ZeroedDestination only pages the stream wrote are zeroed by a
// zero run: a page it never wrote is left alone (the marker below shows
// it, in memory that breaks the promise on purpose), one it wrote is
// cleared.
func TestReceiveZeroesOnlyWrittenPages(t *testing.T) {
	const pages = 200
	mem := make([]byte, pages*PageSize)
	for i := range mem {
		mem[i] = 0xa5
	}
	hi := make([]byte, 8*PageSize) // a second region, above a hole
	dst := zeroedDest{&fakeDest{regions: []Region{{GPA: 0, Data: mem}, {GPA: 1 << 20, Data: hi}}}}
	var rm regionMemory
	if err := rm.setDest(dst); err != nil {
		t.Fatal(err)
	}
	page := bytes.Repeat([]byte{7}, PageSize)
	for _, p := range []uint64{3, 64, 130, 199} {
		if err := rm.WritePage(p*PageSize, page); err != nil {
			t.Fatal(err)
		}
	}
	if err := rm.WritePage(1<<20+2*PageSize, page); err != nil {
		t.Fatal(err)
	}
	if err := rm.ZeroPages(0, pages); err != nil {
		t.Fatal(err)
	}
	if err := rm.ZeroPages(1<<20, 8); err != nil {
		t.Fatal(err)
	}
	for p := uint64(0); p < pages; p++ {
		got := mem[p*PageSize : (p+1)*PageSize]
		want := byte(0xa5) // never written: left alone
		switch p {
		case 3, 64, 130, 199:
			want = 0
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{want}, PageSize)) {
			t.Fatalf("page %d holds %#x..., want all %#x", p, got[0], want)
		}
	}
	if !bytes.Equal(hi, make([]byte, len(hi))) {
		t.Fatal("the written page of the second region was not zeroed")
	}
	if err := rm.ZeroPages(pages*PageSize, 1); err == nil {
		t.Fatal("a zero run outside every region was accepted")
	}

	// A destination that makes no such promise has every page zeroed.
	for i := range mem {
		mem[i] = 0xa5
	}
	var plain regionMemory
	if err := plain.setDest(dst.fakeDest); err != nil {
		t.Fatal(err)
	}
	if err := plain.ZeroPages(0, pages); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem, make([]byte, len(mem))) {
		t.Fatal("a plain destination was not zeroed")
	}
}

// A migration into a ZeroedDestination (fresh memory) ends with the
// source's memory, zero pages included.
func TestMigrateIntoZeroedMemory(t *testing.T) {
	src := newFakeSource(t, 8<<20, 2000, 256, 5)
	fd := newFakeDest(src)
	for _, r := range fd.regions {
		clear(r.Data)
	}
	o := migrate(t, src, fd, setup{conns: 2, dest: zeroedDest{fd}})
	checkSuccess(t, src, fd, o)
}

func TestMigrateFails(t *testing.T) {
	const mb = 1 << 20
	errPause := errors.New("device would not quiesce")
	errRestore := errors.New("restore refused")
	tests := []struct {
		name    string
		rate    int
		link    float64
		opts    Options
		setup   func(*testing.T, *fakeSource, *fakeDest, *setup)
		want    error
		paused  bool // the source must have been paused (and resumed)
		dstWant error
	}{
		{
			name: "timeout", rate: 100000, link: 8 * mb,
			opts: Options{NoThrottle: true, Timeout: 400 * time.Millisecond, MaxDowntime: time.Millisecond},
			want: ErrTimeout,
		},
		{
			name: "no-convergence", rate: 100000, link: 8 * mb,
			opts: Options{NoThrottle: true, MaxPasses: 3, MaxDowntime: time.Millisecond},
			want: ErrNoConvergence,
		},
		{
			name: "restore-fails",
			setup: func(_ *testing.T, _ *fakeSource, d *fakeDest, _ *setup) {
				d.restoreErr = errRestore
			},
			paused: true, dstWant: errRestore,
		},
		{
			name: "pause-fails",
			setup: func(_ *testing.T, f *fakeSource, _ *fakeDest, _ *setup) {
				f.pauseErr = errPause
			},
			want: errPause,
		},
		{
			name: "broken-connection",
			setup: func(_ *testing.T, _ *fakeSource, _ *fakeDest, s *setup) {
				s.wrap = func(i int, c net.Conn) net.Conn {
					if i == 1 {
						return &breakConn{Conn: c, limit: 1 << 20}
					}
					return c
				}
			},
		},
		{
			name: "wrong-key",
			setup: func(_ *testing.T, _ *fakeSource, _ *fakeDest, s *setup) {
				s.dstKey = bytes.Repeat([]byte{7}, 32)
			},
			want: ErrDestinationClosed, dstWant: stream.ErrAuth,
		},
		{
			name: "cpu-refused",
			opts: Options{CPU: []byte("cpuid of a newer CPU")},
			setup: func(_ *testing.T, _ *fakeSource, _ *fakeDest, s *setup) {
				s.ropts.CheckCPU = func(b []byte) error {
					if string(b) != "cpuid of a newer CPU" {
						return errors.New("CPU record not passed through")
					}
					return errors.New("AVX-512 missing here")
				}
			},
			want: ErrDestinationClosed, dstWant: stream.ErrCPU,
		},
		{
			name: "prepare-fails",
			opts: Options{CPU: []byte("machine description")},
			setup: func(_ *testing.T, _ *fakeSource, _ *fakeDest, s *setup) {
				s.ropts.Prepare = func([]byte) (Destination, error) { return nil, errors.New("no memory for that machine") }
			},
			want: ErrDestinationClosed, dstWant: stream.ErrCPU,
		},
		{
			name: "prepared-layout-differs",
			setup: func(_ *testing.T, _ *fakeSource, d *fakeDest, s *setup) {
				d.regions = d.regions[:1]
				s.ropts.Prepare = func([]byte) (Destination, error) { return d, nil }
			},
			want: ErrDestinationClosed, dstWant: ErrLayout,
		},
		{
			name: "layout-differs",
			setup: func(_ *testing.T, _ *fakeSource, d *fakeDest, _ *setup) {
				d.regions[1].GPA += PageSize
			},
			want: ErrDestinationClosed, dstWant: ErrLayout,
		},
		{
			name: "cancel-during-precopy", rate: 100000, link: 8 * mb,
			opts: Options{NoThrottle: true, MaxDowntime: time.Millisecond},
			setup: func(_ *testing.T, _ *fakeSource, _ *fakeDest, s *setup) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(300*time.Millisecond, cancel)
				s.ctx = ctx
			},
			want: context.Canceled,
		},
		{
			name: "cancel-during-blackout",
			setup: func(t *testing.T, f *fakeSource, _ *fakeDest, s *setup) {
				ctx, cancel := context.WithCancel(context.Background())
				t.Cleanup(cancel)
				f.onSave = cancel
				s.ctx = ctx
			},
			want: context.Canceled, paused: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := newFakeSource(t, 8<<20, tc.rate, 2048, 2)
			dst := newFakeDest(src)
			s := setup{conns: 2, opts: tc.opts}
			if tc.link > 0 {
				s.wrap = func(_ int, c net.Conn) net.Conn { return &limitConn{Conn: c, p: pacer{rate: tc.link}} }
			}
			if tc.setup != nil {
				tc.setup(t, src, dst, &s)
			}
			start := time.Now()
			o := migrate(t, src, dst, s)
			checkFailure(t, src, o, tc.want)
			if tc.dstWant != nil && !errors.Is(o.dstErr, tc.dstWant) {
				t.Errorf("receive: %v; want %v", o.dstErr, tc.dstWant)
			}
			if tc.paused && src.pauses == 0 {
				t.Errorf("source was never paused")
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func TestCountDirty(t *testing.T) {
	regs := []Region{{GPA: 0, Data: make([]byte, 70*PageSize)}, {GPA: 1 << 30, Data: make([]byte, 64*PageSize)}}
	tests := []struct {
		name string
		maps [][]uint64
		want uint64
		ok   bool
	}{
		{"empty", [][]uint64{{0, 0}, {0}}, 0, true},
		{"some", [][]uint64{{0b1011, 1 << 5}, {1 << 63}}, 5, true},
		{"last-valid-bit", [][]uint64{{0, 1 << 5}, {0}}, 1, true},
		{"bit-past-end", [][]uint64{{0, 1 << 6}, {0}}, 0, false},
		{"short-bitmap", [][]uint64{{0}, {0}}, 0, false},
		{"missing-region", [][]uint64{{0, 0}}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := countDirty(regs, tc.maps)
			if (err == nil) != tc.ok || n != tc.want {
				t.Fatalf("countDirty = %d, %v; want %d, ok %v", n, err, tc.want, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrDirtyBitmap) {
				t.Errorf("error %v is not ErrDirtyBitmap", err)
			}
		})
	}
}

func TestCheckRegions(t *testing.T) {
	p := func(n int) []byte { return make([]byte, n*PageSize) }
	tests := []struct {
		name string
		regs []Region
		ok   bool
		size uint64
	}{
		{"one", []Region{{0, p(4)}}, true, 4 * PageSize},
		{"unsorted", []Region{{1 << 32, p(1)}, {0, p(2)}}, true, 1<<32 + PageSize},
		{"none", nil, false, 0},
		{"empty-region", []Region{{0, nil}}, false, 0},
		{"unaligned-gpa", []Region{{100, p(1)}}, false, 0},
		{"unaligned-size", []Region{{0, make([]byte, 100)}}, false, 0},
		{"overlap", []Region{{0, p(2)}, {PageSize, p(2)}}, false, 0},
		{"wrap", []Region{{^uint64(0) - PageSize + 1, p(2)}}, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := checkRegions(tc.regs)
			if (err == nil) != tc.ok || l.size != tc.size {
				t.Fatalf("checkRegions = size %#x, %v; want size %#x, ok %v", l.size, err, tc.size, tc.ok)
			}
		})
	}
}

// TestReceivePrepare builds the destination from the source's CPU record,
// as a destination that learns the machine from the source does.
func TestReceivePrepare(t *testing.T) {
	src := newFakeSource(t, 4<<20, 500, 64, 3)
	dst := newFakeDest(src)
	var got []byte
	s := setup{opts: Options{CPU: []byte("2 vCPUs, 4 MiB")}}
	s.ropts.CheckCPU = func(b []byte) error {
		if got != nil {
			return errors.New("CheckCPU after Prepare")
		}
		return nil
	}
	s.ropts.Prepare = func(b []byte) (Destination, error) {
		got = append([]byte(nil), b...)
		return dst, nil
	}
	o := migrate(t, src, dst, s)
	checkSuccess(t, src, dst, o)
	if string(got) != "2 vCPUs, 4 MiB" || string(o.res.CPU) != "2 vCPUs, 4 MiB" {
		t.Errorf("Prepare saw %q, Result.CPU %q", got, o.res.CPU)
	}
}

func TestReceiveNeedsOneDestination(t *testing.T) {
	prep := func([]byte) (Destination, error) { return nil, nil }
	for _, tc := range []struct {
		name string
		dst  Destination
		opts ReceiveOptions
	}{
		{"neither", nil, ReceiveOptions{}},
		{"both", &fakeDest{}, ReceiveOptions{Prepare: prep}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Receive(context.Background(), nil, testKey, tc.dst, tc.opts); err == nil {
				t.Fatal("Receive accepted it")
			}
		})
	}
}

// TestMigrateWaitsForSlowDestination checks that pre-copy waits, the guest
// still running, for a destination that reads more slowly than the source
// writes, instead of leaving the sockets' backlog to the blackout.
func TestMigrateWaitsForSlowDestination(t *testing.T) {
	src := newFakeSource(t, 8<<20, 0, 0, 3)
	dst := newFakeDest(src)
	o := migrate(t, src, dst, setup{
		conns:   2,
		wrapDst: func(c net.Conn) net.Conn { return &slowReadConn{Conn: c, p: pacer{rate: 16 << 20}} },
	})
	checkSuccess(t, src, dst, o)
	if o.stats.CatchUp <= 0 {
		t.Errorf("pre-copy did not wait for a destination reading at 16 MiB/s per connection (catch-up %v)", o.stats.CatchUp)
	}
	t.Logf("caught up for %v before the blackout", o.stats.CatchUp)
}
