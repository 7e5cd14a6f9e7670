package policy

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// KeyID names a principal: the lower-case hex SHA-256 of its ed25519
// public key. It is derived from the key, so it cannot be claimed.
type KeyID string

// KeyIDOf returns the id of a public key.
func KeyIDOf(pub ed25519.PublicKey) KeyID {
	d := sha256.Sum256(pub)
	return KeyID(hex.EncodeToString(d[:]))
}

func (k KeyID) valid() bool {
	if len(k) != 2*sha256.Size {
		return false
	}
	for _, c := range []byte(k) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Kind says whether a principal is a person or a host.
type Kind string

const (
	// KindUser is a person (Tom, Bob, an IT administrator).
	KindUser Kind = "user"
	// KindHost is a gvmm host. Its TLS certificate carries its key.
	KindHost Kind = "host"
)

// Role is a user's role. Roles are names: the set is open, and policies
// refer to them as "role:NAME".
type Role string

const (
	// RoleOwner is relative to a VM: the principal its policy names as
	// owner. It is never granted in a Directory.
	RoleOwner Role = "owner"
	// RoleAdmin is the enterprise's IT administrator. Only admins sign
	// enterprise policy layers.
	RoleAdmin Role = "admin"
	// RoleUser is an ordinary user.
	RoleUser Role = "user"
)

// Limits on a directory. Everything beyond them is refused.
const (
	MaxPrincipals = 4096
	maxNameLen    = 128
	maxListLen    = 256
)

// Principal is a user or a host, identified by its ed25519 key.
type Principal struct {
	// Name is for people to read; nothing is decided on it.
	Name string `json:"name"`
	Kind Kind   `json:"kind"`
	// Key is the ed25519 public key (32 bytes).
	Key []byte `json:"key"`
	// Roles are a user's roles (never RoleOwner).
	Roles []Role `json:"roles,omitempty"`
	// Groups are a host's groups ("tom-devices", "office").
	Groups []string `json:"groups,omitempty"`
	// TPMHostID is a host's TPM identity (tpm.HostIDFromEK), which its
	// attestation must carry.
	TPMHostID string `json:"tpm_host_id,omitempty"`
	// Owner is the user who owns a host; with admins, the only one who
	// may set its migrate-in policy.
	Owner KeyID `json:"owner,omitempty"`
}

// ID returns the principal's key id.
func (p Principal) ID() KeyID { return KeyIDOf(p.Key) }

// HasRole reports whether a user holds role r in the directory.
func (p Principal) HasRole(r Role) bool {
	return p.Kind == KindUser && slices.Contains(p.Roles, r)
}

// InGroup reports whether a host is in group g.
func (p Principal) InGroup(g string) bool {
	return p.Kind == KindHost && slices.Contains(p.Groups, g)
}

func (p *Principal) clone() Principal {
	c := *p
	c.Key = slices.Clone(p.Key)
	c.Roles = slices.Clone(p.Roles)
	c.Groups = slices.Clone(p.Groups)
	return c
}

// validName accepts the names used for roles, groups and VMs: 1 to 128
// bytes of letters, digits and "-_.@".
func validName(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == '@') {
			return false
		}
	}
	return true
}

func (p *Principal) check() error {
	if len(p.Key) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: key of %q is %d bytes, want %d", ErrInvalid, p.Name, len(p.Key), ed25519.PublicKeySize)
	}
	if len(p.Name) > maxNameLen || strings.ContainsFunc(p.Name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%w: principal name", ErrInvalid)
	}
	if len(p.Roles) > maxListLen || len(p.Groups) > maxListLen {
		return fmt.Errorf("%w: %q has too many roles or groups", ErrInvalid, p.Name)
	}
	switch p.Kind {
	case KindUser:
		if len(p.Groups) > 0 || p.TPMHostID != "" || p.Owner != "" {
			return fmt.Errorf("%w: user %q has host fields", ErrInvalid, p.Name)
		}
		for _, r := range p.Roles {
			if !validName(string(r)) || r == RoleOwner {
				return fmt.Errorf("%w: user %q: role %q cannot be granted", ErrInvalid, p.Name, r)
			}
		}
	case KindHost:
		if len(p.Roles) > 0 {
			return fmt.Errorf("%w: host %q has roles", ErrInvalid, p.Name)
		}
		if p.TPMHostID == "" || len(p.TPMHostID) > maxNameLen {
			return fmt.Errorf("%w: host %q has no TPM host id", ErrInvalid, p.Name)
		}
		for _, g := range p.Groups {
			if !validName(g) {
				return fmt.Errorf("%w: host %q: group %q", ErrInvalid, p.Name, g)
			}
		}
		if p.Owner != "" && !p.Owner.valid() {
			return fmt.Errorf("%w: host %q: owner id", ErrInvalid, p.Name)
		}
	default:
		return fmt.Errorf("%w: principal %q has kind %q", ErrInvalid, p.Name, p.Kind)
	}
	return nil
}

