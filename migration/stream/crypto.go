package stream

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// KeySize is the size of the pre-shared (or attestation-released) key.
const KeySize = 32

// Directions of a connection, part of the key derivation so that the
// destination's acknowledgement never shares a key (and so nonces) with the
// source's records.
const (
	dirSource = "source->destination"
	dirAck    = "destination->source"
)

// connAEAD derives the AES-256-GCM key of one connection and direction:
//
//	HKDF-SHA256(secret = key, salt = stream id,
//	            info = "gvmm migration stream v1 " + direction + " " + header)
//
// The header bytes include the connection index and every declared
// parameter, so each connection has its own key and a header changed in
// transit makes the first record fail authentication. Nonces are the 64-bit
// record sequence number of that connection, so they never repeat under one
// key as long as a stream id is never reused with the same key (the sender
// draws a random one by default).
func connAEAD(key []byte, hdr []byte, streamID [16]byte, dir string) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, ErrKey
	}
	sub, err := hkdf.Key(sha256.New, key, streamID[:], "gvmm migration stream v1 "+dir+" "+string(hdr), KeySize)
	if err != nil {
		return nil, fmt.Errorf("derive connection key: %w", err)
	}
	blk, err := aes.NewCipher(sub)
	if err != nil {
		return nil, fmt.Errorf("derive connection key: %w", err)
	}
	return cipher.NewGCM(blk)
}

// nonce is 4 zero bytes then the big-endian sequence number.
func nonce(seq uint64) [12]byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], seq)
	return n
}

// chain is the running hash of one connection: it starts from the header
// and absorbs each record's header and authentication tag (which commits to
// the record's contents under the connection key).
type chain [32]byte

func newChain(hdr []byte) chain {
	h := sha256.New()
	h.Write([]byte("gvmm migration stream v1 chain"))
	h.Write(hdr)
	var c chain
	h.Sum(c[:0])
	return c
}

func (c *chain) absorb(recHdr, tag []byte) {
	var buf [32 + recordHeaderSize + tagSize]byte
	copy(buf[:], c[:])
	copy(buf[32:], recHdr)
	copy(buf[32+recordHeaderSize:], tag)
	*c = sha256.Sum256(buf[:])
}
