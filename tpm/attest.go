package tpm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// Challenge is a verifier's attestation challenge.
type Challenge struct {
	Nonce       []byte    `json:"nonce"`
	MigrationID string    `json:"migration_id"`
	Expires     time.Time `json:"expires"`
}

// Evidence is what a host returns for a challenge. It carries no AK: the
// verifier uses only the AK it enrolled. All of it is untrusted.
type Evidence struct {
	Version     int    `json:"version"`
	HostID      string `json:"host_id"`
	MigrationID string `json:"migration_id"`
	Nonce       []byte `json:"nonce"`
	// EphemeralPub is the key that will receive secrets (an uncompressed
	// P-256 point, or empty).
	EphemeralPub []byte `json:"ephemeral_pub"`
	// PCRs and PCRValues are the quoted SHA-256 PCRs and their values.
	PCRs      []int    `json:"pcrs"`
	PCRValues [][]byte `json:"pcr_values"`
	// Quoted is the TPMS_ATTEST the TPM signed; SigR/SigS the signature.
	Quoted []byte `json:"quoted"`
	SigR   []byte `json:"sig_r"`
	SigS   []byte `json:"sig_s"`
	// Log is the encoded measurement log of the measured PCR.
	Log []byte `json:"log"`
	// BootLog is the firmware's TCG event log (crypto-agile, as in
	// /sys/kernel/security/tpm0/binary_bios_measurements), for a policy
	// that replays PCRs 0-7. Empty otherwise.
	BootLog []byte `json:"boot_log,omitempty"`
	// ChannelBinding is the secure channel the quote was made for (a TLS
	// exporter value the host computed from its own end), or empty. It
	// is part of the quote's extra data.
	ChannelBinding []byte `json:"channel_binding,omitempty"`
}

const (
	evidenceVersion = 1
	nonceSize       = 32
	maxIDLen        = 128
	maxEvidence     = 1 << 20 // room for a base64 boot log of maxBootLog
	// quoteDomain separates gvmm quote extra data from anything else;
	// quoteDomainBound is the domain of extra data with a channel binding.
	quoteDomain      = "gvmm-quote-v1\x00"
	quoteDomainBound = "gvmm-quote-v2-channel\x00"
	// MaxChannelBinding bounds a channel binding.
	MaxChannelBinding = 64
)

// ParseEvidence decodes evidence from an untrusted source: size-limited,
// unknown fields (such as an AK the host would like used) rejected.
func ParseEvidence(r io.Reader) (*Evidence, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxEvidence+1))
	if err != nil {
		return nil, fmt.Errorf("parse evidence: %w", err)
	}
	if len(b) > maxEvidence {
		return nil, fmt.Errorf("parse evidence: %w: larger than %d bytes", ErrEvidence, maxEvidence)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var ev Evidence
	if err := d.Decode(&ev); err != nil {
		return nil, fmt.Errorf("parse evidence: %w: %w", ErrEvidence, err)
	}
	if d.More() {
		return nil, fmt.Errorf("parse evidence: %w: trailing data", ErrEvidence)
	}
	return &ev, nil
}

// QuoteExtraData is the quote's qualifying data: SHA-256 over the domain
// and the length-prefixed nonce, migration id, host id and ephemeral key.
// A quote made for one of them is useless for any other.
func QuoteExtraData(nonce []byte, migrationID, hostID string, ephemeralPub []byte) []byte {
	return QuoteExtraDataBound(nonce, migrationID, hostID, ephemeralPub, nil)
}

// QuoteExtraDataBound is QuoteExtraData with a channel binding (a TLS
// exporter value): with one, the domain differs and the binding is a fifth
// length-prefixed field, so a quote made for one TLS session is useless in
// any other. Without one it equals QuoteExtraData.
func QuoteExtraDataBound(nonce []byte, migrationID, hostID string, ephemeralPub, binding []byte) []byte {
	h := sha256.New()
	fields := [][]byte{nonce, []byte(migrationID), []byte(hostID), ephemeralPub}
	if len(binding) == 0 {
		h.Write([]byte(quoteDomain))
	} else {
		h.Write([]byte(quoteDomainBound))
		fields = append(fields, binding)
	}
	for _, f := range fields {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		h.Write(n[:])
		h.Write(f)
	}
	return h.Sum(nil)
}

