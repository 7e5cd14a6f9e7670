package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gvmm/gvmm/policy"
)

// MaxLine bounds one record's encoding.
const MaxLine = 64 << 10

const domain = "gvmm-audit-v1\x00"

// ErrChain is returned (wrapped) by Verify for a log whose chain does not
// hold: an edited, inserted, reordered or deleted line, or a malformed one.
var ErrChain = errors.New("audit chain broken")

// Event is what is audited: one decision and what it was about.
type Event struct {
	// Host is the deciding host's key id.
	Host policy.KeyID `json:"host"`
	// Kind says which decision: "migrate-out", "migrate-in",
	// "set-vm-policy", "set-host-policy", "authenticate".
	Kind string `json:"kind"`
	// Requester is the authenticated requester, if any.
	Requester policy.KeyID `json:"requester,omitempty"`
	// Request is the authenticated request's digest, if any.
	Request string `json:"request,omitempty"`
	// VM, Source and Destination are what the decision was about.
	VM          string          `json:"vm,omitempty"`
	Source      policy.KeyID    `json:"source,omitempty"`
	Destination policy.KeyID    `json:"destination,omitempty"`
	Decision    policy.Decision `json:"decision"`
}

// EventFor fills an Event from an authenticated request (which may be
// nil: a request that failed authentication).
func EventFor(host policy.KeyID, kind string, req *policy.Authenticated, d policy.Decision) Event {
	e := Event{Host: host, Kind: kind, Decision: d}
	if req != nil {
		r := req.Request()
		e.Requester, e.Request = req.Requester().ID(), req.Digest()
		e.VM, e.Destination = r.VM, r.Destination
	}
	return e
}

// Record is one line of the log.
type Record struct {
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
	Prev  string    `json:"prev"`
	Event Event     `json:"event"`
	Hash  string    `json:"hash,omitempty"`
}

func (r *Record) digest() (string, error) {
	c := *r
	c.Hash = ""
	b, err := json.Marshal(&c)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(domain))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Head is the end of a chain: the last record's sequence number and hash
// (0 and the zero hash for an empty log).
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

var zeroHash = strings.Repeat("0", 2*sha256.Size)

// Log appends records to a chain. Safe for concurrent use.
type Log struct {
	mu   sync.Mutex
	w    io.Writer
	sync func() error
	head Head // guarded by mu
	now  func() time.Time
	f    *os.File
}

// New starts a log on w continuing from head (the zero Head starts a new
// chain). now is the clock (nil: time.Now).
func New(w io.Writer, head Head, now func() time.Time) *Log {
	if head.Hash == "" {
		head.Hash = zeroHash
	}
	if now == nil {
		now = time.Now
	}
	return &Log{w: w, head: head, now: now}
}

// Open opens (or creates, 0600) a log file, verifies the chain already in
// it and appends after its last record. A file whose chain is broken is
// refused: the caller must look at it before anything more is written.
func Open(path string, now func() time.Time) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	head, err := Verify(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	l := New(f, head, now)
	l.f, l.sync = f, f.Sync
	return l, nil
}

// Append adds one record and returns it. The record is written with a
// single write and synced (for a file) before Append returns.
func (l *Log) Append(e Event) (Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := Record{Seq: l.head.Seq + 1, Time: l.now().UTC(), Prev: l.head.Hash, Event: e}
	h, err := r.digest()
	if err != nil {
		return Record{}, fmt.Errorf("append audit record: %w", err)
	}
	r.Hash = h
	b, err := json.Marshal(&r)
	if err != nil {
		return Record{}, fmt.Errorf("append audit record: %w", err)
	}
	if len(b) >= MaxLine {
		return Record{}, fmt.Errorf("append audit record: %d bytes (max %d)", len(b), MaxLine)
	}
	if _, err := l.w.Write(append(b, '\n')); err != nil {
		return Record{}, fmt.Errorf("append audit record: %w", err)
	}
	if l.sync != nil {
		if err := l.sync(); err != nil {
			return Record{}, fmt.Errorf("append audit record: sync: %w", err)
		}
	}
	l.head = Head{Seq: r.Seq, Hash: h}
	return r, nil
}

// Head returns the current end of the chain, for the caller to anchor.
func (l *Log) Head() Head {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head
}

// Close closes the file of a log made by Open.
func (l *Log) Close() error {
	if l.f == nil {
		return nil
	}
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("close audit log: %w", err)
	}
	return nil
}

// Verify reads a whole log and checks every line: strict, canonical JSON
// within MaxLine, consecutive sequence numbers from 1, each prev the
// previous hash and each hash right. It returns the head.
func Verify(r io.Reader) (Head, error) {
	head := Head{Hash: zeroHash}
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return head, fmt.Errorf("verify audit log: %w: line %d longer than %d bytes", ErrChain, head.Seq+1, MaxLine)
		}
		if errors.Is(err, io.EOF) {
			if len(line) != 0 {
				return head, fmt.Errorf("verify audit log: %w: unterminated line %d", ErrChain, head.Seq+1)
			}
			return head, nil
		}
		if err != nil {
			return head, fmt.Errorf("verify audit log: %w", err)
		}
		line = line[:len(line)-1]
		var rec Record
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			return head, fmt.Errorf("verify audit log: %w: line %d: %w", ErrChain, head.Seq+1, err)
		}
		again, err := json.Marshal(&rec)
		if err != nil || !bytes.Equal(again, line) {
			return head, fmt.Errorf("verify audit log: %w: line %d is not canonical", ErrChain, head.Seq+1)
		}
		if rec.Seq != head.Seq+1 {
			return head, fmt.Errorf("verify audit log: %w: line %d has sequence %d (a line was deleted, inserted or moved)", ErrChain, head.Seq+1, rec.Seq)
		}
		if rec.Prev != head.Hash {
			return head, fmt.Errorf("verify audit log: %w: record %d does not follow record %d", ErrChain, rec.Seq, head.Seq)
		}
		want, err := rec.digest()
		if err != nil || want != rec.Hash {
			return head, fmt.Errorf("verify audit log: %w: record %d was altered", ErrChain, rec.Seq)
		}
		head = Head{Seq: rec.Seq, Hash: rec.Hash}
	}
}

// VerifyHead verifies a log and checks that it ends at, or goes on past,
// an anchored head: a log cut back before the anchor, or a rewritten
// chain, is refused.
func VerifyHead(r io.ReadSeeker, anchor Head) (Head, error) {
	head, err := Verify(r)
	if err != nil {
		return head, err
	}
	if anchor.Seq == 0 {
		return head, nil
	}
	if head.Seq < anchor.Seq {
		return head, fmt.Errorf("verify audit log: %w: ends at record %d, anchored at %d (truncated)", ErrChain, head.Seq, anchor.Seq)
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return head, fmt.Errorf("verify audit log: %w", err)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxLine)
	for i := uint64(1); sc.Scan(); i++ {
		if i < anchor.Seq {
			continue
		}
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil || rec.Hash != anchor.Hash {
			return head, fmt.Errorf("verify audit log: %w: record %d is not the anchored one (rewritten)", ErrChain, anchor.Seq)
		}
		return head, nil
	}
	return head, fmt.Errorf("verify audit log: %w: anchored record %d not found", ErrChain, anchor.Seq)
}
