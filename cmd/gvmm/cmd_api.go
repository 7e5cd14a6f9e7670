package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/gvmm/gvmm/api"
	"github.com/gvmm/gvmm/vmm"
)

// machineHolder is the API's view of the machine gvmm run is running: none
// while it is being built and after it ended.
type machineHolder struct {
	mu  sync.Mutex
	m   *vmm.Machine
	log *slog.Logger
	// busy is set while a snapshot or migration runs: one at a time.
	// cancelOp ends it, and idle is closed when it has ended.
	busy     bool
	cancelOp context.CancelFunc
	idle     chan struct{}
}

var _ api.Machine = (*machineHolder)(nil)

func (h *machineHolder) set(m *vmm.Machine) {
	h.mu.Lock()
	h.m = m
	h.mu.Unlock()
}

func (h *machineHolder) get() *vmm.Machine {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.m
}

func (h *machineHolder) Status() api.Status {
	m := h.get()
	if m == nil {
		return api.Status{State: "starting"}
	}
	return api.Status(m.Status())
}

func (h *machineHolder) Pause(ctx context.Context) error {
	m := h.get()
	if m == nil {
		return vmm.ErrNotRunning
	}
	return m.Pause(ctx)
}

func (h *machineHolder) Resume() error {
	m := h.get()
	if m == nil {
		return vmm.ErrNotRunning
	}
	return m.Resume()
}

// begin claims the machine for a snapshot or a migration, under a
// context that retire cancels.
func (h *machineHolder) begin(ctx context.Context) (*vmm.Machine, context.Context, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		return nil, nil, errNoMachine
	}
	if h.busy {
		return nil, nil, errors.New("a snapshot or migration is already in progress")
	}
	h.busy = true
	ctx, h.cancelOp = context.WithCancel(ctx)
	h.idle = make(chan struct{})
	return h.m, ctx, nil
}

func (h *machineHolder) end() {
	h.mu.Lock()
	h.busy = false
	h.cancelOp()
	close(h.idle)
	h.mu.Unlock()
}

// retire takes the machine away from the API before it is closed: new
// requests find none, and a snapshot or migration still running (the
// guest powered off or died under it) is cancelled and waited for, so
// that nothing reads guest memory after it is unmapped.
func (h *machineHolder) retire() {
	h.mu.Lock()
	h.m = nil
	busy, idle := h.busy, h.idle
	if busy {
		h.cancelOp()
	}
	h.mu.Unlock()
	if busy {
		<-idle
	}
}

func (h *machineHolder) Snapshot(ctx context.Context, req api.SnapshotRequest) (api.SnapshotResult, error) {
	m, ctx, err := h.begin(ctx)
	if err != nil {
		return api.SnapshotResult{}, err
	}
	defer h.end()
	return writeSnapshot(ctx, m, req.Path)
}

func (h *machineHolder) Migrate(ctx context.Context, req api.MigrateRequest, progress func(api.Progress)) (api.MigrateResult, error) {
	m, ctx, err := h.begin(ctx)
	if err != nil {
		return api.MigrateResult{}, err
	}
	defer h.end()
	return migrateOut(ctx, m, req, progress, h.log)
}

// apiCmd builds the status, pause and resume commands: each calls one
// endpoint of a running gvmm's API socket and prints the VM's status.
func apiCmd(name string, call func(*api.Client, context.Context) (api.Status, error)) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		fs := newFlagSet(e, name, "--api-socket PATH\n\nTalks to the API socket of a VM started with gvmm run --api-socket PATH.")
		sock := fs.String("api-socket", "", "the VM's API socket `path` (required)")
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		if *sock == "" {
			return usageError("missing --api-socket PATH")
		}
		st, err := call(api.NewClient(*sock), ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "state=%s cpus=%d memory=%s uptime=%.1fs\n", st.State, st.CPUs, vmm.FormatSize(st.MemoryBytes), st.UptimeSec)
		return nil
	}
}

// serveAPI serves the control API for holder on a unix socket at path
// until ctx ends; path "" serves nothing. The returned stop cancels ctx
// (through cancel) and waits for the server to finish.
func serveAPI(ctx context.Context, cancel context.CancelFunc, path string, holder *machineHolder, e *env) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	ln, err := api.Listen(path)
	if err != nil {
		return nil, err
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := api.Serve(ctx, ln, holder, e.log); err != nil {
			e.log.Error("control API stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-served
	}, nil
}
