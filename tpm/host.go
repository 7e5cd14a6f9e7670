package tpm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Files in the host state directory.
const (
	kekFile      = "kek.sealed"
	identityFile = "identity.json"
	// insecureFile exists when the state was made with the fixed-seed
	// simulator; its content says why that is insecure.
	insecureFile = "INSECURE-FIXED-SEED-SIMULATOR"
	// hostKeyBlob is the host's long-term ECDSA P-256 key (PKCS#8), kept as
	// an AEAD blob under the sealed KEK.
	hostKeyBlob  = HostKeyBlob
	maxStateFile = 64 << 10
	// approvalsDir holds offline approvals (public data: a forged or
	// altered one fails inside the TPM).
	approvalsDir = "approvals"
	// maxApprovals bounds how many approvals OpenHostStoreApproved reads.
	maxApprovals = 256
)

// HostKeyBlob names the host's long-term key (PKCS#8) in the sealed store.
const HostKeyBlob = "host-key"

// KEKPolicyRef qualifies the offline key's approvals of the host KEK's
// PCR values, so an approval the same key signed for another purpose
// cannot unseal the KEK.
var KEKPolicyRef = []byte("gvmm-kek")

// HostInfo is the public description of a host, written to identity.json
// and printed by "gvmm host init".
type HostInfo struct {
	HostID    string   `json:"host_id"`
	TPM       string   `json:"tpm"`
	Insecure  bool     `json:"insecure,omitempty"`
	SealMode  SealMode `json:"seal_mode"`
	EKPublic  []byte   `json:"ek_public"`
	AKPublic  []byte   `json:"ak_public"`
	HasEKCert bool     `json:"has_ek_cert"`
	// EKCert is the EK certificate (DER) from the TPM's NV, if any, so a
	// verifier can check its chain itself. Like everything here it is the
	// host's claim: the verifier trusts it only once it chains to a root
	// the verifier configured and certifies the EK it enrolls.
	EKCert []byte `json:"ek_cert,omitempty"`
	// HostKey is the host's long-term public key (PKIX DER).
	HostKey []byte `json:"host_key"`
	// Approver is the offline approval key (PKIX DER) in SealAuthorized
	// mode. It is not trusted: the sealed KEK's policy names the key, so
	// a substituted one cannot unseal.
	Approver []byte `json:"approver,omitempty"`
	// MeasuredPCR and LaunchPCR are the PCR gvmm measures into and its
	// value after this launch's measurements (before the closing event).
	MeasuredPCR int    `json:"measured_pcr"`
	LaunchPCR   []byte `json:"launch_pcr"`
}

// HostOptions configures InitHost.
type HostOptions struct {
	Launch LaunchInputs
	// Approver, when set, seals the KEK with PolicyAuthorize to this
	// offline key (with PolicyRef); otherwise with PolicyPCR.
	Approver  *ecdsa.PublicKey
	PolicyRef []byte
}

