package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// Status is what GET /v1/vm returns.
type Status struct {
	State       string  `json:"state"`
	CPUs        int     `json:"cpus"`
	MemoryBytes uint64  `json:"memory_bytes"`
	UptimeSec   float64 `json:"uptime_seconds"`
	// Memguard is the protected-memory registry; nil before the VM runs.
	Memguard *MemguardStatus `json:"memguard,omitempty"`
}

// MemguardStatus is the VM's protected guest memory: its regions, the
// accesses refused (Violations, including unexpected changes found by a
// measurement) and the guest requests refused (Refusals).
type MemguardStatus struct {
	Regions        []MemguardRegion `json:"regions"`
	Violations     uint64           `json:"violations"`
	Refusals       uint64           `json:"refusals"`
	ProtectedPages int              `json:"protected_pages"`
	// Ranges are the measured guest-physical ranges; Log the latest
	// measurements (at most MaxMeasurementLog), oldest first.
	Ranges []MemguardRange       `json:"ranges,omitempty"`
	Log    []MemguardMeasurement `json:"log,omitempty"`
}

// MemguardRegion is one protected region. Owner is its owner's top-level
// page-table address (its identity); Digest, hex SHA-256, and MeasuredAt
// are the last measurement, empty before the first.
type MemguardRegion struct {
	ID         uint64    `json:"id"`
	Mode       string    `json:"mode"`
	Owner      uint64    `json:"owner"`
	VA         uint64    `json:"va"`
	Length     uint64    `json:"length"`
	Locked     bool      `json:"locked"`
	Violations uint64    `json:"violations"`
	Digest     string    `json:"digest,omitempty"`
	MeasuredAt time.Time `json:"measured_at,omitzero"`
	// UnexpectedChanges counts measurements that found the region changed
	// without an owner write (each also counts as a violation).
	UnexpectedChanges uint64 `json:"unexpected_changes,omitempty"`
}

// MemguardRange is a guest-physical range measured on request (for
// example the guest kernel's code). Digest, hex SHA-256, and MeasuredAt
// are the last measurement; Changed says it differed from the one before.
type MemguardRange struct {
	Name       string    `json:"name"`
	GPA        uint64    `json:"gpa"`
	Size       uint64    `json:"size"`
	Digest     string    `json:"digest,omitempty"`
	MeasuredAt time.Time `json:"measured_at,omitzero"`
	Changed    bool      `json:"changed,omitempty"`
}

// MemguardMeasurement is one entry of the VM's measurement log: of
// region Region, or of range Range. Unexpected marks an integrity region
// that changed without its owner writing through gvmm (a violation).
type MemguardMeasurement struct {
	Time       time.Time `json:"time"`
	Region     uint64    `json:"region,omitempty"`
	Range      string    `json:"range,omitempty"`
	Digest     string    `json:"digest"`
	Trigger    string    `json:"trigger"`
	Changed    bool      `json:"changed,omitempty"`
	Unexpected bool      `json:"unexpected,omitempty"`
}

// MaxMeasurementLog is how many of the latest measurement log entries
// the API shows.
const MaxMeasurementLog = 32

// MeasureRequest is the body of PUT /v1/vm/measure. With a Name, the
// guest-physical range [GPA, GPA+Size) is first added to the ranges
// measured with the protected regions; then every region and range is
// measured now, and the reply is the VM's memguard status.
type MeasureRequest struct {
	Name string `json:"name,omitempty"`
	GPA  uint64 `json:"gpa,omitempty"`
	Size uint64 `json:"size,omitempty"`
}

// Machine is what the API controls.
type Machine interface {
	Status() Status
	Pause(ctx context.Context) error
	Resume() error
	// Snapshot writes the machine's complete state to a file.
	Snapshot(ctx context.Context, req SnapshotRequest) (SnapshotResult, error)
	// Migrate moves the machine to another host, reporting progress;
	// on success the machine has been handed over and the source ends.
	Migrate(ctx context.Context, req MigrateRequest, progress func(Progress)) (MigrateResult, error)
	// Measure adds a measured range (req.Name set) and measures the
	// protected regions and ranges now.
	Measure(ctx context.Context, req MeasureRequest) (MemguardStatus, error)
}

