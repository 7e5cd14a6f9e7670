package gate

import (
	"context"
	"testing"
	"time"
)

// BenchmarkHandshake measures a whole gate handshake on the simulator:
// authenticate the signed request (and save the used nonce in the sealed
// state), pre-check, mutual TLS, challenge, quote, verify, decide, release
// the key to the quoted ephemeral key, and the destination's acceptance.
func BenchmarkHandshake(b *testing.B) {
	w := stdWorld(b, nil)
	lap, desk := w.hosts["laptop"], w.hosts["desktop"]
	ln := listen(b)
	ctx := context.Background()
	src, dst := &Source{Host: lap.host}, &Destination{Host: desk.host}
	var attest, decide, auth, release time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		signed := w.migrate("tom", "tom-vm", lap, desk)
		done := make(chan error, 1)
		go func() {
			a, err := dst.Accept(ctx, ln)
			if err == nil {
				a.Key.Destroy()
			}
			done <- err
		}()
		b.StartTimer()
		out, err := src.Run(ctx, signed, ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		auth += out.Timings.Authenticate
		attest += out.Timings.Attest
		decide += out.Timings.Decide
		release += out.Timings.Release
		out.Key.Destroy()
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(float64(auth.Microseconds())/n/1000, "auth-ms/op")
	b.ReportMetric(float64(attest.Microseconds())/n/1000, "attest-ms/op")
	b.ReportMetric(float64(decide.Microseconds())/n/1000, "decide-ms/op")
	b.ReportMetric(float64(release.Microseconds())/n/1000, "release-ms/op")
}
