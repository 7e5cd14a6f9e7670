package policy

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Action is what a request asks for.
type Action string

const (
	// ActionMigrate asks the addressed host to migrate VM to Destination.
	ActionMigrate Action = "migrate"
	// ActionSetVMPolicy asks the addressed host to install the VM policy
	// whose canonical encoding has SHA-256 Document.
	ActionSetVMPolicy Action = "set-vm-policy"
	// ActionSetHostPolicy asks the addressed host to install the signed
	// host policy whose encoding has SHA-256 Document.
	ActionSetHostPolicy Action = "set-host-policy"
)

// Nonce sizes.
const (
	MinNonce = 16
	MaxNonce = 64
)

// Request is what a user signs. It names no requester: who asks is the key
// that signed it. Audience binds it to one host, Nonce and IssuedAt make it
// single-use and short-lived, and Document pins the exact policy a
// set-policy request installs.
type Request struct {
	Action Action `json:"action"`
	// Audience is the host the request is addressed to.
	Audience KeyID  `json:"audience"`
	VM       string `json:"vm"`
	// Destination is the host to migrate to (ActionMigrate only).
	Destination KeyID `json:"destination,omitempty"`
	// Document is the hex SHA-256 of the policy document to install
	// (set-policy actions only).
	Document string `json:"document,omitempty"`
	Nonce    []byte `json:"nonce"`
	// IssuedAt is Unix seconds.
	IssuedAt int64 `json:"issued_at"`
}

func (r *Request) check() error {
	if !r.Audience.valid() {
		return fmt.Errorf("%w: audience", ErrInvalid)
	}
	if len(r.Nonce) < MinNonce || len(r.Nonce) > MaxNonce {
		return fmt.Errorf("%w: nonce of %d bytes", ErrInvalid, len(r.Nonce))
	}
	switch r.Action {
	case ActionMigrate:
		if !validName(r.VM) || !r.Destination.valid() || r.Document != "" {
			return fmt.Errorf("%w: migrate request needs vm and destination only", ErrInvalid)
		}
	case ActionSetVMPolicy:
		if !validName(r.VM) || r.Destination != "" || !validDigest(r.Document) {
			return fmt.Errorf("%w: set-vm-policy request needs vm and document only", ErrInvalid)
		}
	case ActionSetHostPolicy:
		if r.VM != "" || r.Destination != "" || !validDigest(r.Document) {
			return fmt.Errorf("%w: set-host-policy request needs document only", ErrInvalid)
		}
	default:
		return fmt.Errorf("%w: action %q", ErrInvalid, r.Action)
	}
	return nil
}

func validDigest(s string) bool { return KeyID(s).valid() }

// DocumentDigest is the value a set-policy request's Document carries for
// an encoded document.
func DocumentDigest(encoded []byte) string {
	d := sha256.Sum256(encoded)
	return hex.EncodeToString(d[:])
}

// SignRequest signs r with a user's key. A nil Nonce is filled with 32
// random bytes; IssuedAt must be set by the caller (from its clock).
func SignRequest(key ed25519.PrivateKey, r Request) (*Signed, error) {
	if r.Nonce == nil {
		r.Nonce = make([]byte, 32)
		if _, err := rand.Read(r.Nonce); err != nil {
			return nil, fmt.Errorf("sign request: %w", err)
		}
	}
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("sign request: %w", err)
	}
	return sign(key, TypeRequest, &r)
}

// Authenticated is a request whose signature, freshness, audience and
// uniqueness were checked. Only Authenticator makes one: its fields are
// unexported so that no caller can put a name on a request.
type Authenticated struct {
	requester Principal
	request   Request
	digest    string
}

// Requester returns the user whose key signed the request.
func (a *Authenticated) Requester() Principal { return a.requester.clone() }

// Request returns the request.
func (a *Authenticated) Request() Request {
	r := a.request
	r.Nonce = append([]byte(nil), r.Nonce...)
	return r
}

// Digest is the hex SHA-256 of the signed message, for the audit log.
func (a *Authenticated) Digest() string { return a.digest }

