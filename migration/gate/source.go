package gate

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/gvmm/gvmm/memguard"
	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/policy/audit"
	"github.com/gvmm/gvmm/tpm"
)

// Audit record kinds.
const (
	KindAuthenticate = "authenticate"
	KindMigrateOut   = "migrate-out"
	KindMigrateIn    = "migrate-in"
)

// RefusedError is a migration refused by a decision: this host's, or the
// peer's (Remote). The decision is in the audit log of the host that made
// it, and of this host.
type RefusedError struct {
	Decision policy.Decision
	// Remote is set when the peer decided.
	Remote bool
	// Err is the failure the decision was made on, if any.
	Err error
}

// Unwrap returns the failure the refusal was made on.
func (e *RefusedError) Unwrap() error { return e.Err }

// MigrationRefused marks the error as a decision (api.Refusal).
func (e *RefusedError) MigrationRefused() bool { return true }

func (e *RefusedError) Error() string {
	who := ""
	if e.Remote {
		who = " by the peer"
	}
	return fmt.Sprintf("migration refused%s (%s) by rule %s: %s", who, e.Decision.Stage, e.Decision.Rule, e.Decision.Reason)
}

// Timings of a source handshake.
type Timings struct {
	// Authenticate: the signed request and the mutual TLS handshake.
	Authenticate time.Duration
	// Attest: challenge to verified evidence.
	Attest time.Duration
	// Decide: both policy evaluations.
	Decide time.Duration
	// Release: the key's creation, sealing, sending and the acceptance.
	Release time.Duration
	// Total is the whole handshake, the sum of the others and the I/O
	// between them.
	Total time.Duration
}

// Outcome is a source handshake that released a key.
type Outcome struct {
	// Key is the migration key, for migration.Migrate. The caller must
	// Destroy it.
	Key         *memguard.Secret
	MigrationID string
	Requester   policy.Principal
	Destination policy.Principal
	// Precheck and Final are the source's decisions; Accept the
	// destination's.
	Precheck, Final, Accept policy.Decision
	// Attestation is the destination's verified attestation.
	Attestation *policy.Attestation
	Timings     Timings
}

// Source is a host's migrate-out side of the gate.
type Source struct {
	Host *Host
	// Dial opens the TCP connection (nil: net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds one handshake (0: DefaultTimeout).
	Timeout time.Duration
	// Report receives one line per step, as it happens.
	Report func(line string)
	// Runtime, if set, measures the VM's memory for a destination that
	// asks this host to attest: its regions, ranges and violations (the
	// gate fills in the version, VM, migration id and time). Its report
	// is measured into the TPM before the quote. Without it, such a
	// destination gets no run-time report.
	Runtime func(ctx context.Context) (*policy.RuntimeReport, error)
}

func (s *Source) report(format string, a ...any) {
	if s.Report != nil {
		s.Report(fmt.Sprintf(format, a...))
	}
}

// Authorized is a migrate request that was authenticated and passed the
// pre-check. Handshake may be called on it more than once (a retry after
// the destination's remediation); each is a new migration id and nonce.
type Authorized struct {
	src       *Source
	req       *policy.Authenticated
	pol       *policy.VMPolicy
	dest      policy.Principal
	precheck  policy.Decision
	authTime  time.Duration
	checkTime time.Duration
}

// Requester returns the authenticated requester.
func (a *Authorized) Requester() policy.Principal { return a.req.Requester() }

// Destination returns the requested destination host.
func (a *Authorized) Destination() policy.Principal { return a.dest }

// Precheck returns the pre-attestation decision (an allowing one).
func (a *Authorized) Precheck() policy.Decision { return a.precheck }

// event is an audit event about this request.
func (a *Authorized) event(kind string, d policy.Decision) audit.Event {
	ev := audit.EventFor(a.src.Host.Self.ID(), kind, a.req, d)
	ev.Source = a.src.Host.Self.ID()
	ev.Destination = a.dest.ID()
	return ev
}

// refuse records a decision of this host and returns it as an error.
func (s *Source) refuse(ev audit.Event) error {
	if err := s.Host.record(ev); err != nil {
		return errors.Join(&RefusedError{Decision: ev.Decision}, err)
	}
	return &RefusedError{Decision: ev.Decision}
}

