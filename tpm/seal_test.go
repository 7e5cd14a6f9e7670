package tpm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

func TestSealUnsealPCR(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		tp := b.open(t)
		log := launch(t, tp, "config v1")
		kek := bytes.Repeat([]byte{7}, 32)
		s, err := tp.Seal(ctx, kek, SealPolicy{Mode: SealPCR, PCRs: []int{log.PCR}})
		if err != nil {
			t.Fatalf("seal: %v", err)
		}
		got, err := tp.Unseal(ctx, s, nil, nil)
		if err != nil || !bytes.Equal(got, kek) {
			t.Fatalf("unseal = %x, %v", got, err)
		}
		// The closing event ends the unseal window.
		if err := tp.CloseLaunch(ctx, log); err != nil {
			t.Fatal(err)
		}
		if _, err := tp.Unseal(ctx, s, nil, nil); !errors.Is(err, ErrUnseal) {
			t.Fatalf("unseal after closing event: err = %v, want ErrUnseal", err)
		}
	})
}

func TestSealAuthorized(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		ref := []byte("gvmm-kek")
		tp := b.open(t)
		log := launch(t, tp, "config v1")
		kek := bytes.Repeat([]byte{9}, 32)
		s, err := tp.Seal(ctx, kek, SealPolicy{Mode: SealAuthorized, PCRs: []int{log.PCR}, Signer: &signer.PublicKey, PolicyRef: ref})
		if err != nil {
			t.Fatalf("seal: %v", err)
		}
		approve := func(l *Log) *Approval {
			a, err := Approve(signer, ref, []int{l.PCR}, map[int][32]byte{l.PCR: l.Replay()})
			if err != nil {
				t.Fatal(err)
			}
			return a
		}
		a1 := approve(log)
		if got, err := tp.Unseal(ctx, s, &signer.PublicKey, a1); err != nil || !bytes.Equal(got, kek) {
			t.Fatalf("unseal v1: %x, %v", got, err)
		}
		// Upgrade: new config, new measurements. The old approval fails,
		// a new approval works without re-sealing.
		log2 := launch(t, tp, "config v2")
		if _, err := tp.Unseal(ctx, s, &signer.PublicKey, a1); !errors.Is(err, ErrUnseal) {
			t.Fatalf("unseal v2 with v1 approval: %v, want ErrUnseal", err)
		}
		if got, err := tp.Unseal(ctx, s, &signer.PublicKey, approve(log2)); err != nil || !bytes.Equal(got, kek) {
			t.Fatalf("unseal v2 with v2 approval: %x, %v", got, err)
		}
	})
}

// twoTPMs runs f with TPM A; then, with A closed (the simulator is one per
// process) or still open (swtpm), with a different TPM B.
func withTwoTPMs(t *testing.T, b backend, onA func(a *TPM), onB func(bt *TPM)) {
	a := b.open(t)
	onA(a)
	if !b.concurrent {
		a.Close()
	}
	onB(b.open(t))
}

