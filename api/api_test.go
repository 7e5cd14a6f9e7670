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
