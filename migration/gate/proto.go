package gate

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"time"

	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/tpm"
)

const (
	protocolVersion = 1
	// maxFrame bounds one control message (evidence with a boot log is the
	// largest).
	maxFrame = 2 << 20
	// bindingLabel is the TLS exporter label of the channel binding.
	bindingLabel = "EXPORTER-gvmm-attest"
	bindingSize  = 32
	// DefaultTimeout bounds the whole handshake on either side.
	DefaultTimeout = 30 * time.Second
)

// Message types.
const (
	msgHello    = "hello"
	msgEvidence = "evidence"
	msgRelease  = "release"
	msgAccept   = "accept"
	msgRefuse   = "refuse"
)

// message is every control message; Type says which fields it carries.
// All of it is hostile until checked.
type message struct {
	Type            string              `json:"type"`
	Version         int                 `json:"version,omitempty"`
	MigrationID     string              `json:"migration_id,omitempty"`
	VM              string              `json:"vm,omitempty"`
	VMPolicy        *policy.VMPolicyDoc `json:"vm_policy,omitempty"`
	Challenge       *tpm.Challenge      `json:"challenge,omitempty"`
	Evidence        *tpm.Evidence       `json:"evidence,omitempty"`
	SourceChallenge *tpm.Challenge      `json:"source_challenge,omitempty"`
	SourceEvidence  *tpm.Evidence       `json:"source_evidence,omitempty"`
	Box             *tpm.EphemeralBox   `json:"box,omitempty"`
	Decision        *policy.Decision    `json:"decision,omitempty"`

	// SourceRuntime is the source's policy.RuntimeReport: the exact bytes
	// its last measured event covers.
	SourceRuntime []byte `json:"source_runtime,omitempty"`
}

func writeMsg(w io.Writer, m *message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("send %s: %w", m.Type, err)
	}
	if len(b) > maxFrame {
		return fmt.Errorf("send %s: %d bytes exceed %d", m.Type, len(b), maxFrame)
	}
	buf := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	if _, err := w.Write(append(buf, b...)); err != nil {
		return fmt.Errorf("send %s: %w", m.Type, err)
	}
	return nil
}

// readMsg reads one frame and decodes it strictly; want lists the types
// acceptable here (a refusal is always acceptable).
func readMsg(r io.Reader, want ...string) (*message, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("receive %v: %w", want, err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxFrame {
		return nil, fmt.Errorf("receive %v: frame of %d bytes exceeds %d", want, n, maxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("receive %v: %w", want, err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var m message
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("receive %v: %w", want, err)
	}
	if d.More() {
		return nil, fmt.Errorf("receive %v: trailing data", want)
	}
	if m.Type == msgRefuse {
		if m.Decision == nil || m.Decision.Allow {
			return nil, fmt.Errorf("receive %v: malformed refusal", want)
		}
		return &m, nil
	}
	for _, w := range want {
		if m.Type == w {
			return &m, nil
		}
	}
	return nil, fmt.Errorf("receive %v: got %q", want, m.Type)
}

// certificate makes a self-signed TLS certificate for an ed25519 host key.
// Nothing in it but the key matters: peers pin the key through their
// directory.
func certificate(key ed25519.PrivateKey, now time.Time) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("host certificate: %w", err)
	}
	pub := key.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "gvmm host " + string(policy.KeyIDOf(pub))},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("host certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// peerHost identifies the peer of a finished handshake by its pinned key.
func peerHost(cs tls.ConnectionState, dir *policy.Directory) (policy.Principal, error) {
	if len(cs.PeerCertificates) != 1 {
		return policy.Principal{}, fmt.Errorf("%w: peer presented %d certificates, want 1", policy.ErrUnknownPrincipal, len(cs.PeerCertificates))
	}
	return dir.HostForCert(cs.PeerCertificates[0])
}

// tlsConfig is mutual TLS 1.3 with the peer pinned by key through dir.
// want, if set, is the only host accepted (the source's destination).
// Go's chain verification is off because there is no CA: the peer's
// certificate is accepted only if its key is a host's in dir, and TLS 1.3
// proved the peer holds that key.
func tlsConfig(h *Host, want policy.KeyID) (*tls.Config, error) {
	cert, err := certificate(h.Key, h.now())
	if err != nil {
		return nil, err
	}
	dir := h.State.Directory()
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cert},
		ClientAuth:         tls.RequireAnyClientCert,
		InsecureSkipVerify: true, // replaced by VerifyConnection's pinning
		ServerName:         "gvmm",
		VerifyConnection: func(cs tls.ConnectionState) error {
			p, err := peerHost(cs, dir)
			if err != nil {
				return err
			}
			if p.ID() == h.Self.ID() {
				return fmt.Errorf("%w: peer presented this host's own key", policy.ErrUnknownPrincipal)
			}
			if want != "" && p.ID() != want {
				return fmt.Errorf("%w: peer is %s (%s), not the requested destination %s", policy.ErrUnknownPrincipal, p.Name, p.ID(), want)
			}
			return nil
		},
	}, nil
}

