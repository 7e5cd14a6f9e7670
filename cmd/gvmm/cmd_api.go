package main

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/gvmm/gvmm/api"
	"github.com/gvmm/gvmm/memguard"
	"github.com/gvmm/gvmm/vmm"
)

// machineHolder is the API's view of the machine gvmm run is running: none
// while it is being built and after it ended.
type machineHolder struct {
	mu  sync.Mutex
	m   *vmm.Machine
	log *slog.Logger
	// workers is a migration's encryption workers (env.procs).
	workers int
	// busy is set while a snapshot or migration runs: one at a time.
	// cancelOp ends it, and idle is closed when it has ended.
	busy     bool
	cancelOp context.CancelCauseFunc
	idle     chan struct{}
}

// The causes with which machineHolder cancels an operation's context:
// an error that reaches the user then says which of them it was.
var (
	errOpEnded        = fmt.Errorf("the snapshot or migration had ended: %w", context.Canceled)
	errMachineRetired = fmt.Errorf("the machine stopped: %w", context.Canceled)
)

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
	st := m.Status()
	return api.Status{State: st.State, CPUs: st.CPUs, MemoryBytes: st.MemoryBytes, UptimeSec: st.UptimeSec,
		Memguard: memguardStatus(m.Memguard().Status(), m.Memguard().Log())}
}

// memguardStatus is the API's view of the protected-memory registry and
// the latest entries of its measurement log.
func memguardStatus(g memguard.Status, log []memguard.Measurement) *api.MemguardStatus {
	out := &api.MemguardStatus{Regions: []api.MemguardRegion{}, Violations: g.Violations, Refusals: g.Refusals, ProtectedPages: g.Protected}
	for _, r := range g.Regions {
		ar := api.MemguardRegion{ID: r.ID, Mode: r.Mode.String(), Owner: r.Owner, VA: r.VA, Length: r.Length,
			Locked: r.Locked, Violations: r.Violations, UnexpectedChanges: r.Unexpected}
		if r.Last != nil {
			ar.Digest, ar.MeasuredAt = hex.EncodeToString(r.Last.Digest[:]), r.Last.Time
		}
		out.Regions = append(out.Regions, ar)
	}
	for _, r := range g.Ranges {
		ar := api.MemguardRange{Name: r.Name, GPA: r.GPA, Size: r.Size}
		if r.Last != nil {
			ar.Digest, ar.MeasuredAt, ar.Changed = hex.EncodeToString(r.Last.Digest[:]), r.Last.Time, r.Last.Changed
		}
		out.Ranges = append(out.Ranges, ar)
	}
	if len(log) > api.MaxMeasurementLog {
		log = log[len(log)-api.MaxMeasurementLog:]
	}
	for _, m := range log {
		out.Log = append(out.Log, api.MemguardMeasurement{Time: m.Time, Region: m.Region, Range: m.Range,
			Digest: hex.EncodeToString(m.Digest[:]), Trigger: m.Trigger, Changed: m.Changed, Unexpected: m.Unexpected})
	}
	return out
}

// Measure adds a measured range to the running machine's guard (a name
// given) and measures every region and range now.
func (h *machineHolder) Measure(_ context.Context, req api.MeasureRequest) (api.MemguardStatus, error) {
	m := h.get()
	if m == nil {
		return api.MemguardStatus{}, errors.New("measure: no machine running")
	}
	g := m.Memguard()
	if req.Name != "" {
		if err := g.AddRange(req.Name, req.GPA, req.Size); err != nil {
			return api.MemguardStatus{}, fmt.Errorf("measure: %w", err)
		}
	}
	if _, err := g.MeasureAll("api"); err != nil {
		return api.MemguardStatus{}, fmt.Errorf("measure: %w", err)
	}
	return *memguardStatus(g.Status(), g.Log()), nil
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
	ctx, h.cancelOp = context.WithCancelCause(ctx)
	h.idle = make(chan struct{})
	return h.m, ctx, nil
}

func (h *machineHolder) end() {
	h.mu.Lock()
	h.busy = false
	h.cancelOp(errOpEnded)
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
		h.cancelOp(errMachineRetired)
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
	return migrateOut(ctx, m, req, progress, h.workers, h.log)
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
		printStatus(e, st)
		return nil
	}
}

// printStatus prints a VM's status: one line, then memguard's summary, one
// line per protected region and one per measured range.
func printStatus(e *env, st api.Status) {
	fmt.Fprintf(e.stdout, "state=%s cpus=%d memory=%s uptime=%.1fs\n", st.State, st.CPUs, vmm.FormatSize(st.MemoryBytes), st.UptimeSec)
	if g := st.Memguard; g != nil {
		printMemguard(e, g)
	}
}

func printMemguard(e *env, g *api.MemguardStatus) {
	fmt.Fprintf(e.stdout, "memguard regions=%d protected_pages=%d violations=%d refusals=%d\n",
		len(g.Regions), g.ProtectedPages, g.Violations, g.Refusals)
	for _, r := range g.Regions {
		fmt.Fprintf(e.stdout, "memguard region id=%d mode=%s owner=%#x va=%#x len=%d locked=%v violations=%d digest=%s unexpected_changes=%d\n",
			r.ID, r.Mode, r.Owner, r.VA, r.Length, r.Locked, r.Violations, cmp.Or(r.Digest, "-"), r.UnexpectedChanges)
	}
	for _, r := range g.Ranges {
		fmt.Fprintf(e.stdout, "memguard range name=%s gpa=%#x size=%d digest=%s changed=%v\n",
			r.Name, r.GPA, r.Size, cmp.Or(r.Digest, "-"), r.Changed)
	}
}

// measureCmd is gvmm measure: add a measured range to a running VM (or
// none) and measure its protected regions and ranges now.
func measureCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "measure", "--api-socket PATH [--range NAME=GPA+SIZE]\n\nMeasures (SHA-256) a running VM's protected regions and measured ranges now, first adding a guest-physical range to measure\n(for example the guest kernel's code from its /proc/iomem) when --range is given, and prints the results.")
	sock := fs.String("api-socket", "", "the VM's API socket `path` (required)")
	rng := fs.String("range", "", "add the guest-physical range `NAME=GPA+SIZE` (numbers in Go syntax, e.g. kernel-code=0x1000000+0xe00000)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *sock == "" {
		return usageError("missing --api-socket PATH")
	}
	var req api.MeasureRequest
	if *rng != "" {
		var err error
		if req, err = parseMeasureRange(*rng); err != nil {
			return usageError("--range: %v", err)
		}
	}
	g, err := api.NewClient(*sock).Measure(ctx, req)
	if err != nil {
		return err
	}
	printMemguard(e, &g)
	return nil
}

// parseMeasureRange parses NAME=GPA+SIZE.
func parseMeasureRange(s string) (api.MeasureRequest, error) {
	name, rest, ok := strings.Cut(s, "=")
	gpaS, sizeS, ok2 := strings.Cut(rest, "+")
	if !ok || !ok2 || name == "" {
		return api.MeasureRequest{}, fmt.Errorf("%q is not NAME=GPA+SIZE", s)
	}
	gpa, err := strconv.ParseUint(gpaS, 0, 64)
	if err != nil {
		return api.MeasureRequest{}, fmt.Errorf("GPA: %w", err)
	}
	size, err := strconv.ParseUint(sizeS, 0, 64)
	if err != nil || size == 0 {
		return api.MeasureRequest{}, fmt.Errorf("SIZE %q: not a positive number", sizeS)
	}
	return api.MeasureRequest{Name: name, GPA: gpa, Size: size}, nil
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
