package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gvmm/gvmm/tpm"
)

// Attestation is what the evaluator needs from a verified attestation of
// the destination (tpm.Verifier.Verify's Result): never build one from
// anything a host merely claims.
type Attestation struct {
	// HostID is the TPM host id the quote was verified for.
	HostID string
	// Trust is the level the verifier computed.
	Trust tpm.TrustLevel
	// Executable is the measured SHA-256 of the host's gvmm executable.
	Executable [32]byte
}

// AttestationFromResult extracts the evaluator's input from a verified
// attestation result. The measurement log must hold exactly one executable
// event of 32 bytes; anything else is refused.
func AttestationFromResult(r *tpm.Result) (*Attestation, error) {
	if r == nil || r.HostID == "" {
		return nil, fmt.Errorf("attestation from result: %w: no result", ErrInvalid)
	}
	a := &Attestation{HostID: r.HostID, Trust: r.Trust}
	n := 0
	for _, e := range r.Events {
		if e.Type != tpm.EventExecutable {
			continue
		}
		if n++; n > 1 || len(e.Data) != len(a.Executable) {
			return nil, fmt.Errorf("attestation from result: %w: executable measurement", ErrInvalid)
		}
		copy(a.Executable[:], e.Data)
	}
	if n != 1 {
		return nil, fmt.Errorf("attestation from result: %w: no executable measurement", ErrInvalid)
	}
	return a, nil
}

// Stage says how much an allowing decision covers.
type Stage string

const (
	// StagePrecheck: decided before the destination attested. An
	// allowing precheck only permits going on to attestation.
	StagePrecheck Stage = "pre-attestation"
	// StageAttested: decided with a verified attestation.
	StageAttested Stage = "attested"
)

// Decision is the evaluator's answer. Every decision names the rule that
// decided it and says why.
type Decision struct {
	Allow bool  `json:"allow"`
	Stage Stage `json:"stage"`
	// Rule names the deciding rule: the first that failed, or, when
	// allowed, the layers and entries that allowed.
	Rule string `json:"rule"`
	// Reason explains the decision; for a refusal it lists every failed
	// rule.
	Reason string `json:"reason"`
	// Remediation is set when the only failure is the destination's
	// gvmm measurement.
	Remediation *Remediation `json:"remediation,omitempty"`
}

// Final reports whether the decision allows the migration itself (not
// only going on to attestation): the only decision on which a migration
// key may be released.
func (d Decision) Final() bool { return d.Allow && d.Stage == StageAttested }

// Remediation says what a destination refused only for its measurement
// must run to be accepted.
type Remediation struct {
	// Have is the destination's attested executable digest.
	Have string `json:"have_executable_sha256"`
	// Acceptable are the builds every layer accepts.
	Acceptable []Measurement `json:"acceptable"`
}

// Deny returns a refusal outside policy evaluation (an authentication
// failure, a missing policy) in the same shape, for the audit log.
func Deny(stage Stage, rule string, err error) Decision {
	return Decision{Stage: stage, Rule: rule, Reason: err.Error()}
}

// MigrateOut is the evaluator's input for migrating a VM out.
type MigrateOut struct {
	// Request is the authenticated request (ActionMigrate).
	Request *Authenticated
	// Policy is the VM's verified policy.
	Policy *VMPolicy
	// Source is this host.
	Source Principal
	// Destination is the destination host as identified by its TLS
	// certificate (Directory.HostForCert), never by what it says.
	Destination Principal
	// Attestation is the destination's verified attestation, or nil for
	// the check before attestation.
	Attestation *Attestation
}

type failure struct {
	rule, reason string
	measurement  bool
}

type layerView struct {
	label string
	rules *Rules
}

func (p *VMPolicy) layers() []layerView {
	ls := make([]layerView, 0, 2)
	if p.ent != nil {
		ls = append(ls, layerView{p.entLabel, &p.ent.Rules})
	}
	return append(ls, layerView{p.ownerLabel, &p.owner.Rules})
}

