package policy

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/gvmm/gvmm/tpm"
)

// ParseTrustLevel parses a trust level by the tpm package's names
// ("software-tpm", "hardware-tpm-ek-cert", "hardware-tpm-boot-log").
// "none" and unknown names are refused: no policy may ask for less than an
// attested software TPM.
func ParseTrustLevel(s string) (tpm.TrustLevel, error) {
	for l := tpm.TrustSoftware; l <= tpm.TrustHardwareBootLog; l++ {
		if l.String() == s {
			return l, nil
		}
	}
	return tpm.TrustNone, fmt.Errorf("parse trust level: %w: %q", ErrInvalid, s)
}

// Measurement is one acceptable gvmm build: the SHA-256 of its executable,
// as measured into the TPM (tpm.EventExecutable) and attested. Version is
// a label for people (and remediation messages); only the digest is
// checked, because only the digest is attested.
type Measurement struct {
	Executable string `json:"executable_sha256"`
	Version    string `json:"version,omitempty"`
}

// Rules are one layer's constraints on migrating a VM out. A layer that
// leaves a list empty does not constrain that dimension; the evaluator
// denies when no layer constrains it (see EvaluateMigrateOut).
type Rules struct {
	// Pinned forbids the VM to leave its current host at all.
	Pinned bool `json:"pinned,omitempty"`
	// Migrators may ask for a migration: "role:owner" (the VM's owner),
	// "role:NAME" (a directory role such as "admin") or "key:ID".
	Migrators []string `json:"migrators,omitempty"`
	// Destinations may receive it: "host:ID" or "group:NAME".
	Destinations []string `json:"destinations,omitempty"`
	// MinTrust is the lowest trust level the destination must prove
	// (a tpm.TrustLevel name); empty means software-tpm.
	MinTrust string `json:"min_trust,omitempty"`
	// Measurements are the gvmm builds a destination may run.
	Measurements []Measurement `json:"measurements,omitempty"`
}

func (r *Rules) check() error {
	if len(r.Migrators) > maxListLen || len(r.Destinations) > maxListLen || len(r.Measurements) > maxListLen {
		return fmt.Errorf("%w: rules list too long", ErrInvalid)
	}
	for _, m := range r.Migrators {
		kind, v, _ := strings.Cut(m, ":")
		switch {
		case kind == "role" && validName(v):
		case kind == "key" && KeyID(v).valid():
		default:
			return fmt.Errorf("%w: migrator %q", ErrInvalid, m)
		}
	}
	for _, h := range r.Destinations {
		kind, v, _ := strings.Cut(h, ":")
		switch {
		case kind == "group" && validName(v):
		case kind == "host" && KeyID(v).valid():
		default:
			return fmt.Errorf("%w: destination %q", ErrInvalid, h)
		}
	}
	if r.MinTrust != "" {
		if _, err := ParseTrustLevel(r.MinTrust); err != nil {
			return err
		}
	}
	for _, m := range r.Measurements {
		if !validDigest(m.Executable) || len(m.Version) > maxNameLen {
			return fmt.Errorf("%w: measurement %q", ErrInvalid, m.Executable)
		}
	}
	return nil
}

func (r *Rules) minTrust() tpm.TrustLevel {
	if r.MinTrust == "" {
		return tpm.TrustSoftware
	}
	l, err := ParseTrustLevel(r.MinTrust)
	if err != nil {
		return tpm.TrustHardwareBootLog + 1 // unreachable after check; fail closed
	}
	return l
}

// OwnerLayer is the part of a VM's policy its owner signs (or IT signs on
// the owner's behalf). Owner names the VM's owner; Version only grows.
type OwnerLayer struct {
	VM      string `json:"vm"`
	Version uint64 `json:"version"`
	Owner   KeyID  `json:"owner"`
	Rules   Rules  `json:"rules"`
}

// EnterpriseLayer is the part of a VM's policy only IT (RoleAdmin) signs.
// Its rules constrain every migration in addition to the owner's: the
// owner cannot loosen them. Version only grows.
type EnterpriseLayer struct {
	VM      string `json:"vm"`
	Version uint64 `json:"version"`
	Rules   Rules  `json:"rules"`
}

// VMPolicyDoc is a VM's policy as it travels with the VM and is stored: two
// separately signed layers. The enterprise layer is optional, but once a
// host has installed one for a VM it refuses any later policy without one.
type VMPolicyDoc struct {
	Owner      *Signed `json:"owner"`
	Enterprise *Signed `json:"enterprise,omitempty"`
}