// AuthConfig configures an Authenticator.
type AuthConfig struct {
	// Directory holds the users whose requests are accepted.
	Directory *Directory
	// Host is this host's id: requests addressed elsewhere are refused.
	Host KeyID
	// MaxAge is how long after IssuedAt a request is accepted (default
	// 2 minutes); Skew how far in the future (default 30 s).
	MaxAge, Skew time.Duration
	// Replay remembers used nonces; nil makes a private cache of
	// DefaultReplayEntries.
	Replay *ReplayCache
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// Authenticator checks signed requests.
type Authenticator struct {
	dir          *Directory
	host         KeyID
	maxAge, skew time.Duration
	replay       *ReplayCache
	now          func() time.Time
}

// NewAuthenticator checks cfg and returns an Authenticator.
func NewAuthenticator(cfg AuthConfig) (*Authenticator, error) {
	if cfg.Directory == nil || !cfg.Host.valid() {
		return nil, fmt.Errorf("new authenticator: %w: directory and host id are required", ErrInvalid)
	}
	a := &Authenticator{dir: cfg.Directory, host: cfg.Host, maxAge: cfg.MaxAge, skew: cfg.Skew, replay: cfg.Replay, now: cfg.Now}
	if a.maxAge <= 0 {
		a.maxAge = 2 * time.Minute
	}
	if a.skew <= 0 {
		a.skew = 30 * time.Second
	}
	if a.replay == nil {
		a.replay = NewReplayCache(DefaultReplayEntries)
	}
	if a.now == nil {
		a.now = time.Now
	}
	return a, nil
}

// Authenticate checks a signed request: type, a signer that is a user in
// the directory, the signature over the exact bytes, a canonical and
// well-formed body, the audience, the validity window and finally the
// nonce, which is consumed only by a request that passed everything else.
func (a *Authenticator) Authenticate(s *Signed) (*Authenticated, error) {
	var r Request
	p, err := s.verify(a.dir, TypeRequest, &r)
	if err != nil {
		return nil, fmt.Errorf("authenticate request: %w", err)
	}
	if p.Kind != KindUser {
		return nil, fmt.Errorf("authenticate request: %w: signer %s is not a user", ErrUnknownPrincipal, s.Signer)
	}
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("authenticate request: %w", err)
	}
	if r.Audience != a.host {
		return nil, fmt.Errorf("authenticate request: %w: addressed to host %s", ErrInvalid, r.Audience)
	}
	now := a.now()
	issued := time.Unix(r.IssuedAt, 0)
	if issued.Before(now.Add(-a.maxAge)) || issued.After(now.Add(a.skew)) {
		return nil, fmt.Errorf("authenticate request: %w: issued %s, now %s", ErrStale, issued.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if err := a.replay.Use(string(s.Signer)+"/"+hex.EncodeToString(r.Nonce), issued.Add(a.maxAge), now); err != nil {
		return nil, fmt.Errorf("authenticate request: %w", err)
	}
	d := sha256.Sum256(signedMessage(TypeRequest, s.Body))
	return &Authenticated{requester: p.clone(), request: r, digest: hex.EncodeToString(d[:])}, nil
}

// DefaultReplayEntries is the default capacity of a ReplayCache.
const DefaultReplayEntries = 1 << 16

// ReplayCache remembers used nonces until the requests carrying them would
// be stale anyway. When it is full of unexpired entries it refuses new
// ones (ErrBusy) rather than forget any. Safe for concurrent use.
type ReplayCache struct {
	mu   sync.Mutex
	seen map[string]time.Time // guarded by mu
	max  int
}

// NewReplayCache returns a cache of at most max entries (at least 1).
func NewReplayCache(n int) *ReplayCache {
	return &ReplayCache{seen: map[string]time.Time{}, max: max(n, 1)}
}

// replayEntry is a remembered nonce, as kept in the host state.
type replayEntry struct {
	Key     string `json:"key"`
	Expires int64  `json:"expires"`
}

// snapshot returns the entries, sorted by key, for the host state.
func (c *ReplayCache) snapshot() []replayEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]replayEntry, 0, len(c.seen))
	for k, exp := range c.seen {
		out = append(out, replayEntry{Key: k, Expires: exp.Unix()})
	}
	slices.SortFunc(out, func(a, b replayEntry) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// restore fills an empty cache from a host state's entries.
func (c *ReplayCache) restore(es []replayEntry) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(es) > c.max {
		return fmt.Errorf("restore replay cache: %w: %d entries (max %d)", ErrInvalid, len(es), c.max)
	}
	for _, e := range es {
		if len(e.Key) > 2*maxNameLen+2*MaxNonce {
			return fmt.Errorf("restore replay cache: %w: entry", ErrInvalid)
		}
		c.seen[e.Key] = time.Unix(e.Expires, 0)
	}
	return nil
}

// Use records key until expires (inclusive), failing with ErrReplay if it is already
// recorded and unexpired.
func (c *ReplayCache) Use(key string, expires, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if exp, ok := c.seen[key]; ok && !now.After(exp) {
		return fmt.Errorf("use nonce: %w", ErrReplay)
	}
	if len(c.seen) >= c.max {
		for k, exp := range c.seen {
			if now.After(exp) {
				delete(c.seen, k)
			}
		}
		if len(c.seen) >= c.max {
			return fmt.Errorf("use nonce: %w", ErrBusy)
		}
	}
	c.seen[key] = expires
	return nil
}
