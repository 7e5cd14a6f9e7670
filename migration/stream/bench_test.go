package stream

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// benchSize is the guest memory size of the loopback benchmarks: 1 GiB as
// the issue asks, or GVMM_BENCH_MEM (e.g. "256M", "2G").
func benchSize(b *testing.B) int {
	s := os.Getenv("GVMM_BENCH_MEM")
	if s == "" {
		return 1 << 30
	}
	mult := 1
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n*mult%PageSize != 0 {
		b.Fatalf("GVMM_BENCH_MEM=%q: want a page-aligned size like 256M or 1G", os.Getenv("GVMM_BENCH_MEM"))
	}
	return n * mult
}

// benchGuests caches generated memory between sub-benchmarks of one run.
type benchGuests struct {
	mu   sync.Mutex
	mems map[string][]byte
}

func (g *benchGuests) get(size int, nonzero bool) []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	key := fmt.Sprint(size, nonzero)
	if g.mems == nil {
		g.mems = make(map[string][]byte)
	}
	if m, ok := g.mems[key]; ok {
		return m
	}
	m := genGuest(size, 1, nonzero)
	g.mems[key] = m
	return m
}

func zeroPages(mem []byte) int {
	n := 0
	for off := 0; off < len(mem); off += PageSize {
		if isZero(mem[off : off+PageSize]) {
			n++
		}
	}
	return n
}

func isZero(p []byte) bool {
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

// prefault touches every page of a fresh buffer so that neither benchmark
// pays the kernel's page faults inside its timed loop.
func prefault(b []byte) []byte {
	for i := 0; i < len(b); i += PageSize {
		b[i] = 1
	}
	return b
}

// tcpPairs dials n loopback TCP connections.
func tcpPairs(b *testing.B, n int) (w, r []net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		w, r = append(w, c), append(r, s)
	}
	return w, r
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// BenchmarkRawLoopback sends the same guest memory as plain bytes over
// loopback TCP into a destination buffer: the baseline.
func BenchmarkRawLoopback(b *testing.B) {
	var g benchGuests
	size := benchSize(b)
	for _, kind := range []string{"mixed", "nonzero"} {
		for _, n := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("%s/conns=%d", kind, n), func(b *testing.B) {
				mem := g.get(size, kind == "nonzero")
				dst := prefault(make([]byte, size))
				b.SetBytes(int64(size))
				b.ResetTimer()
				for range b.N {
					ws, rs := tcpPairs(b, n)
					var wg sync.WaitGroup
					part := size / n / PageSize * PageSize
					for i := range n {
						lo, hi := i*part, (i+1)*part
						if i == n-1 {
							hi = size
						}
						wg.Go(func() {
							if _, err := io.ReadFull(rs[i], dst[lo:hi]); err != nil {
								b.Error(err)
							}
						})
						wg.Go(func() {
							if _, err := ws[i].Write(mem[lo:hi]); err != nil {
								b.Error(err)
							}
						})
					}
					wg.Wait()
					closeAll(ws)
					closeAll(rs)
				}
			})
		}
	}
}

// sliceMem is a Memory over a byte slice.
type sliceMem []byte

func (m sliceMem) WritePage(gpa uint64, data []byte) error {
	copy(m[gpa:gpa+PageSize], data)
	return nil
}

// ZeroPages: the destination buffer is fresh, but a later pass may zero
// pages that held data.
func (m sliceMem) ZeroPages(gpa, pages uint64) error {
	clear(m[gpa : gpa+pages*PageSize])
	return nil
}

// BenchmarkStreamLoopback sends guest memory through the full stream (zero
// runs, zstd policy, AES-256-GCM, manifest, ack) over loopback TCP.
// Metrics: MB/s of guest memory, wire bytes per zero page, wire bytes as a
// fraction of guest bytes.
func BenchmarkStreamLoopback(b *testing.B) {
	var g benchGuests
	size := benchSize(b)
	for _, kind := range []string{"mixed", "nonzero"} {
		for _, comp := range []Compression{CompressAuto, CompressOff} {
			for _, n := range []int{1, 2, 4} {
				b.Run(fmt.Sprintf("%s/zstd=%s/conns=%d", kind, comp, n), func(b *testing.B) {
					benchStream(b, g.get(size, kind == "nonzero"), n, comp)
				})
			}
		}
	}
}

func benchStream(b *testing.B, mem []byte, n int, comp Compression) {
	size := len(mem)
	zeros := zeroPages(mem)
	dst := sliceMem(prefault(make([]byte, size)))
	ctx := context.Background()
	b.SetBytes(int64(size))
	b.ResetTimer()
	var st Stats
	for range b.N {
		ws, rs := tcpPairs(b, n)
		readers := make([]io.Reader, n)
		writers := make([]io.Writer, n)
		for i := range n {
			readers[i], writers[i] = rs[i], ws[i]
		}
		r, err := NewReceiver(readers, testKey, dst, ReceiverOptions{})
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := r.Run(ctx)
			if err == nil {
				err = r.Acknowledge(ctx, rs[0])
			}
			done <- err
		}()
		s, err := NewSender(writers, testKey, Options{GuestMemSize: uint64(size), Compression: comp})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.SendRange(ctx, 0, mem); err != nil {
			b.Fatal(err)
		}
		if st, err = s.Finish(ctx); err != nil {
			b.Fatal(err)
		}
		if err := s.AwaitAck(ctx, ws[0]); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		closeAll(ws)
		closeAll(rs)
	}
	b.StopTimer()
	if zeros > 0 {
		b.ReportMetric(float64(st.ZeroWireBytes)/float64(zeros), "wireB/zeropage")
	}
	b.ReportMetric(float64(st.WireBytes)/float64(size), "wire/raw")
	b.ReportMetric(float64(st.CompressedPages)/float64(max(st.Pages, 1)), "compressed/page")
}
