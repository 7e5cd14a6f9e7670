package tpm

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
)

const (
	blobMagic   = "GVMMBLOB"
	blobVersion = 1
	// blobAD prefixes the additional data; the blob's name follows, so a
	// blob renamed or copied under another name does not decrypt.
	blobAD = "gvmm-blob-v1\x00"
	// MaxBlobSize bounds one blob's plaintext.
	MaxBlobSize = 1 << 20
	blobHeader  = len(blobMagic) + 4 + 12
)

// ErrBlob is returned (wrapped) for a blob that is malformed, tampered
// with, renamed, or encrypted under another key.
var ErrBlob = errors.New("bad sealed-store blob")

var blobName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// Store holds AES-256-GCM blobs in a directory under a key-encryption key
// that is itself sealed to the TPM. The KEK never touches the disk in
// clear.
type Store struct {
	dir  string
	aead cipher.AEAD
}

// NewStore returns a store over dir (created 0700 if missing) with a
// 32-byte KEK.
func NewStore(dir string, kek []byte) (*Store, error) {
	if len(kek) != 32 {
		return nil, fmt.Errorf("open store: KEK is %d bytes, want 32", len(kek))
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	return &Store{dir: dir, aead: aead}, nil
}

func (s *Store) path(name string) (string, error) {
	if !blobName.MatchString(name) {
		return "", fmt.Errorf("blob name %q: want [a-z0-9._-], at most 64", name)
	}
	return filepath.Join(s.dir, "blobs", name), nil
}

// Seal encrypts data for a blob named name (without writing it).
func (s *Store) Seal(name string, data []byte) ([]byte, error) {
	if len(data) > MaxBlobSize {
		return nil, fmt.Errorf("seal blob %s: %d bytes exceed %d", name, len(data), MaxBlobSize)
	}
	var b bytes.Buffer
	b.WriteString(blobMagic)
	binary.Write(&b, binary.BigEndian, uint32(blobVersion))
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return nil, fmt.Errorf("seal blob %s: %w", name, err)
	}
	b.Write(nonce)
	hdr := b.Bytes()
	return s.aead.Seal(hdr, nonce, data, append([]byte(blobAD+name+"\x00"), hdr...)), nil
}

// Open decrypts a blob that claims to be named name.
func (s *Store) Open(name string, blob []byte) ([]byte, error) {
	if len(blob) < blobHeader+s.aead.Overhead() || len(blob) > blobHeader+s.aead.Overhead()+MaxBlobSize {
		return nil, fmt.Errorf("open blob %s: %w: size %d", name, ErrBlob, len(blob))
	}
	if string(blob[:len(blobMagic)]) != blobMagic {
		return nil, fmt.Errorf("open blob %s: %w: bad magic", name, ErrBlob)
	}
	if v := binary.BigEndian.Uint32(blob[len(blobMagic):]); v != blobVersion {
		return nil, fmt.Errorf("open blob %s: %w: version %d", name, ErrBlob, v)
	}
	hdr := blob[:blobHeader]
	nonce := hdr[len(blobMagic)+4:]
	pt, err := s.aead.Open(nil, nonce, blob[blobHeader:], append([]byte(blobAD+name+"\x00"), hdr...))
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w: authentication failed", name, ErrBlob)
	}
	return pt, nil
}

// Put writes a blob atomically (0600).
func (s *Store) Put(name string, data []byte) error {
	p, err := s.path(name)
	if err != nil {
		return fmt.Errorf("put blob: %w", err)
	}
	blob, err := s.Seal(name, data)
	if err != nil {
		return fmt.Errorf("put blob: %w", err)
	}
	if err := writeFileAtomic(p, blob, 0o600); err != nil {
		return fmt.Errorf("put blob %s: %w", name, err)
	}
	return nil
}

// Get reads and decrypts a blob.
func (s *Store) Get(name string) ([]byte, error) {
	p, err := s.path(name)
	if err != nil {
		return nil, fmt.Errorf("get blob: %w", err)
	}
	blob, err := readFileLimited(p, blobHeader+s.aead.Overhead()+MaxBlobSize)
	if err != nil {
		return nil, fmt.Errorf("get blob %s: %w", name, err)
	}
	return s.Open(name, blob)
}

// writeFileAtomic writes via a temporary file and rename.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// readFileLimited reads a file, refusing one larger than limit.
func readFileLimited(path string, limit int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}
