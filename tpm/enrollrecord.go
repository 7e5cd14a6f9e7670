package tpm

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// The verifier's files. A verifier that runs as separate processes (the
// CLI: "gvmm enroll challenge", later "gvmm enroll finish", later "gvmm
// verify") keeps what it decided in files. They are MACed with a key only
// the verifier holds (VerifierKeyFile in its directory), so that:
//
//   - an enrolled-host record can be stored anywhere (beside the host's
//     identity, in a database, sent along with a migration request) and
//     still cannot be edited into a higher trust level or another AK: the
//     MAC covers every field, and no one without the key can make one;
//   - pending challenge state, which holds the secret the host must
//     return, is checked the same way before it is believed.
//
// A MAC rather than a signature: only the verifier writes and reads these
// records, so a symmetric key is enough, and a public verification key
// would only invite others to trust records they cannot judge. A verifier
// that keeps its records where nobody else can write does not need the MAC,
// but gets it for free.
const (
	// VerifierKeyFile holds the verifier's 32-byte MAC key.
	VerifierKeyFile = "verifier.key"
	// pendingDir holds outstanding enrollment challenges, one per host.
	pendingDir = "pending"

	recordVersion   = 1
	maxRecordFile   = 16 << 10
	enrolledDomain  = "gvmm-enrolled-host-v1\x00"
	pendingDomain   = "gvmm-pending-enrollment-v1\x00"
	verifierKeySize = 32
)

// ErrRecord is returned (wrapped) for a verifier record that is malformed,
// was altered, or claims what the verifier never computes.
var ErrRecord = errors.New("verifier record rejected")

// LoadVerifierKey reads the verifier's MAC key from dir, creating dir and
// a new random key if create is set and none exists.
func LoadVerifierKey(dir string, create bool) ([]byte, error) {
	p := filepath.Join(dir, VerifierKeyFile)
	k, err := readFileLimited(p, verifierKeySize+1)
	if errors.Is(err, fs.ErrNotExist) && create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create verifier key: %w", err)
		}
		k = make([]byte, verifierKeySize)
		if _, err := rand.Read(k); err != nil {
			return nil, fmt.Errorf("create verifier key: %w", err)
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create verifier key: %w", err)
		}
		if _, err := f.Write(k); err != nil {
			f.Close()
			return nil, fmt.Errorf("create verifier key: %w", err)
		}
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("create verifier key: %w", err)
		}
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load verifier key: %w", err)
	}
	if len(k) != verifierKeySize {
		return nil, fmt.Errorf("load verifier key %s: %d bytes, want %d", p, len(k), verifierKeySize)
	}
	return k, nil
}

// macFields is HMAC-SHA256 over a domain and length-prefixed fields: an
// unambiguous encoding, independent of how JSON spells the record.
func macFields(key []byte, domain string, fields ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(domain))
	for _, f := range fields {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		m.Write(n[:])
		m.Write(f)
	}
	return m.Sum(nil)
}

