package policy

import (
	"crypto/ed25519"
	"fmt"
	"slices"
	"strings"

	"github.com/gvmm/gvmm/tpm"
)

// HostPolicy is a host's migrate-in policy, signed by the host's owner (its
// Principal.Owner) or an admin. A VM is accepted when its owner is in
// AcceptOwners or its id in AcceptVMs, it comes from a host matching
// AcceptSources, and, if RequireSourceAttestation, the source attested at
// MinSourceTrust or above, and, if RequireSourceRuntime or RequireRanges,
// the source's quote covers a run-time measurement of the VM that passes
// them. Empty lists accept nothing.
type HostPolicy struct {
	Host                     KeyID    `json:"host"`
	Version                  uint64   `json:"version"`
	AcceptOwners             []KeyID  `json:"accept_owners,omitempty"`
	AcceptVMs                []string `json:"accept_vms,omitempty"`
	AcceptSources            []string `json:"accept_sources,omitempty"`
	RequireSourceAttestation bool     `json:"require_source_attestation,omitempty"`
	MinSourceTrust           string   `json:"min_source_trust,omitempty"`
	// RequireSourceRuntime asks the attested source for a run-time
	// measurement of the arriving VM (RuntimeReport), made for this
	// migration and covered by its quote, in which no protected region
	// changed unexpectedly. It needs RequireSourceAttestation.
	RequireSourceRuntime bool `json:"require_source_runtime,omitempty"`
	// RequireRanges are measured guest ranges that report must hold with
	// these digests (a guest kernel's text, say). They imply
	// RequireSourceRuntime.
	RequireRanges []RangeDigest `json:"require_ranges,omitempty"`
}

// RangeDigest is a measured guest range's required digest.
type RangeDigest struct {
	Name string `json:"name"`
	// SHA256 is the digest in lowercase hex.
	SHA256 string `json:"sha256"`
}

// WantsRuntime reports whether the policy needs the source's run-time
// measurement.
func (h HostPolicy) WantsRuntime() bool {
	return h.RequireSourceRuntime || len(h.RequireRanges) > 0
}

func (h *HostPolicy) check() error {
	if !h.Host.valid() || h.Version == 0 {
		return fmt.Errorf("%w: host policy needs host and a version > 0", ErrInvalid)
	}
	if len(h.AcceptOwners) > maxListLen || len(h.AcceptVMs) > maxListLen || len(h.AcceptSources) > maxListLen {
		return fmt.Errorf("%w: host policy list too long", ErrInvalid)
	}
	for _, o := range h.AcceptOwners {
		if !o.valid() {
			return fmt.Errorf("%w: accepted owner %q", ErrInvalid, o)
		}
	}
	for _, v := range h.AcceptVMs {
		if !validName(v) {
			return fmt.Errorf("%w: accepted vm %q", ErrInvalid, v)
		}
	}
	if h.WantsRuntime() && !h.RequireSourceAttestation {
		return fmt.Errorf("%w: require_source_runtime and require_ranges need require_source_attestation", ErrInvalid)
	}
	if len(h.RequireRanges) > maxListLen {
		return fmt.Errorf("%w: host policy list too long", ErrInvalid)
	}
	for _, r := range h.RequireRanges {
		if r.Name == "" || len(r.Name) > maxRangeName || !validDigest(r.SHA256) {
			return fmt.Errorf("%w: required range %q: want a name and a lowercase hex SHA-256", ErrInvalid, r.Name)
		}
	}
	r := Rules{Destinations: h.AcceptSources, MinTrust: h.MinSourceTrust}
	return r.check()
}

// SignHostPolicy signs a host policy.
func SignHostPolicy(key ed25519.PrivateKey, h HostPolicy) (*Signed, error) {
	if err := h.check(); err != nil {
		return nil, fmt.Errorf("sign host policy: %w", err)
	}
	return sign(key, TypeHostPolicy, &h)
}

