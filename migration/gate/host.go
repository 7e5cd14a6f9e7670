package gate

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/policy/audit"
	"github.com/gvmm/gvmm/tpm"
)

// Files and blobs in a host state directory, besides package tpm's.
const (
	// HostKeyBlob is the host's ed25519 principal key (PKCS#8) in the
	// sealed store: its TLS certificates carry it.
	HostKeyBlob = "host-ed25519"
	// AuditFile is the host's audit log.
	AuditFile = "audit.log"
	// VerifierDir holds the verifier's MAC key for enrolled records.
	VerifierDir = "verifier"
	// EnrolledDir holds the records of the hosts this host enrolled.
	EnrolledDir = "enrolled"
	// maxEnrolled bounds how many records are loaded.
	maxEnrolled = 1024
	maxRecord   = 64 << 10
)

// KindOpenHost is the audit kind of a host that could not open its sealed
// trust state (and so refuses every migration).
const KindOpenHost = "open-host"

// ErrHostKey is returned when the sealed store holds no host key.
var ErrHostKey = errors.New("no host key in the sealed store (run gvmm policy hostkey)")

// Host is one host's opened trust state: everything the gate needs from
// it. OpenHost makes one from a state directory; tests may assemble one.
type Host struct {
	// Self is this host's directory entry (its key's).
	Self policy.Principal
	// Key is this host's ed25519 principal key.
	Key ed25519.PrivateKey
	// State is the host's policy state; Store the sealed store it is
	// saved to (nil: not saved, for tests).
	State *policy.HostState
	Store policy.BlobStore
	// TPM quotes for this host; LaunchLog is its closed measured launch.
	// TPMHostID is the TPM's host id (tpm.HostIDFromEK).
	TPM       *tpm.TPM
	LaunchLog *tpm.Log
	TPMHostID string
	// Verifier holds the hosts this host enrolled, and issues nonces.
	Verifier *tpm.Verifier
	// Audit receives every decision.
	Audit *audit.Log
	// Now is the clock (nil: time.Now); Logger receives debug events.
	Now    func() time.Time
	Logger *slog.Logger

	// saveMu serialises saves of State.
	saveMu sync.Mutex
	// logMu serialises extending LaunchLog with the quotes made over it.
	logMu sync.Mutex
}

func (h *Host) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

