package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/gvmm/gvmm/api"
	"github.com/gvmm/gvmm/memguard"
	"github.com/gvmm/gvmm/migration"
	"github.com/gvmm/gvmm/migration/gate"
	"github.com/gvmm/gvmm/migration/stream"
	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/tpm"
	"github.com/gvmm/gvmm/vmm"
)

// Defaults of gvmm migrate.
const (
	defaultConnections = 4
	maxConnections     = 16
	dialTimeout        = 10 * time.Second
)

// readKeyFile reads a 32-byte migration key: the raw bytes, or 64
// hexadecimal digits (a trailing newline allowed). A key file others can
// read is refused.
func readKeyFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s is readable by others (mode %v); chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if len(b) == 32 {
		return b, nil
	}
	if s := strings.TrimSpace(string(b)); len(s) == 64 {
		if k, err := hex.DecodeString(s); err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("key file %s: want 32 bytes or 64 hex digits, found %d bytes", path, len(b))
}

// migrateOut runs a migration of m requested through the API. On success
// the machine is handed over (gvmm run then exits 0); on failure it runs on.
//
// With a signed request it first runs the attestation-gated handshake
// (migration/gate) in this process, so the migration key goes from the
// gate to the stream in guarded memory and nowhere else. With a key file
// it runs the INSECURE pre-shared key mode.
func migrateOut(ctx context.Context, m *vmm.Machine, req api.MigrateRequest, progress func(api.Progress), workers int, log *slog.Logger) (api.MigrateResult, error) {
	n := req.Connections
	if n == 0 {
		n = defaultConnections
	}
	if n < 1 || n > maxConnections {
		return api.MigrateResult{}, fmt.Errorf("connections %d is outside 1..%d", n, maxConnections)
	}
	comp, err := stream.ParseCompression(req.Compress)
	if err != nil {
		return api.MigrateResult{}, err
	}
	info, err := m.MigrationInfo()
	if err != nil {
		return api.MigrateResult{}, err
	}
	var (
		key *memguard.Secret
		hs  *api.Handshake
	)
	if req.KeyFile != "" {
		log.Warn("migrating with a pre-shared key: INSECURE test mode, no policy and no attestation")
		key, err = readKeySecret(req.KeyFile)
	} else {
		key, hs, err = gateOut(ctx, req, func(line string) { progress(api.Progress{Step: line}) }, runtimeReport(m), log)
	}
	if err != nil {
		return api.MigrateResult{}, err
	}
	defer key.Destroy()
	conns, err := dialAll(ctx, req.To, n)
	if err != nil {
		return api.MigrateResult{}, err
	}
	opts := migration.Options{
		MaxDowntime: time.Duration(req.DowntimeMs) * time.Millisecond,
		Timeout:     time.Duration(req.TimeoutSec) * time.Second,
		CPU:         info,
		Compression: comp,
		Workers:     workers,
		Logger:      log.With("migration", req.To),
		Progress: func(p migration.Progress) {
			progress(api.Progress{
				Phase: p.Phase.String(),
				Pass:  p.Pass, PagesSent: p.PagesSent, DirtyPages: p.Dirty, TotalPages: p.GuestPages,
				BandwidthMBps: p.Bandwidth / 1e6, ThrottlePercent: p.Throttle,
			})
		},
	}
	st, err := migration.Migrate(ctx, sourceMachine{m}, conns, key.Bytes(), opts)
	if err != nil {
		return api.MigrateResult{}, err
	}
	m.HandedOver()
	return api.MigrateResult{
		TotalMs:         ms(st.Total),
		DowntimeMs:      ms(st.Downtime),
		LastPassMs:      ms(st.Pause + st.FinalPass),
		StateMs:         ms(st.StateSave + st.StateSend),
		RestoreMs:       ms(st.AckWait),
		CatchUpMs:       ms(st.CatchUp),
		WireBytes:       st.WireBytes,
		PagesSent:       st.Pages + st.ZeroPages,
		ZeroPages:       st.ZeroPages,
		CompressedPages: st.CompressedPages,
		Passes:          st.Passes,
		MaxThrottle:     st.Throttle,
		Handshake:       hs,
	}, nil
}

// readKeySecret reads a pre-shared key file into guarded memory.
func readKeySecret(path string) (*memguard.Secret, error) {
	b, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	s, err := memguard.NewSecret(len(b))
	if err != nil {
		return nil, fmt.Errorf("migration key: %w", err)
	}
	copy(s.Bytes(), b)
	return s, nil
}