// VerifiedHostPolicy is a host policy whose signature and signer were
// checked. Only VerifyHostPolicy makes one.
type VerifiedHostPolicy struct {
	signed Signed
	pol    HostPolicy
	host   *Principal
}

// VerifyHostPolicy checks a signed host policy: the host is in the
// directory, and the signer is its owner or an admin.
func VerifyHostPolicy(s *Signed, dir *Directory) (*VerifiedHostPolicy, error) {
	v := &VerifiedHostPolicy{}
	s = s.clone()
	signer, err := s.verify(dir, TypeHostPolicy, &v.pol)
	if err != nil {
		return nil, fmt.Errorf("verify host policy: %w", err)
	}
	if err := v.pol.check(); err != nil {
		return nil, fmt.Errorf("verify host policy: %w", err)
	}
	h, ok := dir.get(v.pol.Host)
	if !ok || h.Kind != KindHost {
		return nil, fmt.Errorf("verify host policy: %w: host %s", ErrUnknownPrincipal, v.pol.Host)
	}
	if !signer.HasRole(RoleAdmin) && (h.Owner == "" || signer.ID() != h.Owner) {
		return nil, fmt.Errorf("verify host policy: %w: signed by %s, neither the host's owner nor an admin", ErrSignature, signer.Name)
	}
	v.signed, v.host = *s, h
	return v, nil
}

// Policy returns a copy of the verified policy.
func (v *VerifiedHostPolicy) Policy() HostPolicy {
	p := v.pol
	p.AcceptOwners = slices.Clone(p.AcceptOwners)
	p.AcceptVMs = slices.Clone(p.AcceptVMs)
	p.AcceptSources = slices.Clone(p.AcceptSources)
	p.RequireRanges = slices.Clone(p.RequireRanges)
	return p
}

// Signed returns the signed document.
func (v *VerifiedHostPolicy) Signed() *Signed { return v.signed.clone() }

// MigrateIn is the evaluator's input for accepting a VM.
type MigrateIn struct {
	// Policy is this host's verified migrate-in policy.
	Policy *VerifiedHostPolicy
	// VM is the arriving VM's verified policy.
	VM *VMPolicy
	// Self is this host.
	Self Principal
	// Source is the sending host, identified by its TLS certificate.
	Source Principal
	// SourceAttestation is the source's verified attestation, if it
	// attested.
	SourceAttestation *Attestation
	// SourceRuntime is the source's run-time report of the VM, checked
	// against its attestation (RuntimeFromResult), if it sent one.
	SourceRuntime *RuntimeReport
}

