package tpm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// MaxSealSize is the most a sealed data object holds (MAX_SYM_DATA on every
// TPM 2.0 we know). gvmm seals only a 32-byte KEK and keeps everything
// else in AEAD blobs under it.
const MaxSealSize = 128

// ErrSealTooLarge is returned when asked to seal more than MaxSealSize.
var ErrSealTooLarge = errors.New("data too large to seal in a TPM")

// SealMode says what authorises unsealing.
type SealMode string

const (
	// SealPCR seals to exact PCR values (TPM2_PolicyPCR). Any change of
	// gvmm, its configuration or its policy bundle makes it unsealable.
	SealPCR SealMode = "pcr"
	// SealAuthorized seals to an offline signing key (TPM2_PolicyAuthorize):
	// unsealing needs the current PCR values to match a PolicyPCR digest
	// that key signed. An upgrade comes with a new signed approval instead
	// of a re-seal.
	SealAuthorized SealMode = "authorized"
)

// SealPolicy says how to seal.
type SealPolicy struct {
	Mode SealMode
	// PCRs are the SHA-256 PCRs the policy covers.
	PCRs []int
	// Values are the PCR values to seal to (SealPCR only). Nil means the
	// TPM's current values.
	Values map[int][32]byte
	// Signer is the offline approval key's public key (SealAuthorized only).
	Signer *ecdsa.PublicKey
	// PolicyRef qualifies the signer's approvals (SealAuthorized only), so
	// approvals for other purposes cannot be used here.
	PolicyRef []byte
}

// Sealed is a sealed object: TPM-encrypted, bound to this TPM's storage
// root key and to its policy. Safe to store anywhere.
type Sealed struct {
	Mode      SealMode `json:"mode"`
	PCRs      []int    `json:"pcrs"`
	PolicyRef []byte   `json:"policy_ref,omitempty"`
	// Public and Private are the TPM2B_PUBLIC/TPM2B_PRIVATE contents.
	Public  []byte `json:"public"`
	Private []byte `json:"private"`
}

// Approval is an offline signing key's approval of a PolicyPCR digest.
type Approval struct {
	// ApprovedPolicy is the PolicyPCR policy digest for the approved PCR
	// values.
	ApprovedPolicy []byte `json:"approved_policy"`
	// R and S are the ECDSA P-256 signature over
	// SHA-256(ApprovedPolicy || PolicyRef).
	R []byte `json:"r"`
	S []byte `json:"s"`
}

// PolicyPCRDigest computes the policy digest of TPM2_PolicyPCR over these
// PCR values, as a trial session would.
func PolicyPCRDigest(pcrs []int, values map[int][32]byte) ([]byte, error) {
	sel, err := pcrSelection(pcrs)
	if err != nil {
		return nil, err
	}
	comp, err := pcrCompositeDigest(pcrs, values)
	if err != nil {
		return nil, err
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: comp[:]}, Pcrs: sel}).Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

// Approve signs approval of the given PCR values with an offline key. It
// runs where the signing key lives, never on the host.
func Approve(signer *ecdsa.PrivateKey, policyRef []byte, pcrs []int, values map[int][32]byte) (*Approval, error) {
	pol, err := PolicyPCRDigest(pcrs, values)
	if err != nil {
		return nil, fmt.Errorf("approve policy: %w", err)
	}
	aHash := sha256.Sum256(append(append([]byte{}, pol...), policyRef...))
	r, s, err := ecdsa.Sign(rand.Reader, signer, aHash[:])
	if err != nil {
		return nil, fmt.Errorf("approve policy: %w", err)
	}
	return &Approval{ApprovedPolicy: pol, R: r.Bytes(), S: s.Bytes()}, nil
}

// signerPublic is the TPM public area of an offline ECDSA P-256 key.
func signerPublic(k *ecdsa.PublicKey) (tpm2.TPMTPublic, error) {
	if k == nil || k.Curve != elliptic.P256() {
		return tpm2.TPMTPublic{}, errors.New("approval key must be ECDSA P-256")
	}
	b, err := k.Bytes() // uncompressed point, validated
	if err != nil {
		return tpm2.TPMTPublic{}, fmt.Errorf("approval key: %w", err)
	}
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			SignEncrypt: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			CurveID: tpm2.TPMECCNistP256,
			Scheme: tpm2.TPMTECCScheme{
				Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA,
					&tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: b[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: b[33:65]},
		}),
	}, nil
}

