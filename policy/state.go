package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/gvmm/gvmm/tpm"
)

// StateBlob is the name under which a host's policy state is kept in its
// sealed store (tpm.Store).
const StateBlob = "policy-state"

// MaxStateSize bounds an encoded host state.
const MaxStateSize = 4 << 20

// maxVMs bounds the VM policies one host keeps.
const maxVMs = 1024

// BlobStore is the part of the host's sealed store (*tpm.Store) the policy
// state needs. Policies are kept there and nowhere else, so that only the
// measured gvmm can read or change them.
type BlobStore interface {
	Put(name string, data []byte) error
	Get(name string) ([]byte, error)
}

// HostState is everything a host's policy decisions rest on: its
// directory, its migrate-in policy and the installed VM policies. It
// refuses rollbacks of any policy it holds. Safe for concurrent use.
type HostState struct {
	mu   sync.Mutex
	dir  *Directory
	host *VerifiedHostPolicy  // guarded by mu
	vms  map[string]*VMPolicy // guarded by mu
	// replay holds the nonces of requests this host accepted; it is
	// saved with the state so that a request is refused as a replay
	// across restarts and separate gvmm processes.
	replay *ReplayCache
}

// StateReplayEntries is the capacity of a host state's replay cache.
const StateReplayEntries = 8192

// NewHostState returns an empty state over a directory.
func NewHostState(dir *Directory) *HostState {
	return &HostState{dir: dir, vms: map[string]*VMPolicy{}, replay: NewReplayCache(StateReplayEntries)}
}

// Replay returns the state's replay cache, for AuthConfig.Replay: a
// caller that authenticates requests with it and saves the state after
// each keeps requests single-use across processes.
func (s *HostState) Replay() *ReplayCache { return s.replay }

// Directory returns the directory.
func (s *HostState) Directory() *Directory { return s.dir }

// HostPolicy returns the installed migrate-in policy.
func (s *HostState) HostPolicy() (*VerifiedHostPolicy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.host, s.host != nil
}

// VMPolicy returns a VM's installed policy.
func (s *HostState) VMPolicy(vm string) (*VMPolicy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.vms[vm]
	return p, ok
}

