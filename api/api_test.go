package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

type fakeMachine struct {
	mu     sync.Mutex
	paused bool
	ended  bool
	// snapshot and migrate outcomes
	snapErr    error
	migrateErr error
	lastSnap   SnapshotRequest
	lastMig    MigrateRequest
	measureErr error
	measured   []MeasureRequest
}

func (f *fakeMachine) Measure(_ context.Context, req MeasureRequest) (MemguardStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.measureErr != nil {
		return MemguardStatus{}, f.measureErr
	}
	f.measured = append(f.measured, req)
	st := MemguardStatus{Regions: []MemguardRegion{}}
	for _, r := range f.measured {
		if r.Name != "" {
			st.Ranges = append(st.Ranges, MemguardRange{Name: r.Name, GPA: r.GPA, Size: r.Size, Digest: "ab"})
		}
	}
	return st, nil
}

func (f *fakeMachine) Snapshot(_ context.Context, req SnapshotRequest) (SnapshotResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastSnap = req
	if f.snapErr != nil {
		return SnapshotResult{}, f.snapErr
	}
	return SnapshotResult{Path: req.Path, Bytes: 4096}, nil
}

func (f *fakeMachine) Migrate(_ context.Context, req MigrateRequest, progress func(Progress)) (MigrateResult, error) {
	f.mu.Lock()
	f.lastMig = req
	err := f.migrateErr
	f.mu.Unlock()
	for i := 1; i <= 3; i++ {
		progress(Progress{Pass: i, PagesSent: uint64(100 * i), TotalPages: 300})
	}
	if err != nil {
		return MigrateResult{}, err
	}
	return MigrateResult{Passes: 3, DowntimeMs: 12.5, PagesSent: 300}, nil
}

func (f *fakeMachine) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Status{State: "running", CPUs: 2, MemoryBytes: 512 << 20}
	if f.paused {
		s.State = "paused"
	}
	if f.ended {
		s.State = "ended"
	}
	return s
}

func (f *fakeMachine) Pause(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ended {
		return errors.New("machine is not running")
	}
	f.paused = true
	return nil
}

func (f *fakeMachine) Resume() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ended {
		return errors.New("machine is not running")
	}
	f.paused = false
	return nil
}

func startServer(t *testing.T, m Machine) (string, func()) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "api.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, m, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	return path, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
}

func TestAPI(t *testing.T) {
	m := &fakeMachine{}
	path, stop := startServer(t, m)
	defer stop()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	c := NewClient(path)
	ctx := context.Background()
	steps := []struct {
		name string
		call func() (Status, error)
		want string
		err  string
	}{
		{"status", func() (Status, error) { return c.Status(ctx) }, "running", ""},
		{"pause", func() (Status, error) { return c.Pause(ctx) }, "paused", ""},
		{"pause again", func() (Status, error) { return c.Pause(ctx) }, "paused", ""},
		{"status paused", func() (Status, error) { return c.Status(ctx) }, "paused", ""},
		{"resume", func() (Status, error) { return c.Resume(ctx) }, "running", ""},
		{"end", func() (Status, error) { m.ended = true; return c.Status(ctx) }, "ended", ""},
		{"pause ended", func() (Status, error) { return c.Pause(ctx) }, "", "not running"},
	}
	for _, s := range steps {
		st, err := s.call()
		if s.err != "" {
			if err == nil || !strings.Contains(err.Error(), s.err) {
				t.Fatalf("%s: err %v, want %q", s.name, err, s.err)
			}
			continue
		}
		if err != nil || st.State != s.want || st.CPUs != 2 {
			t.Fatalf("%s: %+v, %v; want state %s", s.name, st, err, s.want)
		}
	}
}

