package migration

import (
	"context"
	"net"
	"testing"
	"time"
)

// BenchmarkMigrate migrates an idle 256 MiB guest (a quarter zero pages, a
// quarter compressible, half random) over two loopback TCP connections.
func BenchmarkMigrate(b *testing.B) {
	const size = 256 << 20
	src := newFakeSource(b, size, 0, 0, 5)
	src.noSnapshot = true
	dst := newFakeDest(src)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx := context.Background()
	var total, down time.Duration
	var wire uint64
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		errc := make(chan error, 1)
		go func() {
			_, err := Receive(ctx, ln, testKey, dst, ReceiveOptions{})
			errc <- err
		}()
		conns := make([]net.Conn, 2)
		for i := range conns {
			if conns[i], err = net.Dial("tcp", ln.Addr().String()); err != nil {
				b.Fatal(err)
			}
		}
		st, err := Migrate(ctx, src, conns, testKey, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		_ = src.Resume(ctx) // the fake's Pause stopped it
		total += st.Total
		down += st.Downtime
		wire += st.WireBytes
	}
	n := float64(b.N)
	b.ReportMetric(size/(1<<20)/(total.Seconds()/n), "guestMiB/s")
	b.ReportMetric(float64(down.Microseconds())/1000/n, "downtime-ms")
	b.ReportMetric(float64(wire)/(1<<20)/n, "wireMiB")
}