func TestSealFailsClosed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		kek := bytes.Repeat([]byte{5}, 32)
		signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		forger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		ref := []byte("gvmm-kek")

		t.Run("sealed blob moved to another TPM", func(t *testing.T) {
			var s *Sealed
			withTwoTPMs(t, b, func(a *TPM) {
				launch(t, a, "config v1")
				var err error
				if s, err = a.Seal(ctx, kek, SealPolicy{Mode: SealPCR, PCRs: []int{23}}); err != nil {
					t.Fatal(err)
				}
			}, func(other *TPM) {
				launch(t, other, "config v1") // same measurements, other TPM
				if got, err := other.Unseal(ctx, s, nil, nil); !errors.Is(err, ErrUnseal) {
					t.Fatalf("unseal on another TPM: %x, %v; want ErrUnseal", got, err)
				}
			})
		})

		tp := b.open(t)
		log := launch(t, tp, "config v1")
		pcrSealed, err := tp.Seal(ctx, kek, SealPolicy{Mode: SealPCR, PCRs: []int{log.PCR}})
		if err != nil {
			t.Fatal(err)
		}
		authSealed, err := tp.Seal(ctx, kek, SealPolicy{Mode: SealAuthorized, PCRs: []int{log.PCR}, Signer: &signer.PublicKey, PolicyRef: ref})
		if err != nil {
			t.Fatal(err)
		}
		cur := map[int][32]byte{log.PCR: log.Replay()}
		good, _ := Approve(signer, ref, []int{log.PCR}, cur)
		forged, _ := Approve(forger, ref, []int{log.PCR}, cur)
		otherRef, _ := Approve(signer, []byte("something else"), []int{log.PCR}, cur)
		altered := *good
		altered.ApprovedPolicy = bytes.Clone(good.ApprovedPolicy)
		altered.ApprovedPolicy[0] ^= 1

		for _, c := range []struct {
			name     string
			s        *Sealed
			signer   *ecdsa.PublicKey
			approval *Approval
		}{
			{"forged approval (other key)", authSealed, &signer.PublicKey, forged},
			{"forged approval presented with the forger's key", authSealed, &forger.PublicKey, forged},
			{"approval for another policy ref", authSealed, &signer.PublicKey, otherRef},
			{"approval with altered policy", authSealed, &signer.PublicKey, &altered},
			{"no approval", authSealed, &signer.PublicKey, nil},
		} {
			t.Run(c.name, func(t *testing.T) {
				if got, err := tp.Unseal(ctx, c.s, c.signer, c.approval); !errors.Is(err, ErrUnseal) {
					t.Fatalf("unseal: %x, %v; want ErrUnseal", got, err)
				}
			})
		}
		t.Run("tampered sealed object", func(t *testing.T) {
			s := *pcrSealed
			s.Private = bytes.Clone(s.Private)
			s.Private[len(s.Private)-1] ^= 1
			if _, err := tp.Unseal(ctx, &s, nil, nil); !errors.Is(err, ErrUnseal) {
				t.Fatalf("unseal: %v; want ErrUnseal", err)
			}
		})
		// The genuine approval still works before the PCR changes.
		if _, err := tp.Unseal(ctx, authSealed, &signer.PublicKey, good); err != nil {
			t.Fatalf("genuine approval: %v", err)
		}
		t.Run("unseal after PCR change", func(t *testing.T) {
			if err := tp.ExtendEvent(ctx, &Log{PCR: log.PCR}, Event{Type: EventConfig, Data: []byte("changed")}); err != nil {
				t.Fatal(err)
			}
			if _, err := tp.Unseal(ctx, pcrSealed, nil, nil); !errors.Is(err, ErrUnseal) {
				t.Fatalf("PCR-sealed: %v; want ErrUnseal", err)
			}
			if _, err := tp.Unseal(ctx, authSealed, &signer.PublicKey, good); !errors.Is(err, ErrUnseal) {
				t.Fatalf("authorized: %v; want ErrUnseal", err)
			}
		})
		t.Run("unseal after closing event", func(t *testing.T) {
			log := launch(t, tp, "config v1")
			if _, err := tp.Unseal(ctx, authSealed, &signer.PublicKey, good); err != nil {
				t.Fatalf("before closing: %v", err)
			}
			if err := tp.CloseLaunch(ctx, log); err != nil {
				t.Fatal(err)
			}
			if _, err := tp.Unseal(ctx, authSealed, &signer.PublicKey, good); !errors.Is(err, ErrUnseal) {
				t.Fatalf("authorized after closing: %v; want ErrUnseal", err)
			}
			if _, err := tp.Unseal(ctx, pcrSealed, nil, nil); !errors.Is(err, ErrUnseal) {
				t.Fatalf("PCR-sealed after closing: %v; want ErrUnseal", err)
			}
		})
		t.Run("seal more than the TPM allows", func(t *testing.T) {
			_, err := tp.Seal(ctx, make([]byte, MaxSealSize+1), SealPolicy{Mode: SealPCR, PCRs: []int{23}})
			if !errors.Is(err, ErrSealTooLarge) || !strings.Contains(err.Error(), "at most 128") {
				t.Fatalf("seal 129 bytes: %v; want ErrSealTooLarge with the limit", err)
			}
			if _, err := tp.Seal(ctx, make([]byte, MaxSealSize), SealPolicy{Mode: SealPCR, PCRs: []int{23}}); err != nil {
				t.Fatalf("seal exactly 128 bytes: %v", err)
			}
		})
	})
}

func TestStoreFailsClosed(t *testing.T) {
	dir := t.TempDir()
	kek := bytes.Repeat([]byte{1}, 32)
	s, err := NewStore(dir, kek)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put("host-key", []byte("secret key material")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get("host-key"); err != nil || string(got) != "secret key material" {
		t.Fatalf("get: %q, %v", got, err)
	}
	blob, _ := s.Seal("host-key", []byte("secret key material"))
	other, _ := NewStore(t.TempDir(), bytes.Repeat([]byte{2}, 32))
	for _, c := range []struct {
		name  string
		st    *Store
		as    string
		tweak func([]byte) []byte
	}{
		{"flipped ciphertext bit", s, "host-key", func(b []byte) []byte { b[len(b)-20] ^= 1; return b }},
		{"flipped tag bit", s, "host-key", func(b []byte) []byte { b[len(b)-1] ^= 1; return b }},
		{"flipped nonce bit", s, "host-key", func(b []byte) []byte { b[blobHeader-1] ^= 1; return b }},
		{"renamed blob", s, "policy", func(b []byte) []byte { return b }},
		{"other KEK", other, "host-key", func(b []byte) []byte { return b }},
		{"truncated", s, "host-key", func(b []byte) []byte { return b[:len(b)-1] }},
		{"too short", s, "host-key", func(b []byte) []byte { return b[:10] }},
		{"bad magic", s, "host-key", func(b []byte) []byte { b[0] = 'X'; return b }},
		{"future version", s, "host-key", func(b []byte) []byte { b[len(blobMagic)+3] = 2; return b }},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got, err := c.st.Open(c.as, c.tweak(bytes.Clone(blob))); !errors.Is(err, ErrBlob) {
				t.Fatalf("open: %q, %v; want ErrBlob", got, err)
			}
		})
	}
	if _, err := s.Get("../../etc/passwd"); err == nil {
		t.Fatal("path traversal in blob name accepted")
	}
}