func TestAPIRejects(t *testing.T) {
	path, stop := startServer(t, &fakeMachine{})
	defer stop()
	raw := func(req string) string {
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, req)
		b, _ := io.ReadAll(conn)
		line, _, _ := strings.Cut(string(b), "\r\n")
		return line
	}
	tests := []struct{ req, want string }{
		{"GET /v1/vm/pause HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "405"},
		{"DELETE /v1/vm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "405"},
		{"GET /v2/vm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "404"},
		{"garbage\r\n\r\n", "400"},
		{"PUT /v1/vm/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"evil\":1", "400"},
		{"PUT /v1/vm/migrate HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n[1]", "400"},
	}
	for _, tt := range tests {
		if got := raw(tt.req); !strings.Contains(got, tt.want) {
			t.Errorf("%q: reply %q, want %s", tt.req, got, tt.want)
		}
	}
}

func TestListenSocketInUse(t *testing.T) {
	path, stop := startServer(t, &fakeMachine{})
	defer stop()
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another gvmm") {
		t.Fatalf("second Listen: %v", err)
	}
	// A stale socket (nobody listening) is replaced.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln2, err := Listen(stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln2.Close()
	// A regular file is not touched.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, []byte("x"), 0o644)
	if _, err := Listen(file); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
}

func TestAPISnapshot(t *testing.T) {
	m := &fakeMachine{}
	path, stop := startServer(t, m)
	defer stop()
	c := NewClient(path)
	ctx := context.Background()
	res, err := c.Snapshot(ctx, SnapshotRequest{Path: "/tmp/x.snap"})
	if err != nil || res.Path != "/tmp/x.snap" || res.Bytes != 4096 {
		t.Fatalf("snapshot: %+v, %v", res, err)
	}
	if _, err := c.Snapshot(ctx, SnapshotRequest{}); err == nil || !strings.Contains(err.Error(), "no path") {
		t.Fatalf("snapshot without a path: %v", err)
	}
	m.snapErr = errors.New("disk full")
	if _, err := c.Snapshot(ctx, SnapshotRequest{Path: "/tmp/y"}); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("failing snapshot: %v", err)
	}
}

func TestAPIMigrate(t *testing.T) {
	m := &fakeMachine{}
	path, stop := startServer(t, m)
	defer stop()
	c := NewClient(path)
	ctx := context.Background()
	var passes []int
	res, err := c.Migrate(ctx, MigrateRequest{To: "h:1", KeyFile: "/k", Connections: 4}, func(p Progress) { passes = append(passes, p.Pass) })
	if err != nil || res.Passes != 3 || res.DowntimeMs != 12.5 {
		t.Fatalf("migrate: %+v, %v", res, err)
	}
	if len(passes) != 3 || passes[2] != 3 {
		t.Fatalf("progress %v, want passes 1..3", passes)
	}
	if m.lastMig.To != "h:1" || m.lastMig.Connections != 4 {
		t.Fatalf("request reached the machine as %+v", m.lastMig)
	}
	m.migrateErr = errors.New("destination refused: CPU lacks AVX2")
	if _, err := c.Migrate(ctx, MigrateRequest{To: "h:1", KeyFile: "/k"}, nil); err == nil || !strings.Contains(err.Error(), "AVX2") {
		t.Fatalf("failed migration: %v", err)
	}
	for _, bad := range []MigrateRequest{{KeyFile: "/k"}, {To: "h:1"}} {
		if _, err := c.Migrate(ctx, bad, nil); err == nil || !strings.Contains(err.Error(), "required") {
			t.Fatalf("migrate %+v: %v", bad, err)
		}
	}
}

func TestAPIMeasure(t *testing.T) {
	m := &fakeMachine{}
	path, stop := startServer(t, m)
	defer stop()
	c := NewClient(path)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		req    MeasureRequest
		ranges int
		err    string
	}{
		{"measure now", MeasureRequest{}, 0, ""},
		{"add a range", MeasureRequest{Name: "kernel-code", GPA: 0x1000000, Size: 0xe00000}, 1, ""},
		{"range without a name", MeasureRequest{GPA: 0x1000000, Size: 0x1000}, 0, "needs a name"},
		{"range without a size", MeasureRequest{Name: "x", GPA: 0x1000000}, 0, "needs a size"},
		{"range that wraps", MeasureRequest{Name: "x", GPA: 1 << 63, Size: 1 << 63}, 0, "wrap"},
		{"name too long", MeasureRequest{Name: strings.Repeat("n", 65), Size: 0x1000}, 0, "64 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := c.Measure(ctx, tc.req)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || len(st.Ranges) != tc.ranges {
				t.Fatalf("%+v, %v; want %d ranges", st, err, tc.ranges)
			}
		})
	}
	if len(m.measured) != 2 || m.measured[1].Name != "kernel-code" || m.measured[1].GPA != 0x1000000 {
		t.Fatalf("requests reached the machine as %+v", m.measured)
	}
	m.measureErr = errors.New("range outside RAM")
	if _, err := c.Measure(ctx, MeasureRequest{Name: "y", GPA: 1 << 40, Size: 4096}); err == nil || !strings.Contains(err.Error(), "outside RAM") {
		t.Fatalf("refused range: %v", err)
	}
}