// Directory is a host's set of known principals: its trust configuration.
// It is kept in the host's sealed storage with the policies (see
// HostState) and is immutable once made; it is safe for concurrent use.
type Directory struct {
	byID   map[KeyID]*Principal
	byTPM  map[string]KeyID
	sorted []KeyID
}

// NewDirectory checks every principal and builds a directory. Duplicate
// keys or TPM host ids, and host owners that are not users in it, are
// refused.
func NewDirectory(ps []Principal) (*Directory, error) {
	if len(ps) > MaxPrincipals {
		return nil, fmt.Errorf("new directory: %w: %d principals (max %d)", ErrInvalid, len(ps), MaxPrincipals)
	}
	d := &Directory{byID: make(map[KeyID]*Principal, len(ps)), byTPM: map[string]KeyID{}}
	for i := range ps {
		p := ps[i].clone()
		if err := p.check(); err != nil {
			return nil, fmt.Errorf("new directory: %w", err)
		}
		id := p.ID()
		if _, dup := d.byID[id]; dup {
			return nil, fmt.Errorf("new directory: %w: key of %q listed twice", ErrInvalid, p.Name)
		}
		if p.Kind == KindHost {
			if _, dup := d.byTPM[p.TPMHostID]; dup {
				return nil, fmt.Errorf("new directory: %w: TPM host id of %q listed twice", ErrInvalid, p.Name)
			}
			d.byTPM[p.TPMHostID] = id
		}
		d.byID[id] = &p
		d.sorted = append(d.sorted, id)
	}
	for _, p := range d.byID {
		if p.Kind == KindHost && p.Owner != "" {
			o, ok := d.byID[p.Owner]
			if !ok || o.Kind != KindUser {
				return nil, fmt.Errorf("new directory: %w: owner of host %q is not a known user", ErrInvalid, p.Name)
			}
		}
	}
	slices.Sort(d.sorted)
	return d, nil
}

// Lookup returns a copy of the principal with this id.
func (d *Directory) Lookup(id KeyID) (Principal, bool) {
	p, ok := d.byID[id]
	if !ok {
		return Principal{}, false
	}
	return p.clone(), true
}

func (d *Directory) get(id KeyID) (*Principal, bool) {
	p, ok := d.byID[id]
	return p, ok
}

// Principals returns copies of every principal, in key id order.
func (d *Directory) Principals() []Principal {
	out := make([]Principal, 0, len(d.sorted))
	for _, id := range d.sorted {
		out = append(out, d.byID[id].clone())
	}
	return out
}

// HostForCert returns the host whose key a peer's TLS certificate carries.
// Host certificates are pinned by key: the certificate's public key must be
// the ed25519 key of a host in the directory. Whoever calls this must have
// completed the TLS handshake, which proved the peer holds that key.
func (d *Directory) HostForCert(cert *x509.Certificate) (Principal, error) {
	if cert == nil {
		return Principal{}, fmt.Errorf("host for certificate: %w: no certificate", ErrUnknownPrincipal)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return Principal{}, fmt.Errorf("host for certificate: %w: not an ed25519 key", ErrUnknownPrincipal)
	}
	p, ok := d.byID[KeyIDOf(pub)]
	if !ok || p.Kind != KindHost {
		return Principal{}, fmt.Errorf("host for certificate: %w: key %s", ErrUnknownPrincipal, KeyIDOf(pub))
	}
	return p.clone(), nil
}