// SignOwnerLayer signs an owner layer with the owner's (or an admin's)
// key.
func SignOwnerLayer(key ed25519.PrivateKey, l OwnerLayer) (*Signed, error) {
	if err := l.check(); err != nil {
		return nil, fmt.Errorf("sign owner layer: %w", err)
	}
	return sign(key, TypeOwnerLayer, &l)
}

// SignEnterpriseLayer signs an enterprise layer with an admin's key.
func SignEnterpriseLayer(key ed25519.PrivateKey, l EnterpriseLayer) (*Signed, error) {
	if err := l.check(); err != nil {
		return nil, fmt.Errorf("sign enterprise layer: %w", err)
	}
	return sign(key, TypeEnterpriseLayer, &l)
}

func (l *OwnerLayer) check() error {
	if !validName(l.VM) || !l.Owner.valid() || l.Version == 0 {
		return fmt.Errorf("%w: owner layer needs vm, owner and a version > 0", ErrInvalid)
	}
	return l.Rules.check()
}

func (l *EnterpriseLayer) check() error {
	if !validName(l.VM) || l.Version == 0 {
		return fmt.Errorf("%w: enterprise layer needs vm and a version > 0", ErrInvalid)
	}
	return l.Rules.check()
}

// ParseVMPolicyDoc decodes a VM policy from an untrusted source, size-
// limited and strict. Verify it with VerifyVMPolicy before use.
func ParseVMPolicyDoc(r io.Reader) (*VMPolicyDoc, error) {
	b, err := readLimited(r)
	if err != nil {
		return nil, fmt.Errorf("parse vm policy: %w", err)
	}
	var d VMPolicyDoc
	if err := decodeStrict(b, &d); err != nil {
		return nil, fmt.Errorf("parse vm policy: %w", err)
	}
	if d.Owner == nil {
		return nil, fmt.Errorf("parse vm policy: %w: no owner layer", ErrInvalid)
	}
	return &d, nil
}

// Marshal encodes the document; its DocumentDigest is what a
// set-vm-policy request names.
func (d *VMPolicyDoc) Marshal() ([]byte, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("marshal vm policy: %w", err)
	}
	return b, nil
}

// VMPolicy is a verified VM policy. Only VerifyVMPolicy makes one, so
// holding one means both layers' signatures and signers were checked
// against a directory. It is immutable.
type VMPolicy struct {
	doc         VMPolicyDoc
	owner       OwnerLayer
	ownerPub    *Principal // the VM's owner
	ownerSigner *Principal // who signed the owner layer
	ent         *EnterpriseLayer
	entSigner   *Principal
	minTrust    tpm.TrustLevel
	ownerLabel  string
	entLabel    string
}

// VerifyVMPolicy checks a VM policy against a directory: the owner layer
// signed by the owner it names (a user in the directory) or by an admin,
// the enterprise layer (if any) signed by an admin and for the same VM,
// and every rule well-formed.
func VerifyVMPolicy(doc *VMPolicyDoc, dir *Directory) (*VMPolicy, error) {
	if doc == nil || doc.Owner == nil {
		return nil, fmt.Errorf("verify vm policy: %w: no owner layer", ErrInvalid)
	}
	// Verify a private copy, so that the caller changing its document
	// afterwards cannot change what was verified.
	doc = &VMPolicyDoc{Owner: doc.Owner.clone(), Enterprise: doc.Enterprise.clone()}
	p := &VMPolicy{doc: *doc}
	signer, err := doc.Owner.verify(dir, TypeOwnerLayer, &p.owner)
	if err != nil {
		return nil, fmt.Errorf("verify vm policy: %w", err)
	}
	if err := p.owner.check(); err != nil {
		return nil, fmt.Errorf("verify vm policy: owner layer: %w", err)
	}
	owner, ok := dir.get(p.owner.Owner)
	if !ok || owner.Kind != KindUser {
		return nil, fmt.Errorf("verify vm policy %s: %w: owner %s is not a known user", p.owner.VM, ErrUnknownPrincipal, p.owner.Owner)
	}
	if signer.ID() != owner.ID() && !signer.HasRole(RoleAdmin) {
		return nil, fmt.Errorf("verify vm policy %s: %w: owner layer signed by %s, neither the owner nor an admin", p.owner.VM, ErrSignature, signer.Name)
	}
	p.ownerPub, p.ownerSigner = owner, signer
	p.minTrust = p.owner.Rules.minTrust()
	p.ownerLabel = fmt.Sprintf("owner v%d", p.owner.Version)
	if doc.Enterprise != nil {
		var e EnterpriseLayer
		es, err := doc.Enterprise.verify(dir, TypeEnterpriseLayer, &e)
		if err != nil {
			return nil, fmt.Errorf("verify vm policy %s: %w", p.owner.VM, err)
		}
		if err := e.check(); err != nil {
			return nil, fmt.Errorf("verify vm policy %s: enterprise layer: %w", p.owner.VM, err)
		}
		if !es.HasRole(RoleAdmin) {
			return nil, fmt.Errorf("verify vm policy %s: %w: enterprise layer signed by %s, not an admin", p.owner.VM, ErrSignature, es.Name)
		}
		if e.VM != p.owner.VM {
			return nil, fmt.Errorf("verify vm policy %s: %w: enterprise layer is for vm %s", p.owner.VM, ErrInvalid, e.VM)
		}
		p.ent, p.entSigner = &e, es
		p.minTrust = max(p.minTrust, e.Rules.minTrust())
		p.entLabel = fmt.Sprintf("enterprise v%d", e.Version)
	}
	return p, nil
}

