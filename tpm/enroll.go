package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// TrustLevel is what the verifier concluded about a host's TPM from what it
// checked itself. Higher is stronger. A host's claims never raise it.
type TrustLevel int

const (
	// TrustNone: not enrolled, or verification failed.
	TrustNone TrustLevel = iota
	// TrustSoftware: an AK proven to live in the same TPM as the EK by
	// credential activation, but nothing proves that TPM is hardware
	// (simulator, swtpm, or a hardware TPM without a verified EK
	// certificate).
	TrustSoftware
	// TrustHardwareEKCert: as TrustSoftware, and the EK's certificate chains
	// to a root in VerifierConfig.EKRoots and certifies the enrolled EK.
	// "Hardware" is the operator's assertion about those roots, not
	// something the verifier can check: a software TPM whose CA is
	// (wrongly) configured there reaches this level too. A chain to
	// VerifierConfig.SoftwareEKRoots stays at TrustSoftware.
	TrustHardwareEKCert
	// TrustHardwareBootLog: as TrustHardwareEKCert, and the host's firmware
	// boot log replayed against quoted PCRs 0-7 (Policy.BootLog). It is a
	// property of one quote, never of an enrolled host.
	TrustHardwareBootLog
)

func (l TrustLevel) String() string {
	switch l {
	case TrustSoftware:
		return "software-tpm"
	case TrustHardwareEKCert:
		return "hardware-tpm-ek-cert"
	case TrustHardwareBootLog:
		return "hardware-tpm-boot-log"
	}
	return "none"
}

// EnrollRequest is what a host sends to enroll. All of it is untrusted.
type EnrollRequest struct {
	EKPublic []byte `json:"ek_public"`
	AKPublic []byte `json:"ak_public"`
	EKCert   []byte `json:"ek_cert,omitempty"`
}

// EnrollChallenge is the verifier's credential-activation challenge: a
// secret only the TPM holding both the EK and the named AK can recover.
type EnrollChallenge struct {
	HostID     string `json:"host_id"`
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"`
}

// EnrolledHost is the verifier's record of a host.
type EnrolledHost struct {
	HostID   string
	EKPublic []byte
	AKPublic []byte
	// EKCert is the EK certificate, kept only when it verified.
	EKCert []byte
	ak     *ecdsa.PublicKey
	Trust  TrustLevel
	// EKCertVerified is set when the host's EK certificate chained to a
	// configured root (either pool) and certified its EK.
	EKCertVerified bool
}

// maxPublic bounds a marshaled TPMT_PUBLIC from outside.
const maxPublic = 1024

// ErrEnroll is returned (wrapped) when enrollment is refused.
var ErrEnroll = errors.New("enrollment refused")

// checkAK parses an AK public area and accepts only gvmm's AK shape:
// restricted ECDSA-P256-SHA256 signing key, fixedTPM, fixedParent,
// generated in the TPM. A restricted key signs only TPM-generated
// structures, so it cannot be made to sign a forged quote.
func checkAK(b []byte) (*tpm2.TPMTPublic, *ecdsa.PublicKey, error) {
	if len(b) == 0 || len(b) > maxPublic {
		return nil, nil, fmt.Errorf("AK public: size %d", len(b))
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, nil, fmt.Errorf("AK public: %w", err)
	}
	if !equalBytes(tpm2.Marshal(pub), b) {
		return nil, nil, errors.New("AK public: trailing or non-canonical bytes")
	}
	a := pub.ObjectAttributes
	switch {
	case pub.Type != tpm2.TPMAlgECC:
		return nil, nil, errors.New("AK is not an ECC key")
	case pub.NameAlg != tpm2.TPMAlgSHA256:
		return nil, nil, errors.New("AK name algorithm is not SHA-256")
	case !a.Restricted:
		return nil, nil, errors.New("AK is not restricted: an unrestricted key can sign forged quotes")
	case !a.SignEncrypt || a.Decrypt:
		return nil, nil, errors.New("AK is not a pure signing key")
	case !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin:
		return nil, nil, errors.New("AK is not fixedTPM/fixedParent/sensitiveDataOrigin")
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, nil, fmt.Errorf("AK parameters: %w", err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 || parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
		return nil, nil, errors.New("AK is not ECDSA P-256")
	}
	det, err := parms.Scheme.Details.ECDSA()
	if err != nil || det.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, nil, errors.New("AK scheme hash is not SHA-256")
	}
	k, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, nil, fmt.Errorf("AK public key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, nil, errors.New("AK public key is not ECDSA")
	}
	return pub, ek, nil
}

