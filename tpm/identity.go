package tpm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// akUnique separates gvmm's AK from any other primary key created from the
// same template in the owner hierarchy.
var akUnique = sha256.Sum256([]byte("gvmm attestation key v1"))

// akTemplate is gvmm's attestation key: ECC P-256, ECDSA-SHA256,
// restricted (it signs only TPM-generated structures such as quotes),
// fixedTPM, fixedParent and generated inside the TPM.
func akTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Restricted:          true,
			SignEncrypt:         true,
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
			X: tpm2.TPM2BECCParameter{Buffer: akUnique[:]},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
}

// Identity is a host's public TPM identity.
type Identity struct {
	// HostID is derived from the EK (see HostIDFromEK).
	HostID string
	// EKPublic and AKPublic are marshaled TPMT_PUBLIC structures.
	EKPublic []byte
	AKPublic []byte
	// EKCert is the DER EK certificate from NV, if the TPM has one.
	EKCert []byte
}

// HostIDFromEK derives a host id from a marshaled EK public area. The
// verifier computes it itself; a host's claimed id is never trusted.
func HostIDFromEK(ekPublic []byte) string {
	d := sha256.Sum256(append([]byte("gvmm-host-id-v1\x00"), ekPublic...))
	return "h-" + hex.EncodeToString(d[:16])
}

// ekHandle creates the ECC P-256 EK (TCG template, deterministic from the
// endorsement seed).
func ekHandle(tr transportTPM) (tpm2.NamedHandle, tpm2.TPMTPublic, func(), error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tpm2.ECCEKTemplate),
	}.Execute(tr)
	if err != nil {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, nil, fmt.Errorf("create EK: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		flush(tr, rsp.ObjectHandle)
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, nil, fmt.Errorf("create EK: %w", err)
	}
	h := tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	return h, *pub, func() { flush(tr, h.Handle) }, nil
}

// akHandle creates gvmm's AK as a primary key in the owner hierarchy.
func akHandle(tr transportTPM) (tpm2.NamedHandle, tpm2.TPMTPublic, func(), error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(akTemplate()),
	}.Execute(tr)
	if err != nil {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, nil, fmt.Errorf("create AK: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		flush(tr, rsp.ObjectHandle)
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, nil, fmt.Errorf("create AK: %w", err)
	}
	h := tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	return h, *pub, func() { flush(tr, h.Handle) }, nil
}

// ekSession authorises use of the EK (its policy is PolicySecret on the
// endorsement hierarchy, with empty endorsement auth).
func ekSession() tpm2.Session {
	return tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tr transportTPM, h tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
		_, err := tpm2.PolicySecret{
			AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
			PolicySession: h,
			NonceTPM:      nonce,
		}.Execute(tr)
		return err
	})
}

// ECC EK certificate NV index (TCG EK Credential Profile).
const ekCertNVIndexECC = 0x01c0000a

// Identity returns this TPM's EK, AK and (if present) EK certificate.
func (t *TPM) Identity(ctx context.Context) (*Identity, error) {
	id := &Identity{}
	err := t.do(ctx, func(tr transportTPM) error {
		_, ekPub, doneEK, err := ekHandle(tr)
		if err != nil {
			return err
		}
		doneEK()
		_, akPub, doneAK, err := akHandle(tr)
		if err != nil {
			return err
		}
		doneAK()
		id.EKPublic = tpm2.Marshal(ekPub)
		id.AKPublic = tpm2.Marshal(akPub)
		id.EKCert, err = readNV(tr, ekCertNVIndexECC, 4096)
		if errors.Is(err, errNoNV) {
			err = nil
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read TPM identity: %w", err)
	}
	id.HostID = HostIDFromEK(id.EKPublic)
	return id, nil
}

var errNoNV = errors.New("NV index not defined")

// readNV reads a whole NV index with owner auth, in chunks.
func readNV(tr transportTPM, index uint32, limit int) ([]byte, error) {
	h := tpm2.TPMHandle(index)
	pub, err := tpm2.NVReadPublic{NVIndex: h}.Execute(tr)
	if err != nil {
		return nil, errNoNV
	}
	c, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("NV %#x public: %w", index, err)
	}
	size := int(c.DataSize)
	if size > limit {
		return nil, fmt.Errorf("NV %#x: %d bytes exceed %d", index, size, limit)
	}
	out := make([]byte, 0, size)
	for len(out) < size {
		n := min(size-len(out), 512)
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: h, Name: pub.NVName},
			Size:       uint16(n),
			Offset:     uint16(len(out)),
		}.Execute(tr)
		if err != nil {
			return nil, fmt.Errorf("read NV %#x: %w", index, err)
		}
		if len(rsp.Data.Buffer) != n {
			return nil, fmt.Errorf("read NV %#x: short read", index)
		}
		out = append(out, rsp.Data.Buffer...)
	}
	return out, nil
}
