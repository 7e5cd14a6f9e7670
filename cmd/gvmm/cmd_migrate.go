package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gvmm/gvmm/api"
	"github.com/gvmm/gvmm/migration/stream"
	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/tpm"
	"github.com/gvmm/gvmm/vmm"
)

const snapshotSynopsis = `--api-socket PATH --to FILE

Writes the complete state of a running VM (memory, vCPUs, devices) to FILE,
which must not exist. The VM is paused while its state is written and then
carries on. "gvmm run --restore FILE" starts it again where it stopped.`

func snapshotCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "snapshot", snapshotSynopsis)
	sock := fs.String("api-socket", "", "the VM's API socket `path` (required)")
	to := fs.String("to", "", "snapshot `file` to write (required; must not exist)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *sock == "" || *to == "" {
		return usageError("missing --api-socket PATH or --to FILE")
	}
	// The VM process writes the file: give it an absolute path.
	path, err := filepath.Abs(*to)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	res, err := api.NewClient(*sock).Snapshot(ctx, api.SnapshotRequest{Path: path})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "snapshot %s: %s, VM paused for %.1f ms\n", res.Path, vmm.FormatSize(res.Bytes), res.PausedMs)
	return nil
}

const migrateSynopsis = `--api-socket PATH --to HOST:PORT --state DIR --tpm URI --request FILE [flags]
       gvmm migrate --api-socket PATH --to HOST:PORT --insecure-key FILE [flags]

Live-migrates the VM behind PATH to "gvmm receive --listen HOST:PORT" on
another host, with pre-copy: memory is copied while the guest runs, then
again what it dirtied, until what is left fits the downtime budget; then
the guest is paused, the rest and the device and vCPU state are sent, and
the destination resumes it.

Before the first page, the VM's gvmm authenticates the user's signed
migrate request (gvmm policy request), checks the VM's policy in this
host's sealed state (--state, unsealed with --tpm), opens mutual TLS to the
destination, has it attest its TPM and gvmm, decides again with that, and
releases a fresh migration key to the attested destination only. Each step
is printed; a refusal says which rule refused and why, exits with status 3,
and the source VM keeps running. Every decision is in DIR/audit.log.

--insecure-key FILE skips all of that and uses a pre-shared 32-byte key
(the same file on both hosts): for tests of the migration engine only.
On success the source gvmm exits with status 0; on any failure the source
VM keeps running and this command says why.`

func migrateCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "migrate", migrateSynopsis)
	sock := fs.String("api-socket", "", "the VM's API socket `path` (required)")
	to := fs.String("to", "", "destination `HOST:PORT` (required)")
	state := fs.String("state", "", "this host's state `directory` (gvmm host init, gvmm policy init)")
	tpmURI := fs.String("tpm", tpm.DefaultURI, "this host's TPM `URI` (as given to gvmm host init)")
	request := fs.String("request", "", "the user's signed migrate request `file` (gvmm policy request -action migrate)")
	retries := fs.Int("remediation-retries", 0, "`times` to try again when the destination is refused only for outdated measurements (it may be updating)")
	retryDelay := fs.Duration("retry-delay", 2*time.Second, "`wait` between those tries")
	key := fs.String("insecure-key", "", "INSECURE test mode: pre-shared 32-byte key `file`, no policy and no attestation")
	conns := fs.Int("connections", 0, "parallel connections for page data (0: default)")
	downtime := fs.Int("downtime", 0, "downtime budget in `milliseconds` (0: default)")
	timeout := fs.Int("timeout", 0, "give up after this many `seconds` (0: default)")
	compress := fs.String("compress", "auto", "page compression: auto (where it saves time), off or always")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *sock == "" || *to == "" {
		return usageError("missing --api-socket PATH or --to HOST:PORT")
	}
	if (*key == "") == (*request == "") {
		return usageError("give --request FILE (with --state DIR and --tpm URI), or --insecure-key FILE for the insecure test mode")
	}
	if *conns < 0 || *downtime < 0 || *timeout < 0 || *retries < 0 || *retryDelay < 0 {
		return usageError("--connections, --downtime, --timeout, --remediation-retries and --retry-delay must not be negative")
	}
	if _, err := stream.ParseCompression(*compress); err != nil {
		return usageError("--compress: %v", err)
	}
	req := api.MigrateRequest{To: *to, Connections: *conns, DowntimeMs: *downtime, TimeoutSec: *timeout, Compress: *compress}
	if *key != "" {
		keyPath, err := filepath.Abs(*key)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if _, err := os.Stat(keyPath); err != nil {
			return fmt.Errorf("migrate: key file: %w", err)
		}
		req.KeyFile = keyPath
		fmt.Fprintln(e.stderr, "gvmm: WARNING: --insecure-key: no policy, no attestation, a pre-shared key")
	} else {
		if *state == "" {
			return usageError("--request needs --state DIR (and --tpm URI)")
		}
		b, err := os.ReadFile(*request)
		if err != nil {
			return fmt.Errorf("migrate: request: %w", err)
		}
		if len(b) > policy.MaxDocumentSize {
			return fmt.Errorf("migrate: request %s is larger than %d bytes", *request, policy.MaxDocumentSize)
		}
		// The VM process opens these: give it absolute paths.
		dir, err := filepath.Abs(*state)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		req.Request, req.State, req.TPM = b, dir, *tpmURI
		req.RemediationRetries, req.RetryDelayMs = *retries, int(retryDelay.Milliseconds())
	}
	bar := newProgressPrinter(e.stderr)
	res, err := api.NewClient(*sock).Migrate(ctx, req, func(p api.Progress) {
		if p.Step != "" {
			bar.done()
			fmt.Fprintf(e.stdout, "gate: %s\n", p.Step)
			return
		}
		bar.update(p)
	})
	bar.done()
	if errors.Is(err, api.ErrRefused) {
		msg := strings.TrimPrefix(err.Error(), "migrate: "+api.ErrRefused.Error()+": ")
		fmt.Fprintf(e.stdout, "gate: %s\n", msg)
		return &exitError{code: 3, msg: "migration refused (the source VM keeps running)"}
	}
	if err != nil {
		return fmt.Errorf("%w (the source VM keeps running)", err)
	}
	printMigrateResult(e.stdout, res)
	return nil
}