// SnapshotRequest is the body of PUT /v1/vm/snapshot.
type SnapshotRequest struct {
	// Path is the file to write; it must not exist.
	Path string `json:"path"`
}

// SnapshotResult is what a snapshot took.
type SnapshotResult struct {
	Path     string  `json:"path"`
	Bytes    uint64  `json:"bytes"`
	PausedMs float64 `json:"paused_ms"`
}

// MigrateRequest is the body of PUT /v1/vm/migrate.
type MigrateRequest struct {
	// To is the destination's HOST:PORT (gvmm receive --listen).
	To string `json:"to"`
	// KeyFile holds a 32-byte pre-shared migration key: the INSECURE
	// test mode, without policy or attestation. Exactly one of KeyFile
	// and Request is set.
	KeyFile string `json:"key_file,omitempty"`
	// Request is a user's signed migrate request (policy.Signed, JSON):
	// the VM process runs the attestation-gated handshake (package
	// migration/gate) with the host state in State and the TPM at TPM.
	Request []byte `json:"request,omitempty"`
	State   string `json:"state,omitempty"`
	TPM     string `json:"tpm,omitempty"`
	// RemediationRetries is how many times a destination refused only
	// for outdated measurements is tried again, RetryDelayMs apart.
	RemediationRetries int `json:"remediation_retries,omitempty"`
	RetryDelayMs       int `json:"retry_delay_ms,omitempty"`
	// Connections is the number of parallel connections (0: default).
	Connections int `json:"connections,omitempty"`
	// DowntimeMs is the downtime budget (0: default).
	DowntimeMs int `json:"downtime_ms,omitempty"`
	// TimeoutSec bounds the whole migration (0: default).
	TimeoutSec int `json:"timeout_seconds,omitempty"`
	// Compress is the page compression policy: "auto" (the default when
	// empty), "off" or "always".
	Compress string `json:"compress,omitempty"`
}

// Progress is one progress report of a migration, sent as a JSON line.
type Progress struct {
	Pass            int     `json:"pass"`
	PagesSent       uint64  `json:"pages_sent"`
	DirtyPages      uint64  `json:"dirty_pages"`
	TotalPages      uint64  `json:"total_pages"`
	BandwidthMBps   float64 `json:"bandwidth_mbps"`
	ThrottlePercent int     `json:"throttle_percent"`
	// Phase is where the migration is: "full" (the first pass), "dirty"
	// (a later pass), "switchover" (the VM is paused: last pages and
	// state) or "done".
	Phase string `json:"phase,omitempty"`
	// Step, when set, is a line about the handshake before the first
	// page (the other fields are then zero).
	Step string `json:"step,omitempty"`
}

// MigrateResult is a finished migration's figures.
type MigrateResult struct {
	TotalMs    float64 `json:"total_ms"`
	DowntimeMs float64 `json:"downtime_ms"`
	LastPassMs float64 `json:"last_pass_ms"`
	StateMs    float64 `json:"state_ms"`
	// RestoreMs is the wait for the destination's acknowledgement, its
	// restore included; DowntimeMs ends with it. The destination starts
	// the vCPUs after it has acknowledged (its log says when), so that a
	// lost acknowledgement never leaves the guest running on both hosts.
	RestoreMs float64 `json:"restore_ms"`
	// CatchUpMs is how long pre-copy waited, the guest running, for the
	// destination to apply what was sent before the blackout.
	CatchUpMs       float64 `json:"catch_up_ms,omitempty"`
	WireBytes       uint64  `json:"wire_bytes"`
	PagesSent       uint64  `json:"pages_sent"`
	ZeroPages       uint64  `json:"zero_pages"`
	CompressedPages uint64  `json:"compressed_pages"`
	Passes          int     `json:"passes"`
	MaxThrottle     int     `json:"max_throttle_percent"`
	// Handshake is the gate's part, before the first page (none in the
	// pre-shared key mode).
	Handshake *Handshake `json:"handshake,omitempty"`
}