func u64(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

// pendingFile is a PendingEnrollment on disk.
type pendingFile struct {
	Version int `json:"version"`
	PendingEnrollment
	MAC []byte `json:"mac"`
}

func (p *PendingEnrollment) mac(key []byte) []byte {
	return macFields(key, pendingDomain, []byte(p.HostID), p.EKPublic, p.AKPublic, p.EKCert, p.Secret, u64(p.Expires.UnixNano()))
}

// SavePending writes a challenge's private state into the verifier's
// directory as pending/<host id>.json, MACed. An outstanding challenge for
// the same host is replaced (the older one can no longer be finished).
func SavePending(dir string, key []byte, p *PendingEnrollment) error {
	if p.HostID != HostIDFromEK(p.EKPublic) {
		return errors.New("save pending enrollment: host id does not match the EK")
	}
	if err := os.MkdirAll(filepath.Join(dir, pendingDir), 0o700); err != nil {
		return fmt.Errorf("save pending enrollment: %w", err)
	}
	f := pendingFile{Version: recordVersion, PendingEnrollment: *p, MAC: p.mac(key)}
	if err := writeJSON(pendingPath(dir, p.HostID), f); err != nil {
		return fmt.Errorf("save pending enrollment: %w", err)
	}
	return nil
}

// pendingPath names a host's pending challenge. Host ids come from
// HostIDFromEK ("h-" and hex); anything else is refused by TakePending.
func pendingPath(dir, hostID string) string {
	return filepath.Join(dir, pendingDir, hostID+".json")
}

func validHostID(id string) bool {
	if len(id) != 34 || id[:2] != "h-" {
		return false
	}
	for _, c := range id[2:] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// TakePending reads and removes a host's pending challenge, so that it is
// answered at most once: of two concurrent takers only the one whose
// removal succeeds gets it. The MAC is checked after removal, so a forged
// or altered file is consumed and refused.
func TakePending(dir string, key []byte, hostID string) (*PendingEnrollment, error) {
	if !validHostID(hostID) {
		return nil, fmt.Errorf("take pending enrollment: %w: malformed host id", ErrEnroll)
	}
	p := pendingPath(dir, hostID)
	b, err := readFileLimited(p, maxRecordFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("take pending enrollment %s: %w: no outstanding challenge (never issued, or already answered)", hostID, ErrEnroll)
	}
	if err != nil {
		return nil, fmt.Errorf("take pending enrollment %s: %w", hostID, err)
	}
	if err := os.Remove(p); err != nil {
		return nil, fmt.Errorf("take pending enrollment %s: %w: %w", hostID, ErrEnroll, err)
	}
	var f pendingFile
	if err := decodeStrict(b, &f); err != nil {
		return nil, fmt.Errorf("take pending enrollment %s: %w: %w", hostID, ErrRecord, err)
	}
	if f.Version != recordVersion || f.HostID != hostID || !hmac.Equal(f.MAC, f.mac(key)) {
		return nil, fmt.Errorf("take pending enrollment %s: %w: bad version, host or MAC", hostID, ErrRecord)
	}
	return &f.PendingEnrollment, nil
}

// EnrolledRecord is the verifier's record of an enrolled host, as written
// by "gvmm enroll finish" and read by "gvmm verify". Trust is what the
// verifier computed at enrollment; the MAC makes every field tamper-evident.
type EnrolledRecord struct {
	Version        int       `json:"version"`
	HostID         string    `json:"host_id"`
	EKPublic       []byte    `json:"ek_public"`
	AKPublic       []byte    `json:"ak_public"`
	EKCert         []byte    `json:"ek_cert,omitempty"`
	Trust          string    `json:"trust"`
	EKCertVerified bool      `json:"ek_cert_verified"`
	EnrolledAt     time.Time `json:"enrolled_at"`
	MAC            []byte    `json:"mac"`
}

func (r *EnrolledRecord) mac(key []byte) []byte {
	var verified byte
	if r.EKCertVerified {
		verified = 1
	}
	return macFields(key, enrolledDomain, []byte(r.HostID), r.EKPublic, r.AKPublic, r.EKCert,
		[]byte(r.Trust), []byte{verified}, u64(r.EnrolledAt.UnixNano()))
}

// NewEnrolledRecord makes the MACed record of a host this verifier
// enrolled.
func NewEnrolledRecord(key []byte, h *EnrolledHost, at time.Time) ([]byte, error) {
	if h.Trust < TrustSoftware || h.Trust > TrustHardwareEKCert {
		return nil, fmt.Errorf("enrolled record: trust %s is not an enrollment level", h.Trust)
	}
	r := &EnrolledRecord{
		Version: recordVersion, HostID: h.HostID, EKPublic: h.EKPublic, AKPublic: h.AKPublic,
		EKCert: h.EKCert, Trust: h.Trust.String(), EKCertVerified: h.EKCertVerified,
		EnrolledAt: at.UTC().Round(0),
	}
	r.MAC = r.mac(key)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("enrolled record: %w", err)
	}
	return append(b, '\n'), nil
}

// parseTrust is TrustLevel.String's inverse, for enrollment levels only.
func parseTrust(s string) (TrustLevel, bool) {
	for _, l := range []TrustLevel{TrustSoftware, TrustHardwareEKCert} {
		if l.String() == s {
			return l, true
		}
	}
	return TrustNone, false
}

// AddEnrolledRecord loads a record made by NewEnrolledRecord with the same
// key. It refuses a record whose MAC does not verify, one that claims a
// level enrollment never grants (hardware-tpm-boot-log is per quote, not
// per host), or whose EK, AK or host id do not hold. The host's level is
// exactly the recorded one: loading never raises it.
func (v *Verifier) AddEnrolledRecord(key, b []byte) (*EnrolledHost, error) {
	if len(b) > maxRecordFile {
		return nil, fmt.Errorf("load enrolled record: %w: larger than %d bytes", ErrRecord, maxRecordFile)
	}
	var r EnrolledRecord
	if err := decodeStrict(b, &r); err != nil {
		return nil, fmt.Errorf("load enrolled record: %w: %w", ErrRecord, err)
	}
	if r.Version != recordVersion {
		return nil, fmt.Errorf("load enrolled record: %w: version %d", ErrRecord, r.Version)
	}
	if !hmac.Equal(r.MAC, r.mac(key)) {
		return nil, fmt.Errorf("load enrolled record %s: %w: MAC does not verify (edited, or made by another verifier)", r.HostID, ErrRecord)
	}
	trust, ok := parseTrust(r.Trust)
	if !ok {
		return nil, fmt.Errorf("load enrolled record %s: %w: trust %q is not an enrollment level", r.HostID, ErrRecord, r.Trust)
	}
	if trust == TrustHardwareEKCert && (!r.EKCertVerified || len(r.EKCert) == 0) {
		return nil, fmt.Errorf("load enrolled record %s: %w: %s without a verified EK certificate", r.HostID, ErrRecord, trust)
	}
	if _, err := checkEK(r.EKPublic); err != nil {
		return nil, fmt.Errorf("load enrolled record %s: %w: %w", r.HostID, ErrRecord, err)
	}
	_, ak, err := checkAK(r.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("load enrolled record %s: %w: %w", r.HostID, ErrRecord, err)
	}
	if HostIDFromEK(r.EKPublic) != r.HostID {
		return nil, fmt.Errorf("load enrolled record %s: %w: host id does not match the EK", r.HostID, ErrRecord)
	}
	h := &EnrolledHost{
		HostID: r.HostID, EKPublic: r.EKPublic, AKPublic: r.AKPublic, EKCert: r.EKCert,
		ak: ak, Trust: trust, EKCertVerified: r.EKCertVerified,
	}
	v.mu.Lock()
	v.hosts[h.HostID] = h
	v.mu.Unlock()
	out := *h
	return &out, nil
}

// decodeStrict decodes one JSON value, refusing unknown fields and
// trailing data.
func decodeStrict(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data")
	}
	return nil
}
