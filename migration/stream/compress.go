package stream

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Compression selects how page batches are compressed.
type Compression int

const (
	// CompressAuto compresses with zstd at its fastest level where it
	// pays: only batches bound for a connection whose link is the
	// bottleneck (its queue of sealed records full), and it
	// pauses itself while batches do not shrink enough. It is the zero
	// value.
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
}

func newCompressor(mode Compression) (*compressor, error) {
	c := &compressor{mode: mode, backoff: minBackoff}
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

// shouldTry says whether to compress the next batch.
func (c *compressor) shouldTry() bool {
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
	return true
}

// compress appends the zstd frame of raw to dst and reports whether it is
// worth sending instead of raw.
func (c *compressor) compress(dst, raw []byte) ([]byte, bool) {
	out := c.enc.EncodeAll(raw, dst)
	n := len(out) - len(dst)
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