// Attest quotes pcrs with gvmm's AK for challenge ch and returns evidence.
func (t *TPM) Attest(ctx context.Context, ch *Challenge, hostID string, ephemeralPub []byte, pcrs []int, log *Log) (*Evidence, error) {
	return t.AttestBound(ctx, ch, hostID, ephemeralPub, nil, pcrs, log)
}

// AttestBound is Attest for a quote also bound to a secure channel:
// binding is what this host computed from its own end of the channel
// (never a value the peer sent).
func (t *TPM) AttestBound(ctx context.Context, ch *Challenge, hostID string, ephemeralPub, binding []byte, pcrs []int, log *Log) (*Evidence, error) {
	if len(ch.Nonce) != nonceSize || len(ch.MigrationID) > maxIDLen || len(binding) > MaxChannelBinding {
		return nil, errors.New("attest: malformed challenge")
	}
	pcrs = sortedPCRs(pcrs)
	sel, err := pcrSelection(pcrs)
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	logBytes, err := log.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	ev := &Evidence{
		Version: evidenceVersion, HostID: hostID, MigrationID: ch.MigrationID,
		Nonce: ch.Nonce, EphemeralPub: ephemeralPub, PCRs: pcrs, Log: logBytes,
		ChannelBinding: bytes.Clone(binding),
	}
	extra := QuoteExtraDataBound(ch.Nonce, ch.MigrationID, hostID, ephemeralPub, binding)
	err = t.do(ctx, func(tr transportTPM) error {
		ak, _, done, err := akHandle(tr)
		if err != nil {
			return err
		}
		defer done()
		rsp, err := tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: ak.Handle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: extra},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
			},
			PCRSelect: sel,
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("quote: %w", err)
		}
		r, s, err := ecdsaSignature(&rsp.Signature)
		if err != nil {
			return fmt.Errorf("quote: %w", err)
		}
		ev.Quoted = rsp.Quoted.Bytes()
		ev.SigR, ev.SigS = r.Bytes(), s.Bytes()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	// The values are read after the quote; if a PCR changed in between the
	// verifier's digest check fails, which is the safe outcome.
	vals, err := t.ReadPCRs(ctx, pcrs)
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	for _, p := range pcrs {
		v := vals[p]
		ev.PCRValues = append(ev.PCRValues, v[:])
	}
	return ev, nil
}

// Challenge issues a single-use nonce for migrationID that expires after
// the configured TTL.
func (v *Verifier) Challenge(migrationID string) (*Challenge, error) {
	if migrationID == "" || len(migrationID) > maxIDLen {
		return nil, errors.New("challenge: migration id must be 1-128 bytes")
	}
	var n [nonceSize]byte
	if _, err := rand.Read(n[:]); err != nil {
		return nil, fmt.Errorf("challenge: %w", err)
	}
	c := &Challenge{Nonce: n[:], MigrationID: migrationID, Expires: v.now().Add(v.cfg.NonceTTL)}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pruneLocked()
	if len(v.nonces) >= maxOutstanding {
		return nil, errors.New("challenge: too many outstanding challenges")
	}
	v.nonces[n] = c
	return c, nil
}

// Policy is what the verifier requires of a host's measured state.
type Policy struct {
	// PCRs is the exact SHA-256 PCR selection a quote must cover.
	PCRs []int `json:"pcrs"`
	// MeasuredPCR is the PCR gvmm's measurement log covers; it must be in
	// PCRs, and the log must replay to its quoted value.
	MeasuredPCR int `json:"measured_pcr"`
	// Golden lists, per selected PCR, the values accepted. Every PCR in
	// PCRs must have at least one.
	Golden map[int][][]byte `json:"golden"`
	// BootLog requires the evidence to carry the firmware boot log and
	// replays it against the quoted PCRs 0-7, which must then be in PCRs
	// (and MeasuredPCR must not be one of them). Golden values for PCRs
	// 0-7 are optional with it: the replay checks them, and any given
	// must match too. Only a quote whose boot log replays, from a host
	// enrolled at TrustHardwareEKCert, earns TrustHardwareBootLog.
	BootLog bool `json:"boot_log,omitempty"`
	// MinTrust is the lowest trust level accepted.
	MinTrust TrustLevel `json:"min_trust"`
}