// authorizePolicyDigest is the sealed object's policy in SealAuthorized mode.
func authorizePolicyDigest(signer *ecdsa.PublicKey, policyRef []byte) ([]byte, error) {
	pub, err := signerPublic(signer)
	if err != nil {
		return nil, err
	}
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return nil, err
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicyAuthorize{PolicyRef: tpm2.TPM2BDigest{Buffer: policyRef}, KeySign: *name}).Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

// srk creates the ECC P-256 storage root key (deterministic from the owner
// seed) and returns it with a function that flushes it.
func srk(tr transportTPM) (tpm2.NamedHandle, func(), error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(tr)
	if err != nil {
		return tpm2.NamedHandle{}, nil, fmt.Errorf("create SRK: %w", err)
	}
	h := tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	return h, func() { flush(tr, h.Handle) }, nil
}

// flush flushes a transient handle. A failure leaks a TPM slot until the
// connection (resource manager) or process (simulator) ends; it cannot
// weaken security, so it is not reported.
func flush(tr transportTPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(tr)
}

// Seal seals data (at most MaxSealSize bytes) under this TPM's SRK.
func (t *TPM) Seal(ctx context.Context, data []byte, p SealPolicy) (*Sealed, error) {
	if len(data) > MaxSealSize {
		return nil, fmt.Errorf("seal: %w: %d bytes, the TPM holds at most %d (seal a key and encrypt the data with it)", ErrSealTooLarge, len(data), MaxSealSize)
	}
	if len(data) == 0 {
		return nil, errors.New("seal: no data")
	}
	pcrs := sortedPCRs(p.PCRs)
	var (
		policy []byte
		err    error
	)
	switch p.Mode {
	case SealPCR:
		values := p.Values
		if values == nil {
			if values, err = t.ReadPCRs(ctx, pcrs); err != nil {
				return nil, fmt.Errorf("seal: %w", err)
			}
		}
		policy, err = PolicyPCRDigest(pcrs, values)
	case SealAuthorized:
		if _, err = pcrSelection(pcrs); err == nil {
			policy, err = authorizePolicyDigest(p.Signer, p.PolicyRef)
		}
	default:
		err = fmt.Errorf("unknown seal mode %q", p.Mode)
	}
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	tmpl := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:        true,
			FixedParent:     true,
			AdminWithPolicy: true,
			// UserWithAuth false: only the policy authorises unsealing.
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}
	out := &Sealed{Mode: p.Mode, PCRs: pcrs, PolicyRef: p.PolicyRef}
	err = t.do(ctx, func(tr transportTPM) error {
		parent, done, err := srk(tr)
		if err != nil {
			return err
		}
		defer done()
		rsp, err := tpm2.Create{
			ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
			InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
				Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: data}),
			}},
			InPublic: tpm2.New2B(tmpl),
		}.Execute(tr)
		if err != nil {
			return err
		}
		out.Public = tpm2.Marshal(rsp.OutPublic)
		out.Private = tpm2.Marshal(rsp.OutPrivate)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return out, nil
}

// ErrUnseal is returned (wrapped) whenever the TPM refuses to unseal.
var ErrUnseal = errors.New("unseal refused")

