package tpm

import (
	"crypto/sha256"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// sortedPCRs returns a sorted copy without duplicates.
func sortedPCRs(pcrs []int) []int {
	s := slices.Clone(pcrs)
	slices.Sort(s)
	return slices.Compact(s)
}

// pcrSelection builds a SHA-256-only PCR selection.
func pcrSelection(pcrs []int) (tpm2.TPMLPCRSelection, error) {
	if len(pcrs) == 0 {
		return tpm2.TPMLPCRSelection{}, fmt.Errorf("empty PCR selection")
	}
	u := make([]uint, 0, len(pcrs))
	for _, p := range pcrs {
		if p < 0 || p > 23 {
			return tpm2.TPMLPCRSelection{}, fmt.Errorf("PCR %d out of range 0-23", p)
		}
		u = append(u, uint(p))
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}, nil
}

// selectedPCRs decodes a selection bitmap into sorted PCR indices.
func selectedPCRs(bitmap []byte) []int {
	var out []int
	for i, b := range bitmap {
		for bit := 0; bit < 8; bit++ {
			if b&(1<<bit) != 0 {
				out = append(out, i*8+bit)
			}
		}
	}
	return out
}

// pcrCompositeDigest is SHA-256 over the PCR values in ascending order, as
// the TPM computes a quote's pcrDigest and a PolicyPCR's pcrDigest.
func pcrCompositeDigest(pcrs []int, values map[int][32]byte) ([32]byte, error) {
	h := sha256.New()
	for _, p := range sortedPCRs(pcrs) {
		v, ok := values[p]
		if !ok {
			return [32]byte{}, fmt.Errorf("no value for PCR %d", p)
		}
		h.Write(v[:])
	}
	var d [32]byte
	h.Sum(d[:0])
	return d, nil
}
