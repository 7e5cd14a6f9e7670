package gate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/gvmm/gvmm/memguard"
	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/policy/audit"
	"github.com/gvmm/gvmm/tpm"
)

// DefaultMaxStray is how many connections that fail mutual TLS (probes,
// unknown hosts, men in the middle) Accept drops before it gives up.
const DefaultMaxStray = 8

// Accepted is a destination handshake that received a key.
type Accepted struct {
	// Key is the migration key, for migration.Receive. The caller must
	// Destroy it.
	Key         *memguard.Secret
	MigrationID string
	Source      policy.Principal
	// VMPolicy is the arriving VM's verified policy; Commit installs it
	// once the VM has arrived.
	VMPolicy *policy.VMPolicy
	Decision policy.Decision
	// SourceAttestation is set when this host required the source to
	// attest.
	SourceAttestation *policy.Attestation
	// SourceRuntime is the source's run-time report of the VM, checked
	// against its quote, when the source sent one.
	SourceRuntime *policy.RuntimeReport
}

// Destination is a host's migrate-in side of the gate.
type Destination struct {
	Host *Host
	// Timeout bounds one handshake (0: DefaultTimeout).
	Timeout time.Duration
	// MaxStray bounds dropped connections (0: DefaultMaxStray).
	MaxStray int
	// Report receives one line per step.
	Report func(line string)
}

func (d *Destination) report(format string, a ...any) {
	if d.Report != nil {
		d.Report(fmt.Sprintf(format, a...))
	}
}

// errStray marks a connection that never authenticated as a known host.
var errStray = errors.New("connection did not authenticate")

// Accept waits on ln for a source, runs the destination's side of the
// handshake and returns the key. Connections that fail mutual TLS are
// recorded and dropped (at most MaxStray). A refusal, by either side,
// ends Accept with a *RefusedError: a source's refusal for outdated
// measurements carries the remediation. ln is left open for
// migration.Receive.
func (d *Destination) Accept(ctx context.Context, ln net.Listener) (*Accepted, error) {
	max := d.MaxStray
	if max <= 0 {
		max = DefaultMaxStray
	}
	if dl, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
		stop := context.AfterFunc(ctx, func() { _ = dl.SetDeadline(time.Unix(1, 0)) })
		defer stop()
		defer dl.SetDeadline(time.Time{})
	}
	for stray := 0; ; {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, fmt.Errorf("accept migration: %w", err)
		}
		acc, err := d.session(ctx, c)
		if errors.Is(err, errStray) {
			d.Host.log().Warn("dropped a connection", "remote", c.RemoteAddr(), "err", err)
			if stray++; stray >= max {
				return nil, fmt.Errorf("accept migration: %d connections failed to authenticate, the last: %w", stray, err)
			}
			continue
		}
		return acc, err
	}
}