// VM returns the VM's id.
func (p *VMPolicy) VM() string { return p.owner.VM }

// Owner returns the VM's owner.
func (p *VMPolicy) Owner() Principal { return p.ownerPub.clone() }

// OwnerLayer returns a copy of the verified owner layer.
func (p *VMPolicy) OwnerLayer() OwnerLayer {
	l := p.owner
	l.Rules = cloneRules(l.Rules)
	return l
}

// EnterpriseLayer returns a copy of the verified enterprise layer, if any.
func (p *VMPolicy) EnterpriseLayer() (EnterpriseLayer, bool) {
	if p.ent == nil {
		return EnterpriseLayer{}, false
	}
	l := *p.ent
	l.Rules = cloneRules(l.Rules)
	return l, true
}

// Doc returns the signed document the policy was verified from.
func (p *VMPolicy) Doc() *VMPolicyDoc {
	return &VMPolicyDoc{Owner: p.doc.Owner.clone(), Enterprise: p.doc.Enterprise.clone()}
}

// MinTrust is the effective minimum trust level: the higher of the layers'.
func (p *VMPolicy) MinTrust() tpm.TrustLevel { return p.minTrust }

func cloneRules(r Rules) Rules {
	r.Migrators = append([]string(nil), r.Migrators...)
	r.Destinations = append([]string(nil), r.Destinations...)
	r.Measurements = append([]Measurement(nil), r.Measurements...)
	return r
}

// CheckUpdate decides whether next may replace current for the same VM:
//   - the owner layer's version must grow (an identical layer is a no-op);
//   - a change of owner must be signed by the current owner or an admin,
//     so nobody can take a VM by signing a policy naming themselves;
//   - an installed enterprise layer may not disappear, and its version must
//     not go back (an identical layer is a no-op).
//
// It does not check who asked for the update (see HostState).
func CheckUpdate(current, next *VMPolicy) error {
	if current.VM() != next.VM() {
		return fmt.Errorf("check policy update: %w: vm %s replaced by vm %s", ErrInvalid, current.VM(), next.VM())
	}
	switch {
	case next.owner.Version < current.owner.Version,
		next.owner.Version == current.owner.Version && !bytes.Equal(next.doc.Owner.Body, current.doc.Owner.Body):
		return fmt.Errorf("check policy update %s: %w: owner layer v%d over v%d", current.VM(), ErrRollback, next.owner.Version, current.owner.Version)
	}
	if next.owner.Owner != current.owner.Owner && next.ownerSigner.ID() != current.ownerPub.ID() && !next.ownerSigner.HasRole(RoleAdmin) {
		return fmt.Errorf("check policy update %s: %w: a change of owner must be signed by the current owner or an admin", current.VM(), ErrForbidden)
	}
	if current.ent != nil {
		switch {
		case next.ent == nil:
			return fmt.Errorf("check policy update %s: %w: enterprise layer v%d removed", current.VM(), ErrRollback, current.ent.Version)
		case next.ent.Version < current.ent.Version,
			next.ent.Version == current.ent.Version && !bytes.Equal(next.doc.Enterprise.Body, current.doc.Enterprise.Body):
			return fmt.Errorf("check policy update %s: %w: enterprise layer v%d over v%d", current.VM(), ErrRollback, next.ent.Version, current.ent.Version)
		}
	}
	return nil
}

// digestHex renders an executable digest as policies spell it.
func digestHex(d [32]byte) string { return hex.EncodeToString(d[:]) }