// InitHost measures gvmm, creates a KEK sealed to the measurements, a host
// key in the sealed store under dir, and identity.json; then it closes the
// launch. It refuses a directory that already holds a sealed KEK.
func InitHost(ctx context.Context, tp *TPM, dir string, opts HostOptions) (*HostInfo, error) {
	if _, err := os.Stat(filepath.Join(dir, kekFile)); err == nil {
		return nil, fmt.Errorf("init host: %s already holds a sealed KEK", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	log, err := tp.MeasureLaunch(ctx, opts.Launch, nil)
	if err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	id, err := tp.Identity(ctx)
	if err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	pol := SealPolicy{Mode: SealPCR, PCRs: []int{log.PCR}, Values: map[int][32]byte{log.PCR: log.Replay()}}
	if opts.Approver != nil {
		pol = SealPolicy{Mode: SealAuthorized, PCRs: []int{log.PCR}, Signer: opts.Approver, PolicyRef: opts.PolicyRef}
	}
	sealed, err := tp.Seal(ctx, kek, pol)
	if err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	if pol.Mode == SealPCR {
		// Prove the KEK unseals before anything depends on it.
		got, err := tp.Unseal(ctx, sealed, nil, nil)
		if err != nil || !bytes.Equal(got, kek) {
			return nil, fmt.Errorf("init host: sealed KEK does not unseal: %w", err)
		}
	}
	store, err := NewStore(dir, kek)
	if err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	hk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(hk)
	if err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	if err := store.Put(hostKeyBlob, der); err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&hk.PublicKey)
	launchPCR := log.Replay()
	info := &HostInfo{
		HostID: id.HostID, TPM: tp.cfg.String(), Insecure: tp.cfg.Insecure(), SealMode: pol.Mode,
		EKPublic: id.EKPublic, AKPublic: id.AKPublic, HasEKCert: len(id.EKCert) > 0,
		EKCert:  id.EKCert,
		HostKey: pub, MeasuredPCR: log.PCR, LaunchPCR: launchPCR[:],
	}
	if opts.Approver != nil {
		if info.Approver, err = x509.MarshalPKIXPublicKey(opts.Approver); err != nil {
			return nil, fmt.Errorf("init host: approver key: %w", err)
		}
	}
	if info.Insecure {
		msg := "This host state was created with the TPM simulator in fixed-seed mode.\n" +
			"Anyone who knows the seed can recreate the TPM and unseal everything here.\n" +
			"For tests only; never hold real keys in it.\n"
		if err := writeFileAtomic(filepath.Join(dir, insecureFile), []byte(msg), 0o600); err != nil {
			return nil, fmt.Errorf("init host: %w", err)
		}
	}
	if err := writeJSON(filepath.Join(dir, kekFile), sealed); err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	if err := writeJSON(filepath.Join(dir, identityFile), info); err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	if err := tp.CloseLaunch(ctx, log); err != nil {
		return nil, fmt.Errorf("init host: %w", err)
	}
	return info, nil
}

// OpenHostStore unseals the host's KEK (approval is needed in
// PolicyAuthorize mode) and opens its store. The caller must then extend
// the closing event (TPM.CloseLaunch).
func OpenHostStore(ctx context.Context, tp *TPM, dir string, approver *ecdsa.PublicKey, approval *Approval) (*Store, error) {
	var sealed Sealed
	if err := readJSON(filepath.Join(dir, kekFile), &sealed); err != nil {
		return nil, fmt.Errorf("open host store: %w", err)
	}
	kek, err := tp.Unseal(ctx, &sealed, approver, approval)
	if err != nil {
		return nil, fmt.Errorf("open host store: %w", err)
	}
	if len(kek) != 32 {
		return nil, errors.New("open host store: unsealed KEK has the wrong size")
	}
	return NewStore(dir, kek)
}

// LaunchPCRValue is the value of the measured PCR after a launch with
// these inputs, before the closing event: what the host KEK is unsealed
// against. It assumes the PCR started at zero (a software TPM's reset PCR,
// or a hardware PCR that nothing extended earlier in this boot).
func LaunchPCRValue(pcr int, exeDigest [32]byte, config, policy []byte) [32]byte {
	l := &Log{PCR: pcr, Events: LaunchEvents(exeDigest, config, policy)}
	return l.Replay()
}

// ApproveLaunch signs, with the offline key, approval of a launch with
// these inputs for the host described by info. It needs no TPM and runs
// where the key lives. It refuses a host that is not sealed with
// PolicyAuthorize, or whose recorded approver is another key.
func ApproveLaunch(key *ecdsa.PrivateKey, info *HostInfo, in LaunchInputs) (*Approval, [32]byte, error) {
	var zero [32]byte
	if info.SealMode != SealAuthorized {
		return nil, zero, fmt.Errorf("approve launch: host %s is sealed with %q, approvals need %q", info.HostID, info.SealMode, SealAuthorized)
	}
	if len(info.Approver) > 0 {
		pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return nil, zero, fmt.Errorf("approve launch: %w", err)
		}
		if !bytes.Equal(pub, info.Approver) {
			return nil, zero, fmt.Errorf("approve launch: host %s was sealed to another approval key", info.HostID)
		}
	}
	if _, err := pcrSelection([]int{info.MeasuredPCR}); err != nil {
		return nil, zero, fmt.Errorf("approve launch: %w", err)
	}
	exe, err := FileDigest(in.Executable)
	if err != nil {
		return nil, zero, fmt.Errorf("approve launch: %w", err)
	}
	v := LaunchPCRValue(info.MeasuredPCR, exe, in.Config, in.Policy)
	a, err := Approve(key, KEKPolicyRef, []int{info.MeasuredPCR}, map[int][32]byte{info.MeasuredPCR: v})
	if err != nil {
		return nil, zero, fmt.Errorf("approve launch: %w", err)
	}
	return a, v, nil
}