// Expect is what the caller of Verify knows independently of the evidence.
type Expect struct {
	// MigrationID the evidence must be bound to.
	MigrationID string
	// EphemeralPub, if set, is the receiving key the evidence must bind.
	EphemeralPub []byte
	// ChannelBinding, if set, is the verifier's own end of the secure
	// channel the evidence must have been made for.
	ChannelBinding []byte
}

// Result is a successful verification.
type Result struct {
	HostID       string
	MigrationID  string
	Trust        TrustLevel
	EphemeralPub []byte
	PCRs         map[int][32]byte
	// Events is what was measured, from the replayed log.
	Events []Event
	// BootEvents are the firmware boot log's events, when the policy
	// replayed one.
	BootEvents []BootEvent
}

// Verification errors. Every failure wraps ErrEvidence and one of these
// where it applies.
var (
	ErrEvidence       = errors.New("evidence rejected")
	ErrNonceUnknown   = errors.New("nonce unknown, already used or forged")
	ErrNonceExpired   = errors.New("nonce expired")
	ErrNotEnrolled    = errors.New("host not enrolled")
	ErrBinding        = errors.New("quote not bound to this nonce, migration, host and key")
	ErrSignature      = errors.New("quote signature invalid for the enrolled AK")
	ErrPCRSelection   = errors.New("quote PCR selection differs from policy")
	ErrPCRMismatch    = errors.New("PCR values differ from the quote, log or golden values")
	ErrTrustTooLow    = errors.New("host trust level below policy")
	ErrPolicyInvalid  = errors.New("verification policy invalid")
	errEvidenceFields = errors.New("malformed evidence fields")
)

func reject(kind error, format string, args ...any) error {
	if format == "" {
		return fmt.Errorf("verify evidence: %w: %w", ErrEvidence, kind)
	}
	return fmt.Errorf("verify evidence: %w: %w: %s", ErrEvidence, kind, fmt.Sprintf(format, args...))
}