// Handshake is what the attestation-gated handshake decided and took.
type Handshake struct {
	Rule           string  `json:"rule"`
	Trust          string  `json:"trust"`
	Destination    string  `json:"destination"`
	AuthenticateMs float64 `json:"authenticate_ms"`
	AttestMs       float64 `json:"attest_ms"`
	DecideMs       float64 `json:"decide_ms"`
	ReleaseMs      float64 `json:"release_ms"`
	TotalMs        float64 `json:"total_ms"`
	Attempts       int     `json:"attempts"`
}

// ErrRefused is returned (wrapped) by Client.Migrate when the migration
// was refused by a policy or attestation decision.
var ErrRefused = errors.New("migration refused")

// Refusal is implemented by errors that are a policy or attestation
// decision against a migration (gate.RefusedError).
type Refusal interface{ MigrationRefused() bool }

// migrateLine is one line of PUT /v1/vm/migrate's streamed reply: progress
// lines, then exactly one line with a result or an error.
type migrateLine struct {
	Progress *Progress      `json:"progress,omitempty"`
	Result   *MigrateResult `json:"result,omitempty"`
	Error    string         `json:"error,omitempty"`
	Refused  bool           `json:"refused,omitempty"`
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
	mux.HandleFunc("PUT /v1/vm/snapshot", func(w http.ResponseWriter, r *http.Request) {
		var req SnapshotRequest
		if err := decodeBody(r, &req); err != nil {
			replyError(w, http.StatusBadRequest, err)
			return
		}
		if req.Path == "" {
			replyError(w, http.StatusBadRequest, errors.New("snapshot: no path"))
			return
		}
		res, err := m.Snapshot(r.Context(), req)
		if err != nil {
			log.Warn("api: snapshot", "err", err)
			replyError(w, http.StatusConflict, err)
			return
		}
		log.Info("api: snapshot written", "path", res.Path, "bytes", res.Bytes)
		reply(w, http.StatusOK, res)
	})
	mux.HandleFunc("PUT /v1/vm/measure", func(w http.ResponseWriter, r *http.Request) {
		var req MeasureRequest
		if err := decodeBody(r, &req); err != nil {
			replyError(w, http.StatusBadRequest, err)
			return
		}
		if req.Name == "" && (req.GPA != 0 || req.Size != 0) {
			replyError(w, http.StatusBadRequest, errors.New("measure: a range needs a name"))
			return
		}
		if req.Name != "" && (req.Size == 0 || req.GPA+req.Size < req.GPA || len(req.Name) > 64) {
			replyError(w, http.StatusBadRequest, errors.New("measure: a range needs a size, must not wrap, and a name of at most 64 bytes"))
			return
		}
		res, err := m.Measure(r.Context(), req)
		if err != nil {
			log.Warn("api: measure", "err", err)
			replyError(w, http.StatusConflict, err)
			return
		}
		if req.Name != "" {
			log.Info("api: measured range added", "name", req.Name, "gpa", fmt.Sprintf("%#x", req.GPA), "size", req.Size)
		}
		reply(w, http.StatusOK, res)
	})
	mux.HandleFunc("PUT /v1/vm/migrate", func(w http.ResponseWriter, r *http.Request) {
		var req MigrateRequest
		if err := decodeBody(r, &req); err != nil {
			replyError(w, http.StatusBadRequest, err)
			return
		}
		if req.To == "" || (req.KeyFile == "") == (req.Request == nil) || (req.Request != nil && req.State == "") {
			replyError(w, http.StatusBadRequest, errors.New("migrate: destination and either a signed request with a host state or a key file are required"))
			return
		}
		// The reply is a stream of JSON lines: progress, then the
		// result or the error. The status is 200 once streaming starts.
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		enc := json.NewEncoder(w)
		flusher, _ := w.(http.Flusher)
		var mu sync.Mutex
		send := func(l migrateLine) {
			mu.Lock()
			defer mu.Unlock()
			_ = enc.Encode(l)
			if flusher != nil {
				flusher.Flush()
			}
		}
		// A migration must not be cut short by the client going away:
		// the source's fate is decided by the migration itself.
		ctx := context.WithoutCancel(r.Context())
		res, err := m.Migrate(ctx, req, func(p Progress) { send(migrateLine{Progress: &p}) })
		if err != nil {
			log.Warn("api: migrate", "err", err)
			var r Refusal
			send(migrateLine{Error: err.Error(), Refused: errors.As(err, &r) && r.MigrationRefused()})
			return
		}
		log.Info("api: migrated", "to", req.To, "downtime_ms", res.DowntimeMs)
		send(migrateLine{Result: &res})
	})
	srv := &http.Server{
		Handler: http.MaxBytesHandler(mux, maxBody),
		// A local client that stalls must not hold a connection forever.
		ReadHeaderTimeout: 5 * time.Second,
		// No ReadTimeout: a migration's reply streams for minutes, and
		// bodies are small and capped.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
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

// decodeBody reads a request's JSON body strictly (the server caps its size).
func decodeBody(r *http.Request, v any) error {
	d := json.NewDecoder(r.Body)
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("bad request body: %w", err)
	}
	return nil
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
	// stream has no overall timeout, for replies that stream for as long
	// as a migration takes; its requests are bounded by their context.
	stream *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &Client{http: &http.Client{Transport: tr, Timeout: 30 * time.Second}, stream: &http.Client{Transport: tr}}
}

// Snapshot asks the VM to write its state to req.Path.
func (c *Client) Snapshot(ctx context.Context, req SnapshotRequest) (SnapshotResult, error) {
	var res SnapshotResult
	err := c.call(ctx, c.stream, http.MethodPut, "/v1/vm/snapshot", req, &res)
	return res, err
}

// Measure asks the VM to add a measured range (req.Name set) and to
// measure its protected regions and ranges now.
func (c *Client) Measure(ctx context.Context, req MeasureRequest) (MemguardStatus, error) {
	var res MemguardStatus
	err := c.call(ctx, c.http, http.MethodPut, "/v1/vm/measure", req, &res)
	return res, err
}

// Migrate asks the VM to migrate, calling progress for each report, and
// returns the final figures or the reason it failed (the source then
// keeps running).
func (c *Client) Migrate(ctx context.Context, req MigrateRequest, progress func(Progress)) (MigrateResult, error) {
	const path = "/v1/vm/migrate"
	var res MigrateResult
	resp, err := c.send(ctx, c.stream, http.MethodPut, path, req)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return res, replyErr(http.MethodPut, path, resp)
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxStreamReply))
	for {
		var l migrateLine
		if err := dec.Decode(&l); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return res, fmt.Errorf("api PUT %s: reply ended without a result: %w", path, err)
		}
		switch {
		case l.Error != "" && l.Refused:
			return res, fmt.Errorf("migrate: %w: %s", ErrRefused, l.Error)
		case l.Error != "":
			return res, fmt.Errorf("migrate: %s", l.Error)
		case l.Result != nil:
			return *l.Result, nil
		case l.Progress != nil && progress != nil:
			progress(*l.Progress)
		}
	}
}

// maxStreamReply bounds a streamed reply: hours of progress lines.
const maxStreamReply = 64 << 20

func (c *Client) send(ctx context.Context, hc *http.Client, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://gvmm"+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("api %s %s: %w", method, path, err)
	}
	return resp, nil
}

// call does one request and decodes its JSON reply into out.
func (c *Client) call(ctx context.Context, hc *http.Client, method, path string, body, out any) error {
	resp, err := c.send(ctx, hc, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return replyErr(method, path, resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("api %s %s: read reply: %w", method, path, err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("api %s %s: bad reply: %w", method, path, err)
	}
	return nil
}

// replyErr turns a non-200 reply into an error carrying the server's
// message.
func replyErr(method, path string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return fmt.Errorf("api %s %s: %s", method, path, e.Error)
	}
	return fmt.Errorf("api %s %s: %s", method, path, resp.Status)
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
	err := c.call(ctx, c.http, method, path, nil, &st)
	return st, err
}
