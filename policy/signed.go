package policy

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxDocumentSize bounds every encoded document (a signed envelope, a VM
// policy with both layers, a request). Larger input is refused before it
// is parsed.
const MaxDocumentSize = 64 << 10

// DocType says what a signed body is. It is part of what is signed, so a
// body signed as one type is never accepted as another.
type DocType string

const (
	TypeOwnerLayer      DocType = "gvmm.vm-policy.owner/v1"
	TypeEnterpriseLayer DocType = "gvmm.vm-policy.enterprise/v1"
	TypeHostPolicy      DocType = "gvmm.host-policy/v1"
	TypeRequest         DocType = "gvmm.request/v1"
)

// signDomain separates gvmm policy signatures from anything else the same
// key might sign.
const signDomain = "gvmm-policy-signature-v1\x00"

// Signed is a signed document: Sig is ed25519 over
// signDomain || Type || 0x00 || Body, by the key whose id is Signer. Body
// is the canonical JSON of the document (what encoding/json produces for
// it); the signature is checked over the exact bytes before Body is
// parsed, and a Body that is not canonical is refused.
type Signed struct {
	Type   DocType `json:"type"`
	Body   []byte  `json:"body"`
	Signer KeyID   `json:"signer"`
	Sig    []byte  `json:"sig"`
}

func signedMessage(t DocType, body []byte) []byte {
	m := make([]byte, 0, len(signDomain)+len(t)+1+len(body))
	m = append(m, signDomain...)
	m = append(m, t...)
	m = append(m, 0)
	return append(m, body...)
}

// sign encodes v canonically and signs it as type t.
func sign(key ed25519.PrivateKey, t DocType, v any) (*Signed, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("sign %s: %w: private key size", t, ErrInvalid)
	}
	body, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", t, err)
	}
	if len(body) > MaxDocumentSize/2 {
		return nil, fmt.Errorf("sign %s: %w: body of %d bytes", t, ErrInvalid, len(body))
	}
	pub := key.Public().(ed25519.PublicKey)
	return &Signed{Type: t, Body: body, Signer: KeyIDOf(pub), Sig: ed25519.Sign(key, signedMessage(t, body))}, nil
}

// verify checks that s is of type t, that its signer is in the directory
// and that the signature is good; then decodes the body into v. It returns
// the signer. Nothing of the body is read before the signature holds.
func (s *Signed) verify(d *Directory, t DocType, v any) (*Principal, error) {
	if s == nil {
		return nil, fmt.Errorf("verify %s: %w: missing", t, ErrInvalid)
	}
	if s.Type != t {
		return nil, fmt.Errorf("verify %s: %w: document is %q", t, ErrInvalid, s.Type)
	}
	if len(s.Body) > MaxDocumentSize || len(s.Sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("verify %s: %w: body or signature size", t, ErrInvalid)
	}
	p, ok := d.get(s.Signer)
	if !ok {
		return nil, fmt.Errorf("verify %s: %w: signer %s", t, ErrUnknownPrincipal, s.Signer)
	}
	if !ed25519.Verify(p.Key, signedMessage(t, s.Body), s.Sig) {
		return nil, fmt.Errorf("verify %s: %w: bad signature by %s (%s)", t, ErrSignature, p.Name, s.Signer)
	}
	if err := decodeCanonical(s.Body, v); err != nil {
		return nil, fmt.Errorf("verify %s: %w", t, err)
	}
	return p, nil
}

// decodeStrict decodes exactly one JSON value with no unknown fields and
// nothing after it.
func decodeStrict(b []byte, v any) error {
	if len(b) > MaxDocumentSize {
		return fmt.Errorf("%w: %d bytes (max %d)", ErrInvalid, len(b), MaxDocumentSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: trailing data", ErrInvalid)
	}
	return nil
}

// decodeCanonical decodes strictly and then requires that encoding the
// result gives back exactly b: one document has one encoding, so duplicate
// keys, case-folded field names and odd spellings are refused.
func decodeCanonical(b []byte, v any) error {
	if err := decodeStrict(b, v); err != nil {
		return err
	}
	again, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if !bytes.Equal(again, b) {
		return fmt.Errorf("%w: body is not in canonical form", ErrInvalid)
	}
	return nil
}

// readLimited reads at most MaxDocumentSize bytes and fails on more.
func readLimited(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxDocumentSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: document larger than %d bytes", ErrInvalid, MaxDocumentSize)
	}
	return b, nil
}

// ParseSigned decodes a signed envelope from an untrusted source (size-
// limited, strict). It does not verify the signature: that needs the
// directory and the expected type (VerifyHostPolicy, Authenticator).
func ParseSigned(r io.Reader) (*Signed, error) {
	b, err := readLimited(r)
	if err != nil {
		return nil, fmt.Errorf("parse signed document: %w", err)
	}
	var s Signed
	if err := decodeStrict(b, &s); err != nil {
		return nil, fmt.Errorf("parse signed document: %w", err)
	}
	return &s, nil
}

// clone returns a deep copy (nil for nil).
func (s *Signed) clone() *Signed {
	if s == nil {
		return nil
	}
	c := *s
	c.Body = bytes.Clone(s.Body)
	c.Sig = bytes.Clone(s.Sig)
	return &c
}

// Marshal encodes the envelope.
func (s *Signed) Marshal() ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("marshal signed document: %w", err)
	}
	return b, nil
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
