package tpm

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// ImportBlob is a secret wrapped to one TPM's EK under a PCR policy: only
// that TPM can import it (TPM2_Import checks the outer HMAC keyed from the
// EK-encrypted seed), and only with the golden PCR values can it unseal it.
type ImportBlob struct {
	PCRs      []int  `json:"pcrs"`
	Public    []byte `json:"public"`
	Duplicate []byte `json:"duplicate"`
	InSymSeed []byte `json:"in_sym_seed"`
}

// WrapToEK wraps secret (at most MaxSealSize bytes) for the TPM whose EK
// public area is ekPublic, to be unsealed only with PCR values golden. It
// runs on the releasing side and needs no TPM. ekPublic must come from
// enrollment, never from the evidence.
func WrapToEK(ekPublic, secret []byte, pcrs []int, golden map[int][32]byte) (*ImportBlob, error) {
	if len(secret) == 0 || len(secret) > MaxSealSize {
		return nil, fmt.Errorf("wrap to EK: %w: %d bytes", ErrSealTooLarge, len(secret))
	}
	ek, err := checkEK(ekPublic)
	if err != nil {
		return nil, fmt.Errorf("wrap to EK: %w", err)
	}
	pcrs = sortedPCRs(pcrs)
	policy, err := PolicyPCRDigest(pcrs, golden)
	if err != nil {
		return nil, fmt.Errorf("wrap to EK: %w", err)
	}
	seed := make([]byte, sha256.Size)
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("wrap to EK: %w", err)
	}
	unique := sha256.Sum256(append(append([]byte{}, seed...), secret...))
	pub := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			// Imported objects cannot be fixedTPM/fixedParent. No
			// userWithAuth: only the PCR policy authorises unsealing.
			AdminWithPolicy: true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique[:]}),
	}
	sens := tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: secret}),
	}
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return nil, fmt.Errorf("wrap to EK: %w", err)
	}
	encap, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return nil, fmt.Errorf("wrap to EK: %w", err)
	}
	dup, inSeed, err := tpm2.CreateDuplicate(rand.Reader, encap, name.Buffer, tpm2.Marshal(sens))
	if err != nil {
		return nil, fmt.Errorf("wrap to EK: create duplicate: %w", err)
	}
	return &ImportBlob{PCRs: pcrs, Public: tpm2.Marshal(pub), Duplicate: dup, InSymSeed: inSeed}, nil
}

// ErrImport is returned (wrapped) when this TPM cannot import or unseal an
// ImportBlob: it was wrapped to another TPM, tampered with, or the PCRs
// differ from the golden values.
var ErrImport = errors.New("import refused")

// UnwrapImport imports blob under this TPM's EK and unseals its secret
// under the blob's PCR policy.
func (t *TPM) UnwrapImport(ctx context.Context, blob *ImportBlob) ([]byte, error) {
	if len(blob.Public) > maxPublic || len(blob.Duplicate) > 1024 || len(blob.InSymSeed) > 1024 {
		return nil, fmt.Errorf("unwrap import: %w: blob too large", ErrImport)
	}
	sel, err := pcrSelection(blob.PCRs)
	if err != nil {
		return nil, fmt.Errorf("unwrap import: %w", err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](blob.Public)
	if err != nil {
		return nil, fmt.Errorf("unwrap import: %w: public: %w", ErrImport, err)
	}
	if pub.Type != tpm2.TPMAlgKeyedHash || pub.ObjectAttributes.UserWithAuth || len(pub.AuthPolicy.Buffer) != sha256.Size {
		return nil, fmt.Errorf("unwrap import: %w: not a policy-sealed data object", ErrImport)
	}
	var out []byte
	err = t.do(ctx, func(tr transportTPM) error {
		ek, _, done, err := ekHandle(tr)
		if err != nil {
			return err
		}
		defer done()
		irsp, err := tpm2.Import{
			ParentHandle: tpm2.AuthHandle{Handle: ek.Handle, Name: ek.Name, Auth: ekSession()},
			ObjectPublic: tpm2.New2B(*pub),
			Duplicate:    tpm2.TPM2BPrivate{Buffer: blob.Duplicate},
			InSymSeed:    tpm2.TPM2BEncryptedSecret{Buffer: blob.InSymSeed},
			Symmetric:    tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("%w: import: %w", ErrImport, err)
		}
		lrsp, err := tpm2.Load{
			ParentHandle: tpm2.AuthHandle{Handle: ek.Handle, Name: ek.Name, Auth: ekSession()},
			InPrivate:    irsp.OutPrivate,
			InPublic:     tpm2.New2B(*pub),
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("%w: load: %w", ErrImport, err)
		}
		defer flush(tr, lrsp.ObjectHandle)
		sess, closeSess, err := tpm2.PolicySession(tr, tpm2.TPMAlgSHA256, 16)
		if err != nil {
			return fmt.Errorf("start policy session: %w", err)
		}
		defer closeSess()
		if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: sel}).Execute(tr); err != nil {
			return fmt.Errorf("%w: PolicyPCR: %w", ErrImport, err)
		}
		ursp, err := tpm2.Unseal{
			ItemHandle: tpm2.AuthHandle{Handle: lrsp.ObjectHandle, Name: lrsp.Name, Auth: sess},
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("%w: unseal (PCRs differ from golden values?): %w", ErrImport, err)
		}
		out = ursp.OutData.Buffer
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("unwrap import: %w", err)
	}
	return out, nil
}