// checkEK parses an EK public area: a restricted decryption key in the
// endorsement hierarchy's shape.
func checkEK(b []byte) (*tpm2.TPMTPublic, error) {
	if len(b) == 0 || len(b) > maxPublic {
		return nil, fmt.Errorf("EK public: size %d", len(b))
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, fmt.Errorf("EK public: %w", err)
	}
	if !equalBytes(tpm2.Marshal(pub), b) {
		return nil, errors.New("EK public: trailing or non-canonical bytes")
	}
	a := pub.ObjectAttributes
	if !a.Restricted || !a.Decrypt || a.SignEncrypt || !a.FixedTPM || !a.FixedParent || pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, errors.New("EK public: not a restricted SHA-256 decryption key")
	}
	return pub, nil
}

// EKPublicKey returns the public key of a marshaled EK public area (for
// example to issue or inspect its certificate), after checking its shape.
func EKPublicKey(ekPublic []byte) (crypto.PublicKey, error) {
	pub, err := checkEK(ekPublic)
	if err != nil {
		return nil, err
	}
	k, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, fmt.Errorf("EK public key: %w", err)
	}
	return k, nil
}

func equalBytes(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

// PendingEnrollment is the verifier's private half of a credential
// challenge: the host's (still unproven) EK, AK and EK certificate and the
// secret the host must return. It never leaves the verifier; the CLI keeps
// it MACed in the verifier's directory (SealPending) and consumes it once.
type PendingEnrollment struct {
	HostID   string    `json:"host_id"`
	EKPublic []byte    `json:"ek_public"`
	AKPublic []byte    `json:"ak_public"`
	EKCert   []byte    `json:"ek_cert,omitempty"`
	Secret   []byte    `json:"secret"`
	Expires  time.Time `json:"expires"`
}

// maxEKCert bounds an EK certificate from outside.
const maxEKCert = 4096

// MakeEnrollChallenge checks a host's EK and AK shapes and makes a
// credential (TPM2_MakeCredential, done in software) that only the TPM
// holding both that EK and that AK can activate. It keeps no state: the
// caller keeps the returned PendingEnrollment and finishes it with
// Verifier.FinishPendingEnroll. The host id is computed here from the EK.
// The EK certificate is only carried: it is checked at finish time against
// the finishing verifier's roots.
func MakeEnrollChallenge(req EnrollRequest, expires time.Time) (*EnrollChallenge, *PendingEnrollment, error) {
	ekPub, err := checkEK(req.EKPublic)
	if err != nil {
		return nil, nil, fmt.Errorf("make enroll challenge: %w: %w", ErrEnroll, err)
	}
	akPub, _, err := checkAK(req.AKPublic)
	if err != nil {
		return nil, nil, fmt.Errorf("make enroll challenge: %w: %w", ErrEnroll, err)
	}
	if len(req.EKCert) > maxEKCert {
		return nil, nil, fmt.Errorf("make enroll challenge: %w: EK certificate larger than %d bytes", ErrEnroll, maxEKCert)
	}
	akName, err := tpm2.ObjectName(akPub)
	if err != nil {
		return nil, nil, fmt.Errorf("make enroll challenge: %w", err)
	}
	encap, err := tpm2.ImportEncapsulationKey(ekPub)
	if err != nil {
		return nil, nil, fmt.Errorf("make enroll challenge: %w: EK: %w", ErrEnroll, err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, nil, fmt.Errorf("make enroll challenge: %w", err)
	}
	cred, encSecret, err := tpm2.CreateCredential(rand.Reader, encap, akName.Buffer, secret)
	if err != nil {
		return nil, nil, fmt.Errorf("make enroll challenge: make credential: %w", err)
	}
	hostID := HostIDFromEK(req.EKPublic)
	p := &PendingEnrollment{
		HostID: hostID, EKPublic: bytes.Clone(req.EKPublic), AKPublic: bytes.Clone(req.AKPublic),
		EKCert: bytes.Clone(req.EKCert), Secret: secret, Expires: expires,
	}
	return &EnrollChallenge{HostID: hostID, Credential: cred, Secret: encSecret}, p, nil
}

// BeginEnroll checks a host's EK, AK and EK certificate and returns a
// credential challenge, kept in memory until FinishEnroll. The host id and
// trust level are computed by the verifier, never taken from the host; a
// certificate that does not verify refuses enrollment here already.
func (v *Verifier) BeginEnroll(req EnrollRequest) (*EnrollChallenge, error) {
	ch, p, err := MakeEnrollChallenge(req, v.now().Add(v.cfg.NonceTTL))
	if err != nil {
		return nil, fmt.Errorf("begin enroll: %w", err)
	}
	ekPub, err := checkEK(p.EKPublic)
	if err != nil {
		return nil, fmt.Errorf("begin enroll: %w: %w", ErrEnroll, err)
	}
	if _, _, err := v.ekCertTrust(p.EKCert, ekPub); err != nil {
		return nil, fmt.Errorf("begin enroll: %w: %w", ErrEnroll, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pruneLocked()
	if len(v.pending) >= maxOutstanding {
		return nil, fmt.Errorf("begin enroll: too many outstanding enrollments")
	}
	v.pending[p.HostID] = p
	return ch, nil
}

// ekCertTrust computes the trust level an EK certificate earns. No
// certificate, or no roots configured: TrustSoftware. A certificate that
// chains to SoftwareEKRoots: TrustSoftware, verified. One that chains to
// EKRoots: TrustHardwareEKCert. A certificate that chains to no configured
// root, or certifies another key, is an error: a host that presents a
// certificate that does not hold is refused, not downgraded.
func (v *Verifier) ekCertTrust(der []byte, ek *tpm2.TPMTPublic) (TrustLevel, bool, error) {
	if len(der) == 0 {
		return TrustSoftware, false, nil
	}
	if v.cfg.EKRoots == nil && v.cfg.SoftwareEKRoots == nil {
		v.log.Warn("EK certificate presented but no EK roots configured; treating as software TPM")
		return TrustSoftware, false, nil
	}
	var errs []error
	if v.cfg.SoftwareEKRoots != nil {
		err := verifyEKCert(der, v.cfg.SoftwareEKRoots, v.cfg.EKIntermediates, ek, v.now())
		if err == nil {
			return TrustSoftware, true, nil
		}
		errs = append(errs, fmt.Errorf("software EK roots: %w", err))
	}
	if v.cfg.EKRoots != nil {
		err := verifyEKCert(der, v.cfg.EKRoots, v.cfg.EKIntermediates, ek, v.now())
		if err == nil {
			return TrustHardwareEKCert, true, nil
		}
		errs = append(errs, fmt.Errorf("hardware EK roots: %w", err))
	}
	return TrustNone, false, errors.Join(errs...)
}

// FinishEnroll completes an in-memory enrollment if the host returned the
// challenge's secret. The challenge is single-use: any answer discards it.
func (v *Verifier) FinishEnroll(hostID string, secret []byte) (*EnrolledHost, error) {
	v.mu.Lock()
	p, ok := v.pending[hostID]
	delete(v.pending, hostID)
	v.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("finish enroll %s: %w: no outstanding challenge", hostID, ErrEnroll)
	}
	return v.FinishPendingEnroll(p, secret)
}

// FinishPendingEnroll completes an enrollment whose challenge state the
// caller kept (and has already removed from wherever it kept it, so that
// it is answered at most once). It checks the expiry and the returned
// secret, checks the EK and AK again, computes the trust level from the EK
// certificate against this verifier's roots, and records the host.
func (v *Verifier) FinishPendingEnroll(p *PendingEnrollment, secret []byte) (*EnrolledHost, error) {
	if p == nil {
		return nil, fmt.Errorf("finish enroll: %w: no challenge", ErrEnroll)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("finish enroll %s: %w: %s", p.HostID, ErrEnroll, fmt.Sprintf(format, args...))
	}
	if v.now().After(p.Expires) {
		return nil, fail("challenge expired at %s", p.Expires.Format(time.RFC3339))
	}
	if len(p.Secret) != 32 || !equalBytes(secret, p.Secret) {
		return nil, fail("wrong credential secret (AK not in the TPM holding this EK)")
	}
	ekPub, err := checkEK(p.EKPublic)
	if err != nil {
		return nil, fmt.Errorf("finish enroll %s: %w: %w", p.HostID, ErrEnroll, err)
	}
	_, ak, err := checkAK(p.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("finish enroll %s: %w: %w", p.HostID, ErrEnroll, err)
	}
	if HostIDFromEK(p.EKPublic) != p.HostID {
		return nil, fail("host id does not match the EK")
	}
	trust, certOK, err := v.ekCertTrust(p.EKCert, ekPub)
	if err != nil {
		return nil, fmt.Errorf("finish enroll %s: %w: %w", p.HostID, ErrEnroll, err)
	}
	h := EnrolledHost{
		HostID: p.HostID, EKPublic: bytes.Clone(p.EKPublic), AKPublic: bytes.Clone(p.AKPublic),
		ak: ak, Trust: trust, EKCertVerified: certOK,
	}
	if certOK {
		h.EKCert = bytes.Clone(p.EKCert)
	}
	v.mu.Lock()
	v.hosts[h.HostID] = &h
	v.mu.Unlock()
	v.log.Info("host enrolled", "host", h.HostID, "trust", h.Trust)
	out := h
	return &out, nil
}

// EnrollRequest returns this TPM's enrollment request.
func (t *TPM) EnrollRequest(ctx context.Context) (*EnrollRequest, error) {
	id, err := t.Identity(ctx)
	if err != nil {
		return nil, fmt.Errorf("enroll request: %w", err)
	}
	return &EnrollRequest{EKPublic: id.EKPublic, AKPublic: id.AKPublic, EKCert: id.EKCert}, nil
}

// ActivateCredential recovers the secret of a credential challenge. It
// succeeds only in the TPM that holds both the EK the challenge was made
// for and the AK it names.
func (t *TPM) ActivateCredential(ctx context.Context, ch *EnrollChallenge) ([]byte, error) {
	if len(ch.Credential) > maxPublic || len(ch.Secret) > maxPublic {
		return nil, errors.New("activate credential: challenge too large")
	}
	var out []byte
	err := t.do(ctx, func(tr transportTPM) error {
		ek, _, doneEK, err := ekHandle(tr)
		if err != nil {
			return err
		}
		defer doneEK()
		ak, _, doneAK, err := akHandle(tr)
		if err != nil {
			return err
		}
		defer doneAK()
		rsp, err := tpm2.ActivateCredential{
			ActivateHandle: tpm2.AuthHandle{Handle: ak.Handle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
			KeyHandle:      tpm2.AuthHandle{Handle: ek.Handle, Name: ek.Name, Auth: ekSession()},
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: ch.Credential},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: ch.Secret},
		}.Execute(tr)
		if err != nil {
			return err
		}
		out = rsp.CertInfo.Buffer
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	return out, nil
}

// oidSubjectAltName is the SAN extension, which TCG EK certificates mark
// critical (with a directoryName Go's x509 does not handle).
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// verifyEKCert checks an EK certificate against manufacturer roots and the
// EK it must certify. The critical SAN extension (TPM manufacturer, model,
// version as a directoryName) is checked to be present and parseable here,
// then removed from the unhandled list so x509.Verify can check the chain.
func verifyEKCert(der []byte, roots, inter *x509.CertPool, ek *tpm2.TPMTPublic, now time.Time) error {
	if len(der) > maxEKCert {
		return errors.New("EK certificate too large")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("EK certificate: %w", err)
	}
	var rest []asn1.ObjectIdentifier
	for _, oid := range cert.UnhandledCriticalExtensions {
		if oid.Equal(oidSubjectAltName) {
			var seq asn1.RawValue
			for _, e := range cert.Extensions {
				if e.Id.Equal(oidSubjectAltName) {
					if _, err := asn1.Unmarshal(e.Value, &seq); err != nil {
						return fmt.Errorf("EK certificate SAN: %w", err)
					}
				}
			}
			continue
		}
		rest = append(rest, oid)
	}
	cert.UnhandledCriticalExtensions = rest
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return fmt.Errorf("EK certificate chain: %w", err)
	}
	want, err := tpm2.Pub(*ek)
	if err != nil {
		return fmt.Errorf("EK public key: %w", err)
	}
	// crypto.PublicKey is a defined type, not an alias of any: an interface
	// spelled Equal(any) matches no key type and refused every certificate.
	type equaler interface {
		Equal(crypto.PublicKey) bool
	}
	if e, ok := cert.PublicKey.(equaler); !ok || !e.Equal(want) {
		return errors.New("EK certificate does not certify this EK")
	}
	return nil
}
