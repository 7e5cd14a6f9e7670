package tpm

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"
)

// median runs f b.N times and reports the median duration as "med-ms/op"
// besides the usual mean.
func median(b *testing.B, f func()) {
	d := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		f()
		d = append(d, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "med-ms/op")
}

// BenchmarkTPM times enrollment, quote, verification, seal/unseal and a
// complete challenge-quote-verify round on each backend.
// Run: go test -run '^$' -bench TPM -benchtime 20x ./tpm
func BenchmarkTPM(b *testing.B) {
	ctx := context.Background()
	for _, be := range backends(b) {
		b.Run(be.name+"/enroll", func(b *testing.B) {
			tp := be.open(b)
			median(b, func() { enroll(b, NewVerifier(VerifierConfig{}), tp) })
		})
		b.Run(be.name+"/quote", func(b *testing.B) {
			h := newHost(b, be.open(b))
			median(b, func() { h.evidence(b) })
		})
		b.Run(be.name+"/verify", func(b *testing.B) {
			h := newHost(b, be.open(b))
			evs := make([]*Evidence, b.N)
			for i := range evs {
				evs[i] = h.evidence(b)
			}
			i := 0
			median(b, func() {
				if _, err := h.verify(evs[i]); err != nil {
					b.Fatal(err)
				}
				i++
			})
		})
		b.Run(be.name+"/round", func(b *testing.B) {
			h := newHost(b, be.open(b))
			median(b, func() {
				if _, err := h.verify(h.evidence(b)); err != nil {
					b.Fatal(err)
				}
			})
		})
		b.Run(be.name+"/seal-unseal", func(b *testing.B) {
			tp := be.open(b)
			launch(b, tp, "config v1")
			kek := bytes.Repeat([]byte{1}, 32)
			median(b, func() {
				s, err := tp.Seal(ctx, kek, SealPolicy{Mode: SealPCR, PCRs: []int{23}})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := tp.Unseal(ctx, s, nil, nil); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}