// EvaluateMigrateOut decides a migration out of this host. It denies by
// default: the request must be an authenticated migrate request for this
// policy's VM and this destination, from this host; then every layer of
// the policy (enterprise first) must allow, independently:
//
//   - not pinned;
//   - the requester matches one of the layer's migrators;
//   - the destination matches one of the layer's destinations;
//   - with an attestation: it is for the destination's TPM, at or above the
//     layer's minimum trust, and the destination's executable is one of the
//     layer's measurements.
//
// A dimension that no layer constrains (no migrators, destinations or
// measurements anywhere) is denied. Because every layer must allow on its
// own, the owner's layer can only narrow what the enterprise layer allows:
// IT overrides owner by intersection.
func EvaluateMigrateOut(in MigrateOut) Decision {
	stage := StagePrecheck
	if in.Attestation != nil {
		stage = StageAttested
	}
	deny := func(rule, format string, a ...any) Decision {
		return Decision{Stage: stage, Rule: rule, Reason: fmt.Sprintf(format, a...)}
	}
	switch {
	case in.Request == nil:
		return deny("request", "no authenticated request")
	case in.Policy == nil:
		return deny("policy", "no verified policy for the vm")
	case in.Request.request.Action != ActionMigrate:
		return deny("request", "request is %q, not migrate", in.Request.request.Action)
	case in.Request.request.VM != in.Policy.VM():
		return deny("request", "request is for vm %s, policy for vm %s", in.Request.request.VM, in.Policy.VM())
	case in.Request.request.Audience != in.Source.ID():
		return deny("request", "request is addressed to host %s, not this host", in.Request.request.Audience)
	case in.Request.request.Destination != in.Destination.ID() || in.Destination.Kind != KindHost:
		return deny("request", "request names destination %s, peer is %s (%s)", in.Request.request.Destination, in.Destination.ID(), in.Destination.Name)
	case in.Destination.ID() == in.Source.ID():
		return deny("request", "destination is this host")
	}
	p, req := in.Policy, &in.Request.requester
	var fails []failure
	var allowed []string
	fail := func(f failure) { fails = append(fails, f) }

	layers := p.layers()
	for _, l := range layers {
		if l.rules.Pinned {
			fail(failure{rule: l.label + " pinned", reason: fmt.Sprintf("%s pins vm %s to its current host", l.label, p.VM())})
		}
	}
	dims := []struct {
		name  string
		list  func(*Rules) []string
		match func(string) bool
		who   string
	}{
		{"migrators", func(r *Rules) []string { return r.Migrators }, func(s string) bool { return matchMigrator(s, req, p) },
			fmt.Sprintf("requester %s (%s)", req.Name, req.ID())},
		{"destinations", func(r *Rules) []string { return r.Destinations }, func(s string) bool { return matchHost(s, &in.Destination) },
			fmt.Sprintf("destination %s (%s)", in.Destination.Name, in.Destination.ID())},
	}
	for _, d := range dims {
		constrained := false
		for _, l := range layers {
			list := d.list(l.rules)
			if len(list) == 0 {
				continue
			}
			constrained = true
			if i := slices.IndexFunc(list, d.match); i >= 0 {
				allowed = append(allowed, fmt.Sprintf("%s %s %s", l.label, d.name, list[i]))
			} else {
				fail(failure{rule: l.label + " " + d.name, reason: fmt.Sprintf("%s is not among %s %s", d.who, l.label, d.name)})
			}
		}
		if !constrained {
			fail(failure{rule: "default-deny " + d.name, reason: fmt.Sprintf("no policy layer lists %s: denied by default", d.name)})
		}
	}
	measured := false
	for _, l := range layers {
		measured = measured || len(l.rules.Measurements) > 0
	}
	if !measured {
		fail(failure{rule: "default-deny measurements", reason: "no policy layer lists acceptable gvmm measurements: denied by default"})
	}

	if in.Attestation == nil {
		if len(fails) > 0 {
			return refuse(stage, fails, nil)
		}
		return Decision{Allow: true, Stage: stage, Rule: strings.Join(allowed, ", "),
			Reason: fmt.Sprintf("may proceed to attestation: destination must prove %s and run an acceptable gvmm", p.minTrust)}
	}

	a := in.Attestation
	if a.HostID != in.Destination.TPMHostID {
		fail(failure{rule: "attestation host", reason: fmt.Sprintf("attestation is for TPM host %s, destination %s is %s", a.HostID, in.Destination.Name, in.Destination.TPMHostID)})
	}
	for _, l := range layers {
		want := l.rules.minTrust()
		if a.Trust < want || a.Trust < tpm.TrustSoftware {
			fail(failure{rule: l.label + " min_trust", reason: fmt.Sprintf("destination attested at %s, %s requires %s", a.Trust, l.label, want)})
		} else {
			allowed = append(allowed, fmt.Sprintf("%s min_trust %s", l.label, want))
		}
	}
	have := digestHex(a.Executable)
	for _, l := range layers {
		if len(l.rules.Measurements) == 0 {
			continue
		}
		if i := slices.IndexFunc(l.rules.Measurements, func(m Measurement) bool { return m.Executable == have }); i >= 0 {
			allowed = append(allowed, fmt.Sprintf("%s measurement %s", l.label, label(l.rules.Measurements[i])))
		} else {
			fail(failure{rule: l.label + " measurements", reason: fmt.Sprintf("destination runs gvmm %s, not among %s measurements", have, l.label), measurement: true})
		}
	}
	if len(fails) > 0 {
		return refuse(stage, fails, func() *Remediation { return remediate(layers, have) })
	}
	return Decision{Allow: true, Stage: stage, Rule: strings.Join(allowed, ", "),
		Reason: fmt.Sprintf("%s may migrate vm %s to %s, attested at %s running gvmm %s", req.Name, p.VM(), in.Destination.Name, a.Trust, have)}
}