func (d *Destination) session(ctx context.Context, raw net.Conn) (acc *Accepted, err error) {
	h := d.Host
	defer raw.Close()
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	undo := deadline(ctx, raw, timeout)
	defer undo()
	cfg, err := tlsConfig(h, "")
	if err != nil {
		return nil, fmt.Errorf("accept migration: %w", err)
	}
	conn := tls.Server(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		ev := audit.Event{Kind: KindMigrateIn, Decision: policy.Deny(policy.StagePrecheck, "mutual-tls",
			fmt.Errorf("peer %s did not authenticate as a known host: %w", raw.RemoteAddr(), err))}
		if rerr := h.record(ev); rerr != nil {
			return nil, rerr
		}
		return nil, fmt.Errorf("%w: %w", errStray, err)
	}
	cs := conn.ConnectionState()
	src, err := peerHost(cs, h.State.Directory())
	if err != nil {
		return nil, fmt.Errorf("accept migration: %w", err)
	}
	binding, err := channelBinding(conn)
	if err != nil {
		return nil, fmt.Errorf("accept migration: %w", err)
	}
	ev := func(kind string, vm string, dec policy.Decision) audit.Event {
		return audit.Event{Kind: kind, VM: vm, Source: src.ID(), Destination: h.Self.ID(), Decision: dec}
	}
	refuse := func(vm string, dec policy.Decision) error {
		rerr := &RefusedError{Decision: dec}
		_ = writeMsg(conn, &message{Type: msgRefuse, Decision: &dec})
		if err := h.record(ev(KindMigrateIn, vm, dec)); err != nil {
			return errors.Join(rerr, err)
		}
		return rerr
	}

	m, err := readMsg(conn, msgHello)
	if err != nil {
		return nil, fmt.Errorf("accept migration from %s: %w", src.Name, err)
	}
	if m.Type == msgRefuse {
		return nil, d.remoteRefusal(src, "", *m.Decision)
	}
	switch {
	case m.Version != protocolVersion:
		return nil, refuse(m.VM, policy.Deny(policy.StagePrecheck, "protocol", fmt.Errorf("protocol version %d, this host speaks %d", m.Version, protocolVersion)))
	case m.MigrationID == "" || len(m.MigrationID) > 128 || m.VMPolicy == nil || m.Challenge == nil ||
		m.Challenge.MigrationID != m.MigrationID || len(m.Challenge.Nonce) != 32:
		return nil, refuse(m.VM, policy.Deny(policy.StagePrecheck, "protocol", errors.New("malformed hello")))
	}
	migID := m.MigrationID
	d.report("source %s (%s) asks to send vm %s (migration %s)", src.Name, src.ID(), m.VM, migID)
	vmp, err := policy.VerifyVMPolicy(m.VMPolicy, h.State.Directory())
	if err != nil {
		return nil, refuse(m.VM, policy.Deny(policy.StagePrecheck, "vm-policy", err))
	}
	if vmp.VM() != m.VM {
		return nil, refuse(m.VM, policy.Deny(policy.StagePrecheck, "vm-policy", fmt.Errorf("policy is for vm %s, not %s", vmp.VM(), m.VM)))
	}
	hp, _ := h.State.HostPolicy()
	requireSrc := hp != nil && hp.Policy().RequireSourceAttestation
	in := policy.MigrateIn{Policy: hp, VM: vmp, Self: h.Self, Source: src}
	var dec policy.Decision
	if !requireSrc {
		// Everything this host decides is known now: decide before quoting.
		if dec = policy.EvaluateMigrateIn(in); !dec.Allow {
			return nil, refuse(vmp.VM(), dec)
		}
	}

	// Attest, bound to this session, with a key only this process holds.
	if h.TPM == nil || h.LaunchLog == nil {
		return nil, fmt.Errorf("accept migration: this host has no TPM open to attest with")
	}
	eph, err := tpm.NewEphemeralKey()
	if err != nil {
		return nil, fmt.Errorf("accept migration: %w", err)
	}
	evd, err := h.TPM.AttestBound(ctx, &tpm.Challenge{Nonce: m.Challenge.Nonce, MigrationID: migID}, h.TPMHostID,
		eph.PublicKey().Bytes(), binding, []int{h.LaunchLog.PCR}, h.LaunchLog)
	if err != nil {
		return nil, fmt.Errorf("accept migration: %w", err)
	}
	reply := &message{Type: msgEvidence, Evidence: evd}
	if requireSrc {
		if reply.SourceChallenge, err = h.Verifier.Challenge(migID); err != nil {
			return nil, fmt.Errorf("accept migration: %w", err)
		}
	}
	if err := writeMsg(conn, reply); err != nil {
		return nil, fmt.Errorf("accept migration: %w", err)
	}
	d.report("attested to %s", src.Name)

	m, err = readMsg(conn, msgRelease)
	if err != nil {
		return nil, fmt.Errorf("accept migration from %s: %w", src.Name, err)
	}
	if m.Type == msgRefuse {
		return nil, d.remoteRefusal(src, vmp.VM(), *m.Decision)
	}
	var (
		srcAtt *policy.Attestation
		srcRT  *policy.RuntimeReport
	)
	if !requireSrc && len(m.SourceRuntime) > 0 {
		return nil, refuse(vmp.VM(), policy.Deny(policy.StageAttested, "protocol", errors.New("a run-time report without source attestation")))
	}
	if requireSrc {
		res, att, err := verifyPeer(h.Verifier, m.SourceEvidence, migID, []byte{}, binding)
		if err != nil {
			return nil, refuse(vmp.VM(), policy.Deny(policy.StageAttested, "source-attestation", err))
		}
		srcAtt = att
		in.SourceAttestation = att
		d.report("source attested at level %s", att.Trust)
		if len(m.SourceRuntime) > 0 || hp.Policy().WantsRuntime() {
			// A report the source sent must check out even where this
			// host does not require one.
			rt, err := policy.RuntimeFromResult(res, m.SourceRuntime, vmp.VM(), migID)
			if err != nil {
				return nil, refuse(vmp.VM(), policy.Deny(policy.StageAttested, "source-runtime", err))
			}
			srcRT, in.SourceRuntime = rt, rt
			d.report("source measured vm %s at run time: %d regions, %d ranges, %d violations",
				rt.VM, len(rt.Regions), len(rt.Ranges), rt.Violations)
		}
		if dec = policy.EvaluateMigrateIn(in); !dec.Allow {
			return nil, refuse(vmp.VM(), dec)
		}
	}
	if m.Box == nil {
		return nil, refuse(vmp.VM(), policy.Deny(policy.StageAttested, "protocol", errors.New("release without a key")))
	}
	pt, err := tpm.OpenEphemeral(eph, m.Box, migID, h.TPMHostID)
	if err != nil || len(pt) != 32 {
		clear(pt)
		return nil, refuse(vmp.VM(), policy.Deny(policy.StageAttested, "key-release", fmt.Errorf("the released key does not open: %v", err)))
	}
	key, err := memguard.NewSecret(32)
	if err != nil {
		clear(pt)
		return nil, fmt.Errorf("accept migration: migration key: %w", err)
	}
	copy(key.Bytes(), pt)
	clear(pt)
	if err := h.record(ev(KindMigrateIn, vmp.VM(), dec)); err != nil {
		_ = key.Destroy()
		return nil, err
	}
	if err := writeMsg(conn, &message{Type: msgAccept, Decision: &dec}); err != nil {
		_ = key.Destroy()
		return nil, fmt.Errorf("accept migration: %w", err)
	}
	d.report("source %s: migrate-in allowed by rule %s", src.Name, dec.Rule)
	return &Accepted{Key: key, MigrationID: migID, Source: src, VMPolicy: vmp, Decision: dec, SourceAttestation: srcAtt, SourceRuntime: srcRT}, nil
}

// remoteRefusal records the source's refusal on this host and returns it.
func (d *Destination) remoteRefusal(src policy.Principal, vm string, dec policy.Decision) error {
	rerr := &RefusedError{Decision: dec, Remote: true}
	e := audit.Event{Host: src.ID(), Kind: KindMigrateOut, VM: vm, Source: src.ID(), Destination: d.Host.Self.ID(), Decision: dec}
	if err := d.Host.record(e); err != nil {
		return errors.Join(rerr, err)
	}
	return rerr
}

// Commit installs the arrived VM's policy in this host's state (it must
// pass policy.CheckUpdate against any this host holds) and saves it.
func (d *Destination) Commit(a *Accepted) error {
	if _, err := d.Host.State.ReceiveVMPolicy(a.VMPolicy.Doc()); err != nil {
		return fmt.Errorf("install the arrived vm's policy: %w", err)
	}
	if err := d.Host.save(); err != nil {
		return fmt.Errorf("install the arrived vm's policy: %w", err)
	}
	return nil
}