// EphemeralBox is a secret sealed by ECDH to an attested host's quoted
// ephemeral P-256 key.
type EphemeralBox struct {
	SenderPub  []byte `json:"sender_pub"`
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ciphertext"`
}

// NewEphemeralKey returns a fresh P-256 key whose public half goes into a
// quote's extra data; it lives only in memory.
func NewEphemeralKey() (*ecdh.PrivateKey, error) {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new ephemeral key: %w", err)
	}
	return k, nil
}

// boxKey derives the AES-256 key from the ECDH secret, binding both public
// keys and the migration/host context.
func boxKey(shared, senderPub, recipientPub []byte, migrationID, hostID string) ([]byte, error) {
	var info []byte
	for _, f := range [][]byte{[]byte("gvmm-release-v1"), []byte(migrationID), []byte(hostID)} {
		info = binary.BigEndian.AppendUint32(info, uint32(len(f)))
		info = append(info, f...)
	}
	salt := append(append([]byte{}, senderPub...), recipientPub...)
	return hkdf.Key(sha256.New, shared, salt, string(info), 32)
}

func boxAD(migrationID, hostID string) []byte {
	return []byte("gvmm-release-v1\x00" + migrationID + "\x00" + hostID)
}

// SealToEphemeral encrypts secret to the verified result's ephemeral key.
// Call it only with a Result from Verify: the key is then bound to an
// attested TPM's quote for this migration.
func SealToEphemeral(res *Result, secret []byte) (*EphemeralBox, error) {
	rpub, err := ecdh.P256().NewPublicKey(res.EphemeralPub)
	if err != nil {
		return nil, fmt.Errorf("seal to ephemeral key: %w", err)
	}
	sk, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("seal to ephemeral key: %w", err)
	}
	shared, err := sk.ECDH(rpub)
	if err != nil {
		return nil, fmt.Errorf("seal to ephemeral key: %w", err)
	}
	key, err := boxKey(shared, sk.PublicKey().Bytes(), rpub.Bytes(), res.MigrationID, res.HostID)
	if err != nil {
		return nil, fmt.Errorf("seal to ephemeral key: %w", err)
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, fmt.Errorf("seal to ephemeral key: %w", err)
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal to ephemeral key: %w", err)
	}
	return &EphemeralBox{
		SenderPub:  sk.PublicKey().Bytes(),
		Nonce:      nonce,
		Ciphertext: aead.Seal(nil, nonce, secret, boxAD(res.MigrationID, res.HostID)),
	}, nil
}

// OpenEphemeral decrypts a box with the host's ephemeral key.
func OpenEphemeral(k *ecdh.PrivateKey, box *EphemeralBox, migrationID, hostID string) ([]byte, error) {
	spub, err := ecdh.P256().NewPublicKey(box.SenderPub)
	if err != nil {
		return nil, fmt.Errorf("open ephemeral box: %w", err)
	}
	shared, err := k.ECDH(spub)
	if err != nil {
		return nil, fmt.Errorf("open ephemeral box: %w", err)
	}
	key, err := boxKey(shared, box.SenderPub, k.PublicKey().Bytes(), migrationID, hostID)
	if err != nil {
		return nil, fmt.Errorf("open ephemeral box: %w", err)
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, fmt.Errorf("open ephemeral box: %w", err)
	}
	if len(box.Nonce) != aead.NonceSize() || len(box.Ciphertext) > MaxBlobSize+aead.Overhead() {
		return nil, errors.New("open ephemeral box: malformed")
	}
	pt, err := aead.Open(nil, box.Nonce, box.Ciphertext, boxAD(migrationID, hostID))
	if err != nil {
		return nil, fmt.Errorf("open ephemeral box: %w", err)
	}
	return pt, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