func label(m Measurement) string {
	if m.Version != "" {
		return m.Version
	}
	return m.Executable
}

// refuse builds a denial from the failures; when every failure is a
// measurement one and fix is given, it adds what to update to.
func refuse(stage Stage, fails []failure, fix func() *Remediation) Decision {
	reasons := make([]string, len(fails))
	onlyMeasurement := true
	for i, f := range fails {
		reasons[i] = f.reason
		onlyMeasurement = onlyMeasurement && f.measurement
	}
	d := Decision{Stage: stage, Rule: fails[0].rule, Reason: strings.Join(reasons, "; ")}
	if onlyMeasurement && fix != nil {
		if r := fix(); r != nil {
			d.Remediation = r
			names := make([]string, len(r.Acceptable))
			for i, m := range r.Acceptable {
				names[i] = label(m)
			}
			d.Reason += "; update the destination to one of: " + strings.Join(names, ", ")
		}
	}
	return d
}

// remediate lists the builds every measuring layer accepts, in the order
// of the first such layer. None in common means no update can help.
func remediate(layers []layerView, have string) *Remediation {
	var acc []Measurement
	first := true
	for _, l := range layers {
		if len(l.rules.Measurements) == 0 {
			continue
		}
		if first {
			acc, first = append(acc, l.rules.Measurements...), false
			continue
		}
		acc = slices.DeleteFunc(acc, func(m Measurement) bool {
			return !slices.ContainsFunc(l.rules.Measurements, func(n Measurement) bool { return n.Executable == m.Executable })
		})
	}
	if len(acc) == 0 {
		return nil
	}
	return &Remediation{Have: have, Acceptable: acc}
}

func matchMigrator(s string, req *Principal, p *VMPolicy) bool {
	kind, v, _ := strings.Cut(s, ":")
	switch kind {
	case "key":
		return req.Kind == KindUser && KeyID(v) == req.ID()
	case "role":
		if Role(v) == RoleOwner {
			return req.Kind == KindUser && req.ID() == p.owner.Owner
		}
		return req.HasRole(Role(v))
	}
	return false
}

func matchHost(s string, h *Principal) bool {
	kind, v, _ := strings.Cut(s, ":")
	switch kind {
	case "host":
		return h.Kind == KindHost && KeyID(v) == h.ID()
	case "group":
		return h.InGroup(v)
	}
	return false
}