// EvaluateMigrateIn decides whether this host accepts a VM. It denies by
// default: the policy must be this host's, the VM's owner or id accepted,
// the source host accepted, the VM's own policy must not pin it and must
// list this host among its destinations in every layer, and the source
// must have attested, and measured the VM at run time, if required.
func EvaluateMigrateIn(in MigrateIn) Decision {
	const stage = StageAttested
	if in.Policy == nil || in.VM == nil {
		return Decision{Stage: stage, Rule: "host-policy", Reason: "no verified host policy or vm policy"}
	}
	hp, vm := &in.Policy.pol, in.VM
	if hp.Host != in.Self.ID() {
		return Decision{Stage: stage, Rule: "host-policy", Reason: "host policy is for another host"}
	}
	var fails []failure
	var allowed []string
	fail := func(rule, format string, a ...any) {
		fails = append(fails, failure{rule: rule, reason: fmt.Sprintf(format, a...)})
	}
	label := fmt.Sprintf("host v%d", hp.Version)
	owner := vm.owner.Owner
	switch {
	case slices.Contains(hp.AcceptVMs, vm.VM()):
		allowed = append(allowed, label+" accept_vms "+vm.VM())
	case slices.Contains(hp.AcceptOwners, owner):
		allowed = append(allowed, label+" accept_owners "+string(owner))
	default:
		fail(label+" accept", "vm %s of owner %s (%s) is not accepted here", vm.VM(), vm.ownerPub.Name, owner)
	}
	if in.Source.Kind != KindHost || in.Source.ID() == in.Self.ID() {
		fail(label+" accept_sources", "source is not another known host")
	} else if i := slices.IndexFunc(hp.AcceptSources, func(s string) bool { return matchHost(s, &in.Source) }); i >= 0 {
		allowed = append(allowed, label+" accept_sources "+hp.AcceptSources[i])
	} else {
		fail(label+" accept_sources", "source %s (%s) is not accepted here", in.Source.Name, in.Source.ID())
	}
	for _, l := range vm.layers() {
		if l.rules.Pinned {
			fail(l.label+" pinned", "%s pins vm %s to its host", l.label, vm.VM())
		}
		if !slices.ContainsFunc(l.rules.Destinations, func(s string) bool { return matchHost(s, &in.Self) }) {
			fail(l.label+" destinations", "%s does not list this host among its destinations", l.label)
		}
	}
	if hp.RequireSourceAttestation {
		want := (&Rules{MinTrust: hp.MinSourceTrust}).minTrust()
		switch a := in.SourceAttestation; {
		case a == nil:
			fail(label+" require_source_attestation", "source did not attest")
		case a.HostID != in.Source.TPMHostID:
			fail(label+" require_source_attestation", "source attestation is for TPM host %s, source is %s", a.HostID, in.Source.TPMHostID)
		case a.Trust < want || a.Trust < tpm.TrustSoftware:
			fail(label+" min_source_trust", "source attested at %s, this host requires %s", a.Trust, want)
		default:
			allowed = append(allowed, fmt.Sprintf("%s min_source_trust %s", label, want))
		}
	}
	if hp.WantsRuntime() {
		allowed = checkRuntime(label, *hp, vm.VM(), in.SourceRuntime, fail, allowed)
	}
	if len(fails) > 0 {
		return refuse(stage, fails, nil)
	}
	return Decision{Allow: true, Stage: stage, Rule: strings.Join(allowed, ", "),
		Reason: fmt.Sprintf("accepting vm %s of %s from %s", vm.VM(), vm.ownerPub.Name, in.Source.Name)}
}

// checkRuntime applies the run-time rules of hp to the source's report of
// vm, calling fail for each failed rule; it returns allowed with the rules
// that passed.
func checkRuntime(label string, hp HostPolicy, vm string, rt *RuntimeReport, fail func(rule, format string, a ...any), allowed []string) []string {
	if rt == nil || rt.VM != vm {
		fail(label+" require_source_runtime", "source sent no attested run-time measurement of vm %s", vm)
		return allowed
	}
	var changed []string
	for _, g := range rt.Regions {
		if g.Unexpected {
			changed = append(changed, fmt.Sprintf("%d (%s)", g.ID, g.Mode))
		}
	}
	if len(changed) > 0 {
		fail(label+" require_source_runtime", "on the source, protected regions %s of vm %s changed unexpectedly", strings.Join(changed, ", "), vm)
	} else {
		allowed = append(allowed, fmt.Sprintf("%s require_source_runtime (%d regions, %d ranges, %d violations)",
			label, len(rt.Regions), len(rt.Ranges), rt.Violations))
	}
	for _, want := range hp.RequireRanges {
		got, ok := rt.Range(want.Name)
		switch {
		case !ok:
			fail(label+" require_ranges", "the source did not measure range %s of vm %s", want.Name, vm)
		case got.SHA256 != want.SHA256:
			fail(label+" require_ranges", "range %s of vm %s measures %s on the source, this host requires %s", want.Name, vm, got.SHA256, want.SHA256)
		default:
			allowed = append(allowed, label+" require_ranges "+want.Name)
		}
	}
	return allowed
}