// Verify checks evidence against the verifier's enrolled hosts and
// outstanding nonces and against policy. The nonce is consumed first, so
// evidence for it is accepted at most once even if verification fails.
func (v *Verifier) Verify(ev *Evidence, want Expect, pol *Policy) (*Result, error) {
	// Sizes and shapes first: everything below is hostile until checked.
	if ev == nil || pol == nil {
		return nil, reject(errEvidenceFields, "nil evidence or policy")
	}
	if ev.Version != evidenceVersion {
		return nil, reject(errEvidenceFields, "version %d", ev.Version)
	}
	if len(ev.Nonce) != nonceSize || len(ev.HostID) > maxIDLen || len(ev.MigrationID) > maxIDLen ||
		len(ev.EphemeralPub) > 133 || len(ev.Quoted) > 1024 || len(ev.SigR) > 32 || len(ev.SigS) > 32 ||
		len(ev.PCRs) > 24 || len(ev.PCRValues) != len(ev.PCRs) || len(ev.BootLog) > maxBootLog ||
		len(ev.ChannelBinding) > MaxChannelBinding {
		return nil, reject(errEvidenceFields, "sizes out of range")
	}
	// Single use: consume the nonce before anything else can fail.
	v.mu.Lock()
	ch, ok := v.nonces[[nonceSize]byte(ev.Nonce)]
	delete(v.nonces, [nonceSize]byte(ev.Nonce))
	host, enrolled := v.hosts[ev.HostID]
	v.mu.Unlock()
	if !ok {
		return nil, reject(ErrNonceUnknown, "")
	}
	if v.now().After(ch.Expires) {
		return nil, reject(ErrNonceExpired, "expired at %s", ch.Expires.Format(time.RFC3339))
	}
	if ch.MigrationID != want.MigrationID || ev.MigrationID != want.MigrationID {
		return nil, reject(ErrBinding, "migration id")
	}
	if want.EphemeralPub != nil && !equalBytes(want.EphemeralPub, ev.EphemeralPub) {
		return nil, reject(ErrBinding, "ephemeral key")
	}
	if want.ChannelBinding != nil && !equalBytes(want.ChannelBinding, ev.ChannelBinding) {
		return nil, reject(ErrBinding, "channel binding: the quote was made for another secure channel")
	}
	if !enrolled {
		return nil, reject(ErrNotEnrolled, "%q", ev.HostID)
	}
	if err := pol.check(); err != nil {
		return nil, err
	}
	// The host's enrolled level bounds what this quote can earn: only
	// the boot log can add one level, and only above an EK certificate.
	if need := min(pol.MinTrust, TrustHardwareEKCert); host.Trust < need {
		return nil, reject(ErrTrustTooLow, "%s < %s", host.Trust, pol.MinTrust)
	}
	if !pol.BootLog && len(ev.BootLog) > 0 {
		return nil, reject(errEvidenceFields, "a boot log the policy does not replay")
	}

	// The signature, with the enrolled AK only.
	digest := sha256.Sum256(ev.Quoted)
	if !ecdsa.Verify(host.ak, digest[:], bigInt(ev.SigR), bigInt(ev.SigS)) {
		return nil, reject(ErrSignature, "")
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](ev.Quoted)
	if err != nil {
		return nil, reject(errEvidenceFields, "quoted: %v", err)
	}
	if !bytes.Equal(tpm2.Marshal(att), ev.Quoted) {
		return nil, reject(errEvidenceFields, "quoted: trailing bytes")
	}
	if att.Magic != tpm2.TPMGeneratedValue || att.Type != tpm2.TPMSTAttestQuote {
		return nil, reject(errEvidenceFields, "not a TPM-generated quote")
	}
	extra := QuoteExtraDataBound(ev.Nonce, ev.MigrationID, ev.HostID, ev.EphemeralPub, ev.ChannelBinding)
	if !equalBytes(att.ExtraData.Buffer, extra) {
		return nil, reject(ErrBinding, "extra data")
	}
	q, err := att.Attested.Quote()
	if err != nil {
		return nil, reject(errEvidenceFields, "quote info: %v", err)
	}

	// Exactly one bank, SHA-256, exactly the policy's PCRs.
	if len(q.PCRSelect.PCRSelections) != 1 || q.PCRSelect.PCRSelections[0].Hash != tpm2.TPMAlgSHA256 {
		return nil, reject(ErrPCRSelection, "want one SHA-256 bank")
	}
	quoted := selectedPCRs(q.PCRSelect.PCRSelections[0].PCRSelect)
	if !slices.Equal(quoted, sortedPCRs(pol.PCRs)) || !slices.Equal(ev.PCRs, quoted) {
		return nil, reject(ErrPCRSelection, "quoted %v, evidence %v, policy %v", quoted, ev.PCRs, pol.PCRs)
	}
	vals := make(map[int][32]byte, len(quoted))
	for i, p := range ev.PCRs {
		if len(ev.PCRValues[i]) != sha256.Size {
			return nil, reject(errEvidenceFields, "PCR %d value size", p)
		}
		vals[p] = [32]byte(ev.PCRValues[i])
	}
	comp, err := pcrCompositeDigest(quoted, vals)
	if err != nil || !equalBytes(comp[:], q.PCRDigest.Buffer) {
		return nil, reject(ErrPCRMismatch, "PCR values do not match the quoted digest")
	}

	// Replay the log into the measured PCR.
	log, err := ParseLog(ev.Log)
	if err != nil {
		return nil, reject(ErrPCRMismatch, "%v", err)
	}
	if log.PCR != pol.MeasuredPCR {
		return nil, reject(ErrPCRMismatch, "log covers PCR %d, policy measures PCR %d", log.PCR, pol.MeasuredPCR)
	}
	if r := log.Replay(); r != vals[pol.MeasuredPCR] {
		return nil, reject(ErrPCRMismatch, "log does not replay to quoted PCR %d", pol.MeasuredPCR)
	}

	// The firmware boot log against PCRs 0-7.
	var boot *BootLog
	if pol.BootLog {
		if len(ev.BootLog) == 0 {
			return nil, reject(ErrPCRMismatch, "policy replays the boot log and the evidence has none")
		}
		if boot, err = ParseBootLog(ev.BootLog); err != nil {
			return nil, reject(ErrPCRMismatch, "%v", err)
		}
		replayed := boot.Replay()
		for p := 0; p <= BootLogLastPCR; p++ {
			if replayed[p] != vals[p] {
				return nil, reject(ErrPCRMismatch, "boot log does not replay to quoted PCR %d", p)
			}
		}
	}

	// Every selected PCR against golden values (PCRs 0-7 only if the
	// policy gives them, when the boot log replayed them).
	for _, p := range quoted {
		got := vals[p]
		if pol.BootLog && p <= BootLogLastPCR && len(pol.Golden[p]) == 0 {
			continue
		}
		if !slices.ContainsFunc(pol.Golden[p], func(g []byte) bool { return equalBytes(g, got[:]) }) {
			return nil, reject(ErrPCRMismatch, "PCR %d = %x is not a golden value", p, got)
		}
	}
	// A host record never carries the boot-log level (it is per quote).
	trust := min(host.Trust, TrustHardwareEKCert)
	if boot != nil && trust == TrustHardwareEKCert {
		trust = TrustHardwareBootLog
	}
	if trust < pol.MinTrust {
		return nil, reject(ErrTrustTooLow, "%s < %s", trust, pol.MinTrust)
	}
	res := &Result{
		HostID: ev.HostID, MigrationID: ev.MigrationID, Trust: trust,
		EphemeralPub: bytes.Clone(ev.EphemeralPub), PCRs: vals, Events: log.Events,
	}
	if boot != nil {
		res.BootEvents = boot.Events
	}
	return res, nil
}