// printMigrateResult prints a migration's final figures, one per line.
func printMigrateResult(w io.Writer, r api.MigrateResult) {
	fmt.Fprintf(w, "migrated: total %.0f ms, downtime %.1f ms (last dirty pass %.1f, device+vCPU state %.1f, restore %.1f; the destination resumes the guest after that)\n",
		r.TotalMs, r.DowntimeMs, r.LastPassMs, r.StateMs, r.RestoreMs)
	fmt.Fprintf(w, "migrated: %s on the wire, %d pages sent (%d zero, %d compressed), %d passes, throttle up to %d%%, waited %.1f ms for the destination to catch up\n",
		vmm.FormatSize(r.WireBytes), r.PagesSent, r.ZeroPages, r.CompressedPages, r.Passes, r.MaxThrottle, r.CatchUpMs)
	if h := r.Handshake; h != nil {
		fmt.Fprintf(w, "migrated: handshake before the first page %.1f ms (authenticate %.1f, attest %.1f, decide %.1f, key release %.1f), destination %s at %s, %d attempt(s)\n",
			h.TotalMs, h.AuthenticateMs, h.AttestMs, h.DecideMs, h.ReleaseMs, h.Destination, h.Trust, h.Attempts)
	}
}

// progressPrinter shows migration progress: a bar redrawn in place on a
// terminal, plain lines (at most one a second) otherwise.
type progressPrinter struct {
	w     io.Writer
	tty   bool
	last  time.Time
	drawn bool
}

func newProgressPrinter(w io.Writer) *progressPrinter {
	p := &progressPrinter{w: w}
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		p.tty = true
	}
	return p
}

func (p *progressPrinter) update(pr api.Progress) {
	if pr.Phase == "switchover" {
		// Always said, whatever the rate: from here the VM is paused.
		p.done()
		fmt.Fprintf(p.w, "migrate: switchover: the VM is paused; its last pages went in pass %d, its state follows\n", pr.Pass)
		return
	}
	if pr.Phase == "done" {
		return
	}
	line := fmt.Sprintf("pass %d: %d pages sent, %d dirty, %.0f MB/s, throttle %d%%",
		pr.Pass, pr.PagesSent, pr.DirtyPages, pr.BandwidthMBps, pr.ThrottlePercent)
	if !p.tty {
		if time.Since(p.last) >= time.Second {
			p.last = time.Now()
			fmt.Fprintln(p.w, "migrate: "+line)
		}
		return
	}
	const width = 30
	frac := 0.0
	if pr.TotalPages > 0 && pr.Pass <= 1 {
		frac = float64(pr.PagesSent) / float64(pr.TotalPages)
	} else if pr.Pass > 1 {
		frac = 1
	}
	n := min(int(frac*width), width)
	fmt.Fprintf(p.w, "\r[%s%s] %s\x1b[K", strings.Repeat("#", n), strings.Repeat(".", width-n), line)
	p.drawn = true
}

func (p *progressPrinter) done() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
