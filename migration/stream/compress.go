package stream

import (
	"fmt"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Compression selects how page batches are compressed.
type Compression int

const (
	// CompressAuto compresses with zstd at its fastest level where it
	// saves time: batches bound for a connection whose link is the
	// bottleneck (its queue of sealed records full), and, where the CPU
	// is, batches whose compression costs less than the encryption it
	// saves (measured as it goes: on a machine with fast AES-GCM it never
	// does, under emulation it often does). It pauses itself while
	// batches do not shrink enough. It is the zero value.
	CompressAuto Compression = iota
	// CompressOff never compresses.
	CompressOff
	// CompressAlways tries every batch (a batch that does not shrink is
	// still sent raw).
	CompressAlways
)

func (c Compression) String() string {
	switch c {
	case CompressAuto:
		return "auto"
	case CompressOff:
		return "off"
	case CompressAlways:
		return "always"
	}
	return fmt.Sprintf("compression-%d", int(c))
}

// ParseCompression reads a policy by its String name; "" is CompressAuto.
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "", "auto":
		return CompressAuto, nil
	case "off":
		return CompressOff, nil
	case "always":
		return CompressAlways, nil
	}
	return 0, fmt.Errorf("compression %q: want auto, off or always", s)
}

// Policy constants of CompressAuto.
const (
	// policyWindow batches are judged together.
	policyWindow = 8
	// A window whose compressed bytes exceed payNum/payDen of its raw bytes
	// does not pay.
	payNum, payDen = 9, 10
	// After a window that did not pay, skip this many batches before
	// probing again; the pause doubles on each further failure up to
	// maxBackoff and resets when compression pays again.
	minBackoff = 32
	maxBackoff = 2048
	// Where neither the link nor the measured costs call for compression,
	// one batch in probeEvery is compressed all the same, to keep the
	// cost of compressing and the ratio current.
	probeEvery = 256
	// costWeight is the weight of a new sample in the running costs.
	costWeight = 0.125
)

// compressor is one worker's zstd encoder and its on/off policy. It is not
// shared between goroutines.
type compressor struct {
	mode    Compression
	enc     *zstd.Encoder
	raw     uint64 // raw bytes tried in the current window
	comp    uint64 // their compressed size
	tries   int    // batches in the current window
	skip    int    // batches left to skip
	backoff int    // current pause length

	// Running estimates (exponentially weighted) of the CPU cost of
	// compressing and sealing, in nanoseconds per byte, and of the
	// compressed/raw ratio; zero until measured.
	compNs, sealNs, ratio float64
	sinceProbe            int // batches since the last one compressed
	now                   func() time.Time
}

func newCompressor(mode Compression) (*compressor, error) {
	c := &compressor{mode: mode, backoff: minBackoff, now: time.Now}
	if mode == CompressOff {
		return c, nil
	}
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false), // every record is authenticated already
		zstd.WithLowerEncoderMem(true),
	)
	if err != nil {
		return nil, fmt.Errorf("create zstd encoder: %w", err)
	}
	c.enc = enc
	return c, nil
}

// shouldTry says whether to compress the next batch, which goes to a
// connection whose link is (linkBound) or is not the bottleneck.
func (c *compressor) shouldTry(linkBound bool) bool {
	switch c.mode {
	case CompressOff:
		return false
	case CompressAlways:
		return true
	}
	if c.skip > 0 {
		c.skip--
		return false
	}
	if linkBound || c.cpuPays() {
		c.sinceProbe = 0
		return true
	}
	c.sinceProbe++
	if c.compNs == 0 || c.sinceProbe >= probeEvery {
		c.sinceProbe = 0
		return true
	}
	return false
}

// cpuPays says whether, by the running estimates, compressing a batch
// costs less CPU time than sealing the bytes it saves. Only the sender's
// side is counted: the receiver saves as much decryption as the sender
// saves encryption, and decompressing costs it less than that.
func (c *compressor) cpuPays() bool {
	return c.compNs > 0 && c.sealNs > 0 && c.compNs < (1-c.ratio)*c.sealNs
}

// noteSeal adds a measurement of sealing n bytes in d.
func (c *compressor) noteSeal(n int, d time.Duration) {
	if n > 0 {
		c.sealNs = ewma(c.sealNs, float64(d.Nanoseconds())/float64(n))
	}
}

func ewma(old, sample float64) float64 {
	if old == 0 {
		return sample
	}
	return old + costWeight*(sample-old)
}

// compress appends the zstd frame of raw to dst and reports whether it is
// worth sending instead of raw.
func (c *compressor) compress(dst, raw []byte) ([]byte, bool) {
	t := c.now()
	out := c.enc.EncodeAll(raw, dst)
	d := c.now().Sub(t)
	n := len(out) - len(dst)
	if len(raw) > 0 {
		c.compNs = ewma(c.compNs, float64(d.Nanoseconds())/float64(len(raw)))
		c.ratio = ewma(c.ratio, min(float64(n)/float64(len(raw)), 1))
	}
	c.record(len(raw), n)
	return out, n < len(raw)-len(raw)/16
}

func (c *compressor) record(raw, comp int) {
	if c.mode != CompressAuto {
		return
	}
	c.raw += uint64(raw)
	c.comp += uint64(comp)
	c.tries++
	if c.tries < policyWindow {
		return
	}
	if c.comp*payDen > c.raw*payNum {
		c.skip = c.backoff
		c.backoff = min(c.backoff*2, maxBackoff)
	} else {
		c.backoff = minBackoff
	}
	c.raw, c.comp, c.tries = 0, 0, 0
}

func (c *compressor) close() {
	if c.enc != nil {
		c.enc.Close()
	}
}