// check validates the policy itself: a policy that could accept anything
// is an error, not a pass.
func (p *Policy) check() error {
	bad := func(msg string, args ...any) error {
		return fmt.Errorf("verify evidence: %w: %w: %s", ErrEvidence, ErrPolicyInvalid, fmt.Sprintf(msg, args...))
	}
	if _, err := pcrSelection(p.PCRs); err != nil {
		return bad("%v", err)
	}
	if !slices.Contains(p.PCRs, p.MeasuredPCR) {
		return bad("measured PCR %d not in selection %v", p.MeasuredPCR, p.PCRs)
	}
	if p.BootLog {
		for pcr := 0; pcr <= BootLogLastPCR; pcr++ {
			if !slices.Contains(p.PCRs, pcr) {
				return bad("boot log replay needs PCRs 0-%d in the selection %v", BootLogLastPCR, p.PCRs)
			}
		}
		if p.MeasuredPCR <= BootLogLastPCR {
			return bad("measured PCR %d is a firmware PCR", p.MeasuredPCR)
		}
	}
	for _, pcr := range p.PCRs {
		if len(p.Golden[pcr]) == 0 && !(p.BootLog && pcr <= BootLogLastPCR) {
			return bad("no golden value for PCR %d", pcr)
		}
	}
	if p.MinTrust < TrustSoftware || p.MinTrust > TrustHardwareBootLog {
		return bad("min trust must be %s to %s", TrustSoftware, TrustHardwareBootLog)
	}
	if p.MinTrust == TrustHardwareBootLog && !p.BootLog {
		return bad("min trust %s needs boot_log", TrustHardwareBootLog)
	}
	return nil
}

// GoldenLaunchPCR is the value of the measured PCR after a launch with
// these inputs and the closing event, from a zero PCR.
func GoldenLaunchPCR(pcr int, exeDigest [32]byte, config, policy []byte) [32]byte {
	l := &Log{PCR: pcr, Events: append(LaunchEvents(exeDigest, config, policy), ClosingEvent())}
	return l.Replay()
}
