package tpm

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestReleaseToAttestedTPM(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		secret := bytes.Repeat([]byte{0x42}, 32)
		var blob *ImportBlob
		withTwoTPMs(t, b, func(dst *TPM) {
			log := launch(t, dst, "config v1")
			id, err := dst.Identity(ctx)
			if err != nil {
				t.Fatal(err)
			}
			golden := map[int][32]byte{log.PCR: log.Replay()}
			if blob, err = WrapToEK(id.EKPublic, secret, []int{log.PCR}, golden); err != nil {
				t.Fatal(err)
			}
			if got, err := dst.UnwrapImport(ctx, blob); err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("unwrap on the destination: %x, %v", got, err)
			}
			tampered := *blob
			tampered.Duplicate = bytes.Clone(blob.Duplicate)
			tampered.Duplicate[len(tampered.Duplicate)-1] ^= 1
			if _, err := dst.UnwrapImport(ctx, &tampered); !errors.Is(err, ErrImport) {
				t.Fatalf("tampered blob: %v; want ErrImport", err)
			}
			if err := dst.CloseLaunch(ctx, log); err != nil {
				t.Fatal(err)
			}
			if _, err := dst.UnwrapImport(ctx, blob); !errors.Is(err, ErrImport) {
				t.Fatalf("after PCR change: %v; want ErrImport", err)
			}
		}, func(other *TPM) {
			launch(t, other, "config v1")
			if _, err := other.UnwrapImport(ctx, blob); !errors.Is(err, ErrImport) {
				t.Fatalf("on another TPM: %v; want ErrImport", err)
			}
		})
	})
}

func TestReleaseToEphemeralKey(t *testing.T) {
	k, _ := NewEphemeralKey()
	res := &Result{HostID: "h-1", MigrationID: "m-1", EphemeralPub: k.PublicKey().Bytes()}
	box, err := SealToEphemeral(res, []byte("vm key"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := OpenEphemeral(k, box, "m-1", "h-1"); err != nil || string(got) != "vm key" {
		t.Fatalf("open: %q, %v", got, err)
	}
	other, _ := NewEphemeralKey()
	for name, f := range map[string]func() error{
		"other key":          func() error { _, err := OpenEphemeral(other, box, "m-1", "h-1"); return err },
		"other migration id": func() error { _, err := OpenEphemeral(k, box, "m-2", "h-1"); return err },
		"other host":         func() error { _, err := OpenEphemeral(k, box, "m-1", "h-2"); return err },
		"tampered": func() error {
			b := *box
			b.Ciphertext = bytes.Clone(b.Ciphertext)
			b.Ciphertext[0] ^= 1
			_, err := OpenEphemeral(k, &b, "m-1", "h-1")
			return err
		},
	} {
		if f() == nil {
			t.Errorf("%s: opened", name)
		}
	}
}