func (h *Host) log() *slog.Logger {
	if h.Logger != nil {
		return h.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// save writes the policy state to the sealed store.
func (h *Host) save() error {
	if h.Store == nil {
		return nil
	}
	h.saveMu.Lock()
	defer h.saveMu.Unlock()
	return policy.SaveHostState(h.Store, h.State)
}

// record appends a decision to the audit log. A decision that cannot be
// recorded is an error: the gate refuses rather than act unaudited.
func (h *Host) record(ev audit.Event) error {
	if h.Audit == nil {
		return errors.New("audit: no audit log")
	}
	if ev.Host == "" {
		ev.Host = h.Self.ID()
	}
	if _, err := h.Audit.Append(ev); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// HostKey reads the host's ed25519 key from the sealed store; with create
// it makes one if there is none.
func HostKey(st policy.BlobStore, create bool) (ed25519.PrivateKey, error) {
	b, err := st.Get(HostKeyBlob)
	if err == nil {
		k, err := x509.ParsePKCS8PrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("host key: %w", err)
		}
		ek, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, errors.New("host key: not ed25519")
		}
		return ek, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("host key: %w", err)
	}
	if !create {
		return nil, ErrHostKey
	}
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	if err := st.Put(HostKeyBlob, der); err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	return k, nil
}

// OpenOptions configures OpenHost.
type OpenOptions struct {
	// Executable is measured as gvmm (default /proc/self/exe: the image
	// that runs, whatever happened to its path since).
	Executable string
	// Approvals are tried besides those in the state's approvals/.
	Approvals []*tpm.Approval
	// NeedState refuses a store without a policy state (and without a
	// host key); false opens a store that is being set up.
	NeedState bool
	// StoreOnly stops after unsealing the store: no policy state, host
	// key or verifier is loaded (for setting them up).
	StoreOnly bool
	// Now is the clock; Logger receives debug events.
	Now    func() time.Time
	Logger *slog.Logger
}

// Opened is a host state directory whose sealed store was opened by a
// measured launch. Host is nil unless the policy state and host key exist.
type Opened struct {
	Store *tpm.Store
	Log   *tpm.Log
	Info  *tpm.HostInfo
	Host  *Host
}

// OpenHost measures gvmm into tp, unseals the state directory's store
// (a PolicyAuthorize host needs an approval of these measurements), and
// closes the launch whatever happens, so nothing else in this launch can
// unseal. A changed gvmm cannot unseal the store and is refused here. With
// the policy state present it loads the host key, the directory entry, the
// enrolled hosts and the audit log into a Host.
func OpenHost(ctx context.Context, tp *tpm.TPM, dir string, opts OpenOptions) (op *Opened, err error) {
	exe := opts.Executable
	if exe == "" {
		exe = "/proc/self/exe"
	}
	info, err := tpm.ReadHostInfo(dir)
	if err != nil {
		return nil, fmt.Errorf("open host: %w", err)
	}
	approvals, err := tpm.LoadApprovals(dir)
	if err != nil {
		return nil, fmt.Errorf("open host: %w", err)
	}
	approvals = append(approvals, opts.Approvals...)
	lg, err := tp.MeasureLaunch(ctx, tpm.LaunchInputs{Executable: exe}, nil)
	if err != nil {
		return nil, fmt.Errorf("open host: %w", err)
	}
	defer func() {
		if cerr := tp.CloseLaunch(context.WithoutCancel(ctx), lg); cerr != nil {
			op, err = nil, fmt.Errorf("open host: %w", cerr)
		}
	}()
	// A host that cannot open its trust state refuses everything; the
	// audit log (outside the sealed store) says why.
	refuse := func(rule string, err error) error {
		d := policy.Deny(policy.StagePrecheck, rule, err)
		if al, aerr := audit.Open(filepath.Join(dir, AuditFile), opts.Now); aerr == nil {
			_, _ = al.Append(audit.Event{Kind: KindOpenHost, Decision: d})
			al.Close()
		}
		return &RefusedError{Decision: d, Err: err}
	}
	st, err := tpm.OpenHostStoreApproved(ctx, tp, dir, nil, approvals)
	if err != nil {
		return nil, refuse("sealed-state", fmt.Errorf("open host %s: gvmm's measurements do not unseal its store (changed or unapproved gvmm?): %w", dir, err))
	}
	op = &Opened{Store: st, Log: lg, Info: info}
	id, err := tp.Identity(ctx)
	if err != nil {
		return nil, fmt.Errorf("open host: %w", err)
	}
	if id.HostID != info.HostID {
		return nil, refuse("sealed-state", fmt.Errorf("open host: %s belongs to TPM host %s, this TPM is %s", dir, info.HostID, id.HostID))
	}
	if opts.StoreOnly {
		return op, nil
	}
	state, err := policy.LoadHostState(st)
	if err != nil {
		if !opts.NeedState && errors.Is(err, fs.ErrNotExist) {
			return op, nil
		}
		return nil, refuse("policy-state", fmt.Errorf("open host: policy state (run gvmm policy init): %w", err))
	}
	key, err := HostKey(st, false)
	if err != nil {
		return nil, refuse("policy-state", fmt.Errorf("open host: %w", err))
	}
	self, ok := state.Directory().Lookup(policy.KeyIDOf(key.Public().(ed25519.PublicKey)))
	if !ok || self.Kind != policy.KindHost {
		return nil, fmt.Errorf("open host: %w: this host's key is not a host in its own directory", policy.ErrUnknownPrincipal)
	}
	if self.TPMHostID != id.HostID {
		return nil, fmt.Errorf("open host: the directory says this host's TPM is %q, it is %s", self.TPMHostID, id.HostID)
	}
	v, err := LoadVerifier(dir, tpm.VerifierConfig{Now: opts.Now, Log: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("open host: %w", err)
	}
	al, err := audit.Open(filepath.Join(dir, AuditFile), opts.Now)
	if err != nil {
		return nil, fmt.Errorf("open host: %w", err)
	}
	op.Host = &Host{
		Self: self, Key: key, State: state, Store: st,
		TPM: tp, LaunchLog: lg, TPMHostID: id.HostID,
		Verifier: v, Audit: al, Now: opts.Now, Logger: opts.Logger,
	}
	return op, nil
}

// LoadVerifier returns a verifier holding every enrolled record in
// dir/enrolled/*.json, MACed with the key in dir/verifier. Without a
// verifier directory it holds no host (and verifies nothing).
func LoadVerifier(dir string, cfg tpm.VerifierConfig) (*tpm.Verifier, error) {
	v := tpm.NewVerifier(cfg)
	names, err := filepath.Glob(filepath.Join(dir, EnrolledDir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("load enrolled hosts: %w", err)
	}
	if len(names) == 0 {
		return v, nil
	}
	if len(names) > maxEnrolled {
		return nil, fmt.Errorf("load enrolled hosts: %d records exceed %d", len(names), maxEnrolled)
	}
	key, err := tpm.LoadVerifierKey(filepath.Join(dir, VerifierDir), false)
	if err != nil {
		return nil, fmt.Errorf("load enrolled hosts: %w", err)
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := readLimited(n, maxRecord)
		if err != nil {
			return nil, fmt.Errorf("load enrolled hosts: %w", err)
		}
		if _, err := v.AddEnrolledRecord(key, b); err != nil {
			return nil, fmt.Errorf("load enrolled hosts: %s: %w", n, err)
		}
	}
	return v, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return os.ReadFile(path)
}

// Close closes the audit log. The TPM is the caller's.
func (h *Host) Close() error {
	if h.Audit != nil {
		return h.Audit.Close()
	}
	return nil
}