// channelBinding is this end's TLS exporter value for the quote.
func channelBinding(c *tls.Conn) ([]byte, error) {
	cs := c.ConnectionState()
	if cs.Version != tls.VersionTLS13 {
		return nil, errors.New("channel binding: not TLS 1.3")
	}
	b, err := cs.ExportKeyingMaterial(bindingLabel, nil, bindingSize)
	if err != nil {
		return nil, fmt.Errorf("channel binding: %w", err)
	}
	return b, nil
}

// deadline applies ctx's deadline and cancellation to c.
func deadline(ctx context.Context, c net.Conn, timeout time.Duration) func() {
	d := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	_ = c.SetDeadline(d)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return func() { stop(); _ = c.SetDeadline(time.Time{}) }
}

// verifyPolicy is the tpm.Policy for a peer's evidence: the quote must
// cover exactly the PCR its measurement log covers, the log must be a
// closed gvmm launch (executable, config, policy, closing), followed by
// nothing but run-time events (one per attestation a source made with a
// run-time report, 32 bytes each), that replays to the quoted value, and,
// on a TPM enrolled above software level, the PCR
// must be one that cannot be reset. What the measurement must be is the
// policy evaluator's decision (policy.Rules.Measurements), from the
// verified log; the golden value here is the log's own replay, which
// Verify checks against the signed quote.
func verifyPolicy(ev *tpm.Evidence, v *tpm.Verifier) (*tpm.Policy, error) {
	if ev == nil {
		return nil, errors.New("no evidence")
	}
	lg, err := tpm.ParseLog(ev.Log)
	if err != nil {
		return nil, err
	}
	want := []tpm.EventType{tpm.EventExecutable, tpm.EventConfig, tpm.EventPolicy, tpm.EventClosing}
	if len(lg.Events) < len(want) {
		return nil, fmt.Errorf("%w: measurement log has %d events, a closed gvmm launch has %d", tpm.ErrBadLog, len(lg.Events), len(want))
	}
	for i, e := range lg.Events {
		switch {
		case i < len(want) && e.Type != want[i]:
			return nil, fmt.Errorf("%w: measurement log event %d is %s, want %s", tpm.ErrBadLog, i, e.Type, want[i])
		case i >= len(want) && (e.Type != tpm.EventRuntime || len(e.Data) != sha256.Size):
			return nil, fmt.Errorf("%w: measurement log event %d after the closing event is %s, not a run-time measurement", tpm.ErrBadLog, i, e.Type)
		}
	}
	if h, ok := v.Host(ev.HostID); ok && h.Trust > tpm.TrustSoftware && (lg.PCR == 16 || lg.PCR == 23) {
		return nil, fmt.Errorf("%w: a hardware TPM host measures into resettable PCR %d", tpm.ErrBadLog, lg.PCR)
	}
	g := lg.Replay()
	return &tpm.Policy{
		PCRs: []int{lg.PCR}, MeasuredPCR: lg.PCR,
		Golden:   map[int][][]byte{lg.PCR: {g[:]}},
		MinTrust: tpm.TrustSoftware,
	}, nil
}

// verifyPeer checks a peer's evidence for a challenge this host issued,
// bound to this end of the TLS session, and returns the evaluator's input.
// eph is the receiving key the evidence must bind: nil for any (the
// destination's, then used to release the key), empty for none (the
// source's).
func verifyPeer(v *tpm.Verifier, ev *tpm.Evidence, migrationID string, eph, binding []byte) (*tpm.Result, *policy.Attestation, error) {
	pol, err := verifyPolicy(ev, v)
	if err != nil {
		return nil, nil, fmt.Errorf("verify attestation: %w", err)
	}
	want := tpm.Expect{MigrationID: migrationID, EphemeralPub: eph, ChannelBinding: binding}
	res, err := v.Verify(ev, want, pol)
	if err != nil {
		return nil, nil, fmt.Errorf("verify attestation: %w", err)
	}
	att, err := policy.AttestationFromResult(res)
	if err != nil {
		return nil, nil, fmt.Errorf("verify attestation: %w", err)
	}
	return res, att, nil
}
