package tpm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
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