// Unseal unseals s. In SealAuthorized mode approval must be the signer's
// approval of the current PCR values; in SealPCR mode it must be nil.
func (t *TPM) Unseal(ctx context.Context, s *Sealed, signer *ecdsa.PublicKey, approval *Approval) ([]byte, error) {
	sel, err := pcrSelection(s.PCRs)
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](s.Public)
	if err != nil {
		return nil, fmt.Errorf("unseal: decode public: %w", err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](s.Private)
	if err != nil {
		return nil, fmt.Errorf("unseal: decode private: %w", err)
	}
	var (
		signerPub tpm2.TPMTPublic
		aHash     [32]byte
		sig       tpm2.TPMTSignature
	)
	switch s.Mode {
	case SealPCR:
		if approval != nil {
			return nil, errors.New("unseal: PCR-sealed object takes no approval")
		}
	case SealAuthorized:
		if approval == nil {
			return nil, fmt.Errorf("unseal: %w: no approval for a PolicyAuthorize-sealed object", ErrUnseal)
		}
		if signerPub, err = signerPublic(signer); err != nil {
			return nil, fmt.Errorf("unseal: %w", err)
		}
		if len(approval.ApprovedPolicy) != sha256.Size || len(approval.R) > 32 || len(approval.S) > 32 {
			return nil, fmt.Errorf("unseal: %w: malformed approval", ErrUnseal)
		}
		aHash = sha256.Sum256(append(append([]byte{}, approval.ApprovedPolicy...), s.PolicyRef...))
		sig = tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgECDSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
				Hash:       tpm2.TPMAlgSHA256,
				SignatureR: tpm2.TPM2BECCParameter{Buffer: leftPad(approval.R, 32)},
				SignatureS: tpm2.TPM2BECCParameter{Buffer: leftPad(approval.S, 32)},
			}),
		}
	default:
		return nil, fmt.Errorf("unseal: unknown seal mode %q", s.Mode)
	}
	var out []byte
	err = t.do(ctx, func(tr transportTPM) error {
		parent, done, err := srk(tr)
		if err != nil {
			return err
		}
		defer done()
		lrsp, err := tpm2.Load{
			ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
			InPrivate:    *priv,
			InPublic:     *pub,
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("%w: load sealed object (sealed by another TPM, or tampered): %w", ErrUnseal, err)
		}
		defer flush(tr, lrsp.ObjectHandle)

		sess, closeSess, err := tpm2.PolicySession(tr, tpm2.TPMAlgSHA256, 16)
		if err != nil {
			return fmt.Errorf("start policy session: %w", err)
		}
		defer closeSess()
		if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: sel}).Execute(tr); err != nil {
			return fmt.Errorf("%w: PolicyPCR: %w", ErrUnseal, err)
		}
		if s.Mode == SealAuthorized {
			ext, err := tpm2.LoadExternal{
				InPublic:  tpm2.New2B(signerPub),
				Hierarchy: tpm2.TPMRHOwner,
			}.Execute(tr)
			if err != nil {
				return fmt.Errorf("load approval key: %w", err)
			}
			vrsp, err := tpm2.VerifySignature{
				KeyHandle: tpm2.NamedHandle{Handle: ext.ObjectHandle, Name: ext.Name},
				Digest:    tpm2.TPM2BDigest{Buffer: aHash[:]},
				Signature: sig,
			}.Execute(tr)
			flush(tr, ext.ObjectHandle)
			if err != nil {
				return fmt.Errorf("%w: approval signature: %w", ErrUnseal, err)
			}
			if _, err := (tpm2.PolicyAuthorize{
				PolicySession:  sess.Handle(),
				ApprovedPolicy: tpm2.TPM2BDigest{Buffer: approval.ApprovedPolicy},
				PolicyRef:      tpm2.TPM2BDigest{Buffer: s.PolicyRef},
				KeySign:        ext.Name,
				CheckTicket:    vrsp.Validation,
			}).Execute(tr); err != nil {
				return fmt.Errorf("%w: PolicyAuthorize (PCRs differ from the approved values?): %w", ErrUnseal, err)
			}
		}
		ursp, err := tpm2.Unseal{
			ItemHandle: tpm2.AuthHandle{Handle: lrsp.ObjectHandle, Name: lrsp.Name, Auth: sess},
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUnseal, err)
		}
		out = ursp.OutData.Buffer
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	return out, nil
}

// leftPad returns b left-padded with zeros to n bytes (b must be <= n).
func leftPad(b []byte, n int) []byte {
	if len(b) >= n {
		return b
	}
	out := make([]byte, n)
	copy(out[n-len(b):], b)
	return out
}

// ecdsaSignature converts a TPM ECDSA signature into r, s.
func ecdsaSignature(sig *tpm2.TPMTSignature) (r, s *big.Int, err error) {
	if sig.SigAlg != tpm2.TPMAlgECDSA {
		return nil, nil, fmt.Errorf("signature algorithm %v, want ECDSA", sig.SigAlg)
	}
	e, err := sig.Signature.ECDSA()
	if err != nil {
		return nil, nil, err
	}
	if e.Hash != tpm2.TPMAlgSHA256 {
		return nil, nil, fmt.Errorf("signature hash %v, want SHA-256", e.Hash)
	}
	return new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer), nil
}

// bigInt converts unsigned big-endian bytes.
func bigInt(b []byte) *big.Int { return new(big.Int).SetBytes(b) }