// Authorize authenticates a signed migrate request (its nonce is used up
// and the host state saved at once) and pre-checks the VM's policy.
func (s *Source) Authorize(signed *policy.Signed) (*Authorized, error) {
	h := s.Host
	t0 := time.Now()
	auth, err := policy.NewAuthenticator(policy.AuthConfig{
		Directory: h.State.Directory(), Host: h.Self.ID(), Replay: h.State.Replay(), Now: h.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("authorize: %w", err)
	}
	req, err := auth.Authenticate(signed)
	if err != nil {
		ev := audit.EventFor(h.Self.ID(), KindAuthenticate, nil, policy.Deny(policy.StagePrecheck, "authenticate", err))
		if signed != nil {
			// Not a requester: nobody was authenticated. Kept for the
			// record as what the request claimed.
			ev.Decision.Reason += fmt.Sprintf(" (request claims signer %.64q)", signed.Signer)
		}
		return nil, s.refuse(ev)
	}
	// The nonce is used: keep it used across processes.
	if err := h.save(); err != nil {
		return nil, fmt.Errorf("authorize: save host state: %w", err)
	}
	a := &Authorized{src: s, req: req, authTime: time.Since(t0)}
	who := req.Requester()
	s.report("requester authenticated: %s (%s)", who.Name, who.ID())
	r := req.Request()
	t1 := time.Now()
	deny := func(rule string, err error) error {
		ev := audit.EventFor(h.Self.ID(), KindMigrateOut, req, policy.Deny(policy.StagePrecheck, rule, err))
		return s.refuse(ev)
	}
	if r.Action != policy.ActionMigrate {
		return nil, deny("request", fmt.Errorf("%w: a %s request cannot migrate", policy.ErrForbidden, r.Action))
	}
	var ok bool
	if a.pol, ok = h.State.VMPolicy(r.VM); !ok {
		return nil, deny("vm-policy", fmt.Errorf("%w: no policy installed for vm %s on this host", policy.ErrForbidden, r.VM))
	}
	if a.dest, ok = h.State.Directory().Lookup(r.Destination); !ok || a.dest.Kind != policy.KindHost {
		return nil, deny("destination", fmt.Errorf("%w: destination %s is not a host in this host's directory", policy.ErrUnknownPrincipal, r.Destination))
	}
	d := policy.EvaluateMigrateOut(policy.MigrateOut{Request: req, Policy: a.pol, Source: h.Self, Destination: a.dest})
	a.checkTime = time.Since(t1)
	if !d.Allow {
		return nil, s.refuse(a.event(KindMigrateOut, d))
	}
	if err := h.record(a.event(KindMigrateOut, d)); err != nil {
		return nil, fmt.Errorf("authorize: %w", err)
	}
	a.precheck = d
	s.report("policy pre-check allowed by rule %s", d.Rule)
	return a, nil
}

// Run authorizes a signed request and runs one handshake with addr.
func (s *Source) Run(ctx context.Context, signed *policy.Signed, addr string) (*Outcome, error) {
	a, err := s.Authorize(signed)
	if err != nil {
		return nil, err
	}
	return a.Handshake(ctx, addr)
}

func newMigrationID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "m-" + hex.EncodeToString(b[:]), nil
}

