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
	hostKeyBlob  = "host-key"
	maxStateFile = 64 << 10
)

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
	// HostKey is the host's long-term public key (PKIX DER).
	HostKey []byte `json:"host_key"`
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
		HostKey: pub, MeasuredPCR: log.PCR, LaunchPCR: launchPCR[:],
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