// SetVMPolicy installs a VM policy at a user's authenticated request. The
// request must be a set-vm-policy request for this VM naming exactly this
// document; the requester must be the current owner or an admin (for a
// VM not yet known: the owner the policy names, or an admin); and the new
// policy must pass CheckUpdate against the installed one.
func (s *HostState) SetVMPolicy(req *Authenticated, doc *VMPolicyDoc) (*VMPolicy, error) {
	if req == nil || req.request.Action != ActionSetVMPolicy {
		return nil, fmt.Errorf("set vm policy: %w: not a set-vm-policy request", ErrForbidden)
	}
	enc, err := doc.Marshal()
	if err != nil {
		return nil, fmt.Errorf("set vm policy: %w", err)
	}
	if DocumentDigest(enc) != req.request.Document {
		return nil, fmt.Errorf("set vm policy: %w: request names another document", ErrForbidden)
	}
	next, err := VerifyVMPolicy(doc, s.dir)
	if err != nil {
		return nil, fmt.Errorf("set vm policy: %w", err)
	}
	if next.VM() != req.request.VM {
		return nil, fmt.Errorf("set vm policy: %w: request is for vm %s", ErrForbidden, req.request.VM)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	owner := next.owner.Owner
	if cur, ok := s.vms[next.VM()]; ok {
		owner = cur.owner.Owner
	}
	if req.requester.ID() != owner && !req.requester.HasRole(RoleAdmin) {
		return nil, fmt.Errorf("set vm policy %s: %w: %s is neither its owner nor an admin", next.VM(), ErrForbidden, req.requester.Name)
	}
	return next, s.installLocked(next)
}

// ReceiveVMPolicy installs the policy of a VM arriving by migration (the
// migrate-in decision has allowed it). Its signatures are checked against
// this host's directory and it must pass CheckUpdate against any policy
// this host already holds for the VM.
func (s *HostState) ReceiveVMPolicy(doc *VMPolicyDoc) (*VMPolicy, error) {
	next, err := VerifyVMPolicy(doc, s.dir)
	if err != nil {
		return nil, fmt.Errorf("receive vm policy: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return next, s.installLocked(next)
}

func (s *HostState) installLocked(next *VMPolicy) error {
	if cur, ok := s.vms[next.VM()]; ok {
		if err := CheckUpdate(cur, next); err != nil {
			return err
		}
	} else if len(s.vms) >= maxVMs {
		return fmt.Errorf("install vm policy: %w: %d vm policies held", ErrInvalid, len(s.vms))
	}
	s.vms[next.VM()] = next
	return nil
}

// SetHostPolicy installs this host's migrate-in policy at an authenticated
// set-host-policy request naming exactly this document, from the host's
// owner or an admin. The version must grow.
func (s *HostState) SetHostPolicy(req *Authenticated, signed *Signed) (*VerifiedHostPolicy, error) {
	if req == nil || req.request.Action != ActionSetHostPolicy {
		return nil, fmt.Errorf("set host policy: %w: not a set-host-policy request", ErrForbidden)
	}
	enc, err := signed.Marshal()
	if err != nil {
		return nil, fmt.Errorf("set host policy: %w", err)
	}
	if DocumentDigest(enc) != req.request.Document {
		return nil, fmt.Errorf("set host policy: %w: request names another document", ErrForbidden)
	}
	next, err := VerifyHostPolicy(signed, s.dir)
	if err != nil {
		return nil, fmt.Errorf("set host policy: %w", err)
	}
	if next.pol.Host != req.request.Audience {
		return nil, fmt.Errorf("set host policy: %w: policy is for another host", ErrForbidden)
	}
	if req.requester.ID() != next.host.Owner && !req.requester.HasRole(RoleAdmin) {
		return nil, fmt.Errorf("set host policy: %w: %s is neither the host's owner nor an admin", ErrForbidden, req.requester.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.host != nil && next.pol.Version <= s.host.pol.Version {
		return nil, fmt.Errorf("set host policy: %w: v%d over v%d", ErrRollback, next.pol.Version, s.host.pol.Version)
	}
	s.host = next
	return next, nil
}

// stateFile is the encoded HostState.
type stateFile struct {
	Format     int            `json:"format"`
	Directory  []Principal    `json:"directory"`
	HostPolicy *Signed        `json:"host_policy,omitempty"`
	VMs        []*VMPolicyDoc `json:"vms,omitempty"`
	Nonces     []replayEntry  `json:"nonces,omitempty"`
}

const stateFormat = 1

// MarshalHostState encodes a host's policy state for its sealed store.
func MarshalHostState(s *HostState) ([]byte, error) {
	s.mu.Lock()
	f := stateFile{Format: stateFormat, Directory: s.dir.Principals()}
	if s.host != nil {
		f.HostPolicy = s.host.Signed()
	}
	names := make([]string, 0, len(s.vms))
	for n := range s.vms {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		f.VMs = append(f.VMs, s.vms[n].Doc())
	}
	s.mu.Unlock()
	f.Nonces = s.replay.snapshot()
	b, err := json.Marshal(&f)
	if err != nil {
		return nil, fmt.Errorf("marshal host state: %w", err)
	}
	if len(b) > MaxStateSize {
		return nil, fmt.Errorf("marshal host state: %w: %d bytes", ErrInvalid, len(b))
	}
	return b, nil
}

// UnmarshalHostState decodes a host's policy state, size-limited and
// strict, and verifies every policy in it again against its directory:
// sealed storage keeps it from being changed, and this keeps a bug or an
// older format from slipping an unverified policy in.
func UnmarshalHostState(b []byte) (*HostState, error) {
	if len(b) > MaxStateSize {
		return nil, fmt.Errorf("unmarshal host state: %w: %d bytes", ErrInvalid, len(b))
	}
	var f stateFile
	dec := json.NewDecoder(bytesReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("unmarshal host state: %w: %w", ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("unmarshal host state: %w: trailing data", ErrInvalid)
	}
	if f.Format != stateFormat {
		return nil, fmt.Errorf("unmarshal host state: %w: format %d", ErrInvalid, f.Format)
	}
	if len(f.VMs) > maxVMs {
		return nil, fmt.Errorf("unmarshal host state: %w: %d vm policies", ErrInvalid, len(f.VMs))
	}
	dir, err := NewDirectory(f.Directory)
	if err != nil {
		return nil, fmt.Errorf("unmarshal host state: %w", err)
	}
	s := NewHostState(dir)
	if f.HostPolicy != nil {
		if s.host, err = VerifyHostPolicy(f.HostPolicy, dir); err != nil {
			return nil, fmt.Errorf("unmarshal host state: %w", err)
		}
	}
	for _, d := range f.VMs {
		p, err := VerifyVMPolicy(d, dir)
		if err != nil {
			return nil, fmt.Errorf("unmarshal host state: %w", err)
		}
		if _, dup := s.vms[p.VM()]; dup {
			return nil, fmt.Errorf("unmarshal host state: %w: vm %s twice", ErrInvalid, p.VM())
		}
		s.vms[p.VM()] = p
	}
	if err := s.replay.restore(f.Nonces); err != nil {
		return nil, fmt.Errorf("unmarshal host state: %w", err)
	}
	return s, nil
}

// SaveHostState writes the state into the sealed store as StateBlob.
func SaveHostState(st BlobStore, s *HostState) error {
	b, err := MarshalHostState(s)
	if err != nil {
		return err
	}
	if err := st.Put(StateBlob, b); err != nil {
		return fmt.Errorf("save host state: %w", err)
	}
	return nil
}

// LoadHostState reads the state from the sealed store.
func LoadHostState(st BlobStore) (*HostState, error) {
	b, err := st.Get(StateBlob)
	if err != nil {
		return nil, fmt.Errorf("load host state: %w", err)
	}
	return UnmarshalHostState(b)
}

// The host's sealed store is where policies are kept.
var _ BlobStore = (*tpm.Store)(nil)