// gateOut opens this host's sealed state (a measured launch of this
// process in its TPM), authenticates the signed request and runs the
// handshake with the destination, again after a refusal for outdated
// measurements if the request allows retries. It returns the released key.
// runtime measures the VM for a destination that asks this host to attest
// (nil: no run-time report).
func gateOut(ctx context.Context, req api.MigrateRequest, step func(string),
	runtime func(context.Context) (*policy.RuntimeReport, error), log *slog.Logger) (*memguard.Secret, *api.Handshake, error) {
	signed, err := policy.ParseSigned(bytes.NewReader(req.Request))
	if err != nil {
		return nil, nil, fmt.Errorf("migrate request: %w", err)
	}
	cfg, err := tpm.ParseURI(req.TPM)
	if err != nil {
		return nil, nil, err
	}
	if err := checkStateTPM(cfg); err != nil {
		return nil, nil, err
	}
	tp, err := tpm.Open(ctx, cfg, log)
	if err != nil {
		return nil, nil, err
	}
	defer tp.Close()
	op, err := gate.OpenHost(ctx, tp, req.State, gate.OpenOptions{NeedState: true, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	defer op.Host.Close()
	src := &gate.Source{Host: op.Host, Report: step, Runtime: runtime}
	a, err := src.Authorize(signed)
	if err != nil {
		return nil, nil, err
	}
	delay := time.Duration(req.RetryDelayMs) * time.Millisecond
	if delay <= 0 {
		delay = 2 * time.Second
	}
	remediating := false
	for attempt := 1; ; attempt++ {
		out, err := a.Handshake(ctx, req.To)
		if err == nil {
			t := out.Timings
			step(fmt.Sprintf("handshake %.1f ms (authenticate %.1f ms, attest %.1f ms, decide %.1f ms, key release %.1f ms)",
				ms(t.Total), ms(t.Authenticate), ms(t.Attest), ms(t.Decide), ms(t.Release)))
			return out.Key, &api.Handshake{
				Rule: out.Final.Rule, Trust: out.Attestation.Trust.String(), Destination: out.Destination.Name,
				AuthenticateMs: ms(t.Authenticate), AttestMs: ms(t.Attest), DecideMs: ms(t.Decide),
				ReleaseMs: ms(t.Release), TotalMs: ms(t.Total), Attempts: attempt,
			}, nil
		}
		var r *gate.RefusedError
		if errors.As(err, &r) && !r.Remote && r.Decision.Remediation != nil {
			rem := r.Decision.Remediation
			var acc []string
			for _, m := range rem.Acceptable {
				acc = append(acc, fmt.Sprintf("%s (%s)", m.Version, m.Executable))
			}
			step(fmt.Sprintf("destination must update: have %s, acceptable: %s", rem.Have, strings.Join(acc, ", ")))
			remediating = true
		} else if !remediating || errors.As(err, &r) {
			// Only a destination being remediated (refused for its
			// measurements, now updating and restarting) is tried again.
			return nil, nil, err
		}
		if attempt > req.RemediationRetries {
			return nil, nil, err
		}
		step(fmt.Sprintf("retrying in %s (attempt %d of %d)", delay, attempt+1, req.RemediationRetries+1))
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// dialAll opens n connections to addr; on error none stays open.
func dialAll(ctx context.Context, addr string, n int) ([]net.Conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("connect to %s: %w", addr, err)
		}
		conns = append(conns, c)
	}
	return conns, nil
}

var errNoMachine = errors.New("no machine is running")

// checkStateTPM refuses the random-seed simulator for a host state: it
// forgets its keys with each process, so nothing sealed by another
// process (gvmm host init) can be unsealed with it.
func checkStateTPM(cfg tpm.Config) error {
	if cfg.Kind == tpm.KindSimulator && !cfg.Insecure() {
		return usageError("--tpm sim is a new random TPM in every process and cannot open a host state: give the URI the state was made with (sim?insecure-fixed-seed=N, swtpm+unix://..., device:///dev/tpmrm0)")
	}
	return nil
}

// runtimeReport measures m's protected regions and measured guest ranges
// now, for a destination that asks this host to attest the VM's run-time
// state (policy.RuntimeReport; package gate adds the VM, migration and
// time and measures the report into the TPM).
func runtimeReport(m *vmm.Machine) func(context.Context) (*policy.RuntimeReport, error) {
	return func(context.Context) (*policy.RuntimeReport, error) {
		g := m.Memguard()
		if _, err := g.MeasureAll("attest"); err != nil {
			return nil, err
		}
		st := g.Status()
		r := &policy.RuntimeReport{Violations: st.Violations, Regions: []policy.RuntimeRegion{}, Ranges: []policy.RuntimeRange{}}
		for _, rg := range st.Regions {
			last := rg.Last
			if last == nil { // registered after MeasureAll listed the regions
				ms, err := g.MeasureRegion(rg.ID, "attest")
				if errors.Is(err, memguard.ErrNoRegion) {
					continue // and released again
				}
				if err != nil {
					return nil, err
				}
				last = &ms
			}
			r.Regions = append(r.Regions, policy.RuntimeRegion{ID: rg.ID, Mode: rg.Mode.String(), Owner: rg.Owner,
				Length: rg.Length, SHA256: hex.EncodeToString(last.Digest[:]), Unexpected: rg.Unexpected > 0})
		}
		for _, rs := range st.Ranges {
			if rs.Last == nil {
				return nil, fmt.Errorf("range %s was added during the measurement; try again", rs.Name)
			}
			r.Ranges = append(r.Ranges, policy.RuntimeRange{Name: rs.Name, GPA: rs.GPA, Size: rs.Size, SHA256: hex.EncodeToString(rs.Last.Digest[:])})
		}
		return r, nil
	}
}
