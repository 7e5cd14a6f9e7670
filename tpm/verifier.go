package tpm

import (
	"crypto/x509"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// maxOutstanding bounds outstanding nonces and enrollment challenges, so a
// flood of challenge requests cannot exhaust the verifier's memory.
const maxOutstanding = 4096

// DefaultNonceTTL is how long a challenge nonce stays valid.
const DefaultNonceTTL = 30 * time.Second

// VerifierConfig configures a Verifier. The zero value is usable: no
// EK roots (every host is at most TrustSoftware and EK certificates are
// ignored), DefaultNonceTTL,
// the wall clock, no logging.
type VerifierConfig struct {
	// EKRoots are hardware TPM manufacturers' roots. An EK certificate that
	// chains to one of them gives TrustHardwareEKCert. The verifier cannot
	// tell a hardware manufacturer's CA from any other CA: putting a root
	// here is the operator's assertion that everything it certifies is a
	// hardware TPM. Never put a software TPM's CA here (swtpm's local CA,
	// a cloud's vTPM CA): use SoftwareEKRoots.
	EKRoots *x509.CertPool
	// SoftwareEKRoots are CAs known to certify software TPMs (swtpm_localca,
	// a vTPM manufacturer). An EK certificate that chains to one is verified
	// (and must certify the EK) but the host stays at TrustSoftware, with
	// EnrolledHost.EKCertVerified set. A root in both pools counts as
	// software: the lower level wins.
	SoftwareEKRoots *x509.CertPool
	// EKIntermediates are optional intermediates for either pool.
	EKIntermediates *x509.CertPool
	// NonceTTL is the lifetime of challenges.
	NonceTTL time.Duration
	// Now is the clock (injected for tests).
	Now func() time.Time
	// Log receives audit messages.
	Log *slog.Logger
}

// Verifier enrolls hosts and verifies their evidence. It keeps the enrolled
// AKs and the outstanding nonces in memory; it is safe for concurrent use.
type Verifier struct {
	cfg VerifierConfig
	log *slog.Logger

	mu sync.Mutex
	// nonces are outstanding challenges, keyed by nonce; an entry is
	// removed the first time evidence names it (guarded by mu).
	nonces map[[32]byte]*Challenge
	// pending are outstanding enrollments by host id (guarded by mu).
	pending map[string]*PendingEnrollment
	// hosts are enrolled hosts by host id (guarded by mu).
	hosts map[string]*EnrolledHost
}

// NewVerifier returns a verifier with no enrolled hosts.
func NewVerifier(cfg VerifierConfig) *Verifier {
	if cfg.NonceTTL <= 0 {
		cfg.NonceTTL = DefaultNonceTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Verifier{
		cfg:     cfg,
		log:     log,
		nonces:  make(map[[32]byte]*Challenge),
		pending: make(map[string]*PendingEnrollment),
		hosts:   make(map[string]*EnrolledHost),
	}
}

func (v *Verifier) now() time.Time { return v.cfg.Now() }

// pruneLocked drops expired nonces and enrollments. v.mu must be held.
func (v *Verifier) pruneLocked() {
	now := v.now()
	for k, c := range v.nonces {
		if now.After(c.Expires) {
			delete(v.nonces, k)
		}
	}
	for k, p := range v.pending {
		if now.After(p.Expires) {
			delete(v.pending, k)
		}
	}
}

// Host returns an enrolled host's record.
func (v *Verifier) Host(hostID string) (*EnrolledHost, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	h, ok := v.hosts[hostID]
	return h, ok
}

// ExpectNonce registers a nonce issued outside this Verifier (for example
// by an operator running "gvmm verify" once per challenge). It is then
// single-use and expires like one from Challenge. The caller is
// responsible for the nonce's freshness.
func (v *Verifier) ExpectNonce(nonce []byte, migrationID string, expires time.Time) error {
	if len(nonce) != nonceSize || migrationID == "" || len(migrationID) > maxIDLen {
		return errors.New("expect nonce: nonce must be 32 bytes and migration id 1-128 bytes")
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pruneLocked()
	if len(v.nonces) >= maxOutstanding {
		return errors.New("expect nonce: too many outstanding challenges")
	}
	v.nonces[[nonceSize]byte(nonce)] = &Challenge{Nonce: nonce, MigrationID: migrationID, Expires: expires}
	return nil
}