// Handshake opens mutual TLS to the destination at addr, has it attest,
// decides with the verified attestation and releases a fresh key to it.
// On any refusal it returns a *RefusedError; nothing was released then.
func (a *Authorized) Handshake(ctx context.Context, addr string) (out *Outcome, err error) {
	s, h := a.src, a.src.Host
	start := time.Now()
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	migID, err := newMigrationID()
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	out = &Outcome{MigrationID: migID, Requester: a.req.Requester(), Destination: a.dest, Precheck: a.precheck}
	out.Timings.Authenticate = a.authTime
	out.Timings.Decide = a.checkTime

	// Mutual TLS, the destination pinned.
	dial := s.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: timeout}
		dial = d.DialContext
	}
	t0 := time.Now()
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("handshake: connect to %s: %w", addr, err)
	}
	defer raw.Close()
	undo := deadline(ctx, raw, timeout)
	defer undo()
	cfg, err := tlsConfig(h, a.dest.ID())
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, s.refuse(a.event(KindMigrateOut, policy.Deny(policy.StagePrecheck, "mutual-tls",
			fmt.Errorf("destination %s at %s did not authenticate: %w", a.dest.Name, addr, err))))
	}
	binding, err := channelBinding(conn)
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	out.Timings.Authenticate += time.Since(t0)

	// Challenge and verify.
	t1 := time.Now()
	ch, err := h.Verifier.Challenge(migID)
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if err := writeMsg(conn, &message{
		Type: msgHello, Version: protocolVersion, MigrationID: migID, VM: a.pol.VM(),
		VMPolicy: a.pol.Doc(), Challenge: ch,
	}); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	m, err := readMsg(conn, msgEvidence)
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if m.Type == msgRefuse {
		return nil, a.remoteRefusal(*m.Decision)
	}
	refuse := func(d policy.Decision) error {
		err := s.refuse(a.event(KindMigrateOut, d))
		// Tell the destination why (with the remediation, if any).
		_ = writeMsg(conn, &message{Type: msgRefuse, Decision: &d})
		return err
	}
	res, att, err := verifyPeer(h.Verifier, m.Evidence, migID, nil, binding)
	if err == nil && len(res.EphemeralPub) == 0 {
		err = errors.New("verify attestation: the destination bound no receiving key")
	}
	if err != nil {
		return nil, refuse(policy.Deny(policy.StageAttested, "attestation", err))
	}
	out.Timings.Attest = time.Since(t1)
	s.report("destination attested: %s (%s) at level %s, gvmm sha256 %x", a.dest.Name, att.HostID, att.Trust, att.Executable)

	// Decide with the attestation.
	t2 := time.Now()
	d := policy.EvaluateMigrateOut(policy.MigrateOut{
		Request: a.req, Policy: a.pol, Source: h.Self, Destination: a.dest, Attestation: att,
	})
	out.Timings.Decide += time.Since(t2)
	if !d.Final() {
		return nil, refuse(d)
	}
	if err := h.record(a.event(KindMigrateOut, d)); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	out.Final, out.Attestation = d, att
	s.report("policy allowed by rule %s", d.Rule)

	// Release a fresh key to the attested receiving key only.
	t3 := time.Now()
	key, err := memguard.NewSecret(32)
	if err != nil {
		return nil, fmt.Errorf("handshake: migration key: %w", err)
	}
	defer func() {
		if err != nil {
			_ = key.Destroy()
		}
	}()
	if _, err := rand.Read(key.Bytes()); err != nil {
		return nil, fmt.Errorf("handshake: migration key: %w", err)
	}
	box, err := tpm.SealToEphemeral(res, key.Bytes())
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	rel := &message{Type: msgRelease, Box: box}
	if sc := m.SourceChallenge; sc != nil {
		if sc.MigrationID != migID {
			return nil, refuse(policy.Deny(policy.StageAttested, "source-attestation",
				fmt.Errorf("the destination's challenge is for migration %q, not %s", sc.MigrationID, migID)))
		}
		if h.TPM == nil || h.LaunchLog == nil {
			return nil, fmt.Errorf("handshake: the destination requires this host to attest and it has no TPM open")
		}
		if rel.SourceEvidence, rel.SourceRuntime, err = s.attestSelf(ctx, a.pol.VM(), migID, sc.Nonce, binding); err != nil {
			return nil, fmt.Errorf("handshake: %w", err)
		}
		s.report("attested this host to the destination")
	}
	if err := writeMsg(conn, rel); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	m, err = readMsg(conn, msgAccept)
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if m.Type == msgRefuse {
		return nil, a.remoteRefusal(*m.Decision)
	}
	if m.Decision == nil || !m.Decision.Allow {
		return nil, errors.New("handshake: malformed acceptance")
	}
	out.Accept = *m.Decision
	ev := a.event(KindMigrateIn, out.Accept)
	ev.Host = a.dest.ID()
	if err := h.record(ev); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	out.Timings.Release = time.Since(t3)
	out.Timings.Total = time.Since(start) + a.authTime + a.checkTime
	out.Key = key
	s.report("key released to %s", a.dest.Name)
	return out, nil
}

// remoteRefusal records the destination's refusal and returns it.
func (a *Authorized) remoteRefusal(d policy.Decision) error {
	ev := a.event(KindMigrateIn, d)
	ev.Host = a.dest.ID()
	rerr := &RefusedError{Decision: d, Remote: true}
	if err := a.src.Host.record(ev); err != nil {
		return errors.Join(rerr, err)
	}
	return rerr
}

// attestSelf quotes this host for the destination's challenge. With
// s.Runtime it first measures the VM, extends the report's digest into
// the measured PCR (a tpm.EventRuntime event) and quotes after that, so
// the quote covers the report; it returns the report's bytes with the
// evidence.
func (s *Source) attestSelf(ctx context.Context, vm, migID string, nonce, binding []byte) (*tpm.Evidence, []byte, error) {
	h := s.Host
	h.logMu.Lock()
	defer h.logMu.Unlock()
	var report []byte
	if s.Runtime != nil {
		r, err := s.Runtime(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("run-time measurement: %w", err)
		}
		r.Version, r.VM, r.MigrationID, r.Time = policy.RuntimeReportVersion, vm, migID, h.now().UTC()
		if report, err = policy.MarshalRuntimeReport(r); err != nil {
			return nil, nil, fmt.Errorf("run-time measurement: %w", err)
		}
		if err := h.TPM.ExtendEvent(ctx, h.LaunchLog, tpm.RuntimeEvent(sha256.Sum256(report))); err != nil {
			return nil, nil, fmt.Errorf("run-time measurement: %w", err)
		}
		s.report("measured vm %s at run time: %d regions, %d ranges, %d violations", vm, len(r.Regions), len(r.Ranges), r.Violations)
	}
	ev, err := h.TPM.AttestBound(ctx, &tpm.Challenge{Nonce: nonce, MigrationID: migID}, h.TPMHostID, nil, binding,
		[]int{h.LaunchLog.PCR}, h.LaunchLog)
	if err != nil {
		return nil, nil, err
	}
	return ev, report, nil
}