// SaveApproval writes an approval into the state directory's approvals/
// folder, named after the policy it approves, and returns its path.
func SaveApproval(dir string, a *Approval) (string, error) {
	if len(a.ApprovedPolicy) != 32 {
		return "", errors.New("save approval: malformed approval")
	}
	if err := os.MkdirAll(filepath.Join(dir, approvalsDir), 0o700); err != nil {
		return "", fmt.Errorf("save approval: %w", err)
	}
	p := filepath.Join(dir, approvalsDir, fmt.Sprintf("%x.json", a.ApprovedPolicy[:16]))
	if err := writeJSON(p, a); err != nil {
		return "", fmt.Errorf("save approval: %w", err)
	}
	return p, nil
}

// ReadApproval reads one approval file.
func ReadApproval(path string) (*Approval, error) {
	var a Approval
	if err := readJSON(path, &a); err != nil {
		return nil, fmt.Errorf("read approval: %w", err)
	}
	return &a, nil
}

// LoadApprovals reads every approval in the state directory (none is an
// empty list, not an error).
func LoadApprovals(dir string) ([]*Approval, error) {
	names, err := filepath.Glob(filepath.Join(dir, approvalsDir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("load approvals: %w", err)
	}
	if len(names) > maxApprovals {
		return nil, fmt.Errorf("load approvals: %d files in %s exceed %d", len(names), approvalsDir, maxApprovals)
	}
	var out []*Approval
	for _, n := range names {
		a, err := ReadApproval(n)
		if err != nil {
			return nil, fmt.Errorf("load approvals: %w", err)
		}
		out = append(out, a)
	}
	return out, nil
}

// ErrNoApproval is returned (wrapped, with ErrUnseal) when no approval
// matches the TPM's current PCR values.
var ErrNoApproval = errors.New("no approval for the current measurements")

// OpenHostStoreApproved opens the host store after a measured launch. A
// PolicyPCR host needs no approval. A PolicyAuthorize host's KEK is
// unsealed with the first of approvals whose approved policy matches the
// TPM's current PCR values (the TPM checks the signature; a forged or
// altered approval fails there). The approver key comes from the caller,
// or else from identity.json; a substituted key cannot unseal either.
func OpenHostStoreApproved(ctx context.Context, tp *TPM, dir string, approver *ecdsa.PublicKey, approvals []*Approval) (*Store, error) {
	var sealed Sealed
	if err := readJSON(filepath.Join(dir, kekFile), &sealed); err != nil {
		return nil, fmt.Errorf("open host store: %w", err)
	}
	if sealed.Mode != SealAuthorized {
		return OpenHostStore(ctx, tp, dir, nil, nil)
	}
	if approver == nil {
		info, err := ReadHostInfo(dir)
		if err != nil {
			return nil, fmt.Errorf("open host store: %w", err)
		}
		k, err := x509.ParsePKIXPublicKey(info.Approver)
		if err != nil {
			return nil, fmt.Errorf("open host store: approver key in %s: %w", identityFile, err)
		}
		ek, ok := k.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("open host store: approver key in %s is not ECDSA", identityFile)
		}
		approver = ek
	}
	cur, err := tp.ReadPCRs(ctx, sealed.PCRs)
	if err != nil {
		return nil, fmt.Errorf("open host store: %w", err)
	}
	want, err := PolicyPCRDigest(sealed.PCRs, cur)
	if err != nil {
		return nil, fmt.Errorf("open host store: %w", err)
	}
	var errs []error
	for _, a := range approvals {
		if !bytes.Equal(a.ApprovedPolicy, want) {
			continue
		}
		st, err := OpenHostStore(ctx, tp, dir, approver, a)
		if err == nil {
			return st, nil
		}
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, fmt.Errorf("open host store: %w: %w (PCR %v)", ErrUnseal, ErrNoApproval, sealed.PCRs)
}

// ReadHostInfo reads identity.json from a state directory.
func ReadHostInfo(dir string) (*HostInfo, error) {
	var info HostInfo
	if err := readJSON(filepath.Join(dir, identityFile), &info); err != nil {
		return nil, fmt.Errorf("read host info: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, insecureFile)); err == nil {
		info.Insecure = true
	}
	return &info, nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), 0o600)
}

func readJSON(path string, v any) error {
	b, err := readFileLimited(path, maxStateFile)
	if err != nil {
		return err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
