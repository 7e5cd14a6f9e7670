package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"
)

// Status is what GET /v1/vm returns.
type Status struct {
	State       string  `json:"state"`
	CPUs        int     `json:"cpus"`
	MemoryBytes uint64  `json:"memory_bytes"`
	UptimeSec   float64 `json:"uptime_seconds"`
}

// Machine is what the API controls.
type Machine interface {
	Status() Status
	Pause(ctx context.Context) error
	Resume() error
}

const maxBody = 1 << 16

// Listen creates the unix socket at path (mode 0600). A stale socket that
// nobody answers on is replaced; one in use is an error.
func Listen(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("api socket %s: a file that is not a socket is in the way", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("api socket %s: another gvmm is listening on it", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("api socket %s exists and is not a stale socket: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale api socket: %w", err)
		}
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	return ln, nil
}

// Serve answers API requests on ln until ctx ends; it closes ln.
func Serve(ctx context.Context, ln net.Listener, m Machine, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vm", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, m.Status())
	})
	mux.HandleFunc("PUT /v1/vm/pause", func(w http.ResponseWriter, r *http.Request) {
		if err := m.Pause(r.Context()); err != nil {
			log.Warn("api: pause", "err", err)
			replyError(w, http.StatusConflict, err)
			return
		}
		log.Info("api: paused")
		reply(w, http.StatusOK, m.Status())
	})
	mux.HandleFunc("PUT /v1/vm/resume", func(w http.ResponseWriter, r *http.Request) {
		if err := m.Resume(); err != nil {
			log.Warn("api: resume", "err", err)
			replyError(w, http.StatusConflict, err)
			return
		}
		log.Info("api: resumed")
		reply(w, http.StatusOK, m.Status())
	})
	srv := &http.Server{
		Handler: http.MaxBytesHandler(mux, maxBody),
		// A local client that stalls must not hold a connection forever.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(ln)
	close(done)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("api: serve: %w", err)
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func replyError(w http.ResponseWriter, code int, err error) {
	reply(w, code, map[string]string{"error": err.Error()})
}

// Client talks to the API of one VM.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &Client{http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Status returns the VM's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	return c.do(ctx, http.MethodGet, "/v1/vm")
}

// Pause parks the VM's vCPUs.
func (c *Client) Pause(ctx context.Context) (Status, error) {
	return c.do(ctx, http.MethodPut, "/v1/vm/pause")
}

// Resume lets them run again.
func (c *Client) Resume(ctx context.Context) (Status, error) {
	return c.do(ctx, http.MethodPut, "/v1/vm/resume")
}

func (c *Client) do(ctx context.Context, method, path string) (Status, error) {
	var st Status
	req, err := http.NewRequestWithContext(ctx, method, "http://gvmm"+path, nil)
	if err != nil {
		return st, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return st, fmt.Errorf("api %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return st, fmt.Errorf("api %s %s: read reply: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return st, fmt.Errorf("api %s %s: %s", method, path, e.Error)
		}
		return st, fmt.Errorf("api %s %s: %s", method, path, resp.Status)
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("api %s %s: bad reply: %w", method, path, err)
	}
	return st, nil
}
