package audit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gvmm/gvmm/policy"
)

func clock() func() time.Time {
	t := time.Unix(1_795_000_000, 0)
	return func() time.Time { t = t.Add(time.Second); return t }
}

// fiveRecords writes a log of five decisions and returns its lines.
func fiveRecords(t *testing.T) ([]string, Head) {
	t.Helper()
	var buf bytes.Buffer
	l := New(&buf, Head{}, clock())
	for i := range 5 {
		d := policy.Decision{Allow: i%2 == 0, Stage: policy.StageAttested, Rule: fmt.Sprintf("rule %d", i), Reason: fmt.Sprintf("reason %d", i)}
		if _, err := l.Append(Event{Host: "h", Kind: "migrate-out", VM: "tom-vm", Decision: d}); err != nil {
			t.Fatal(err)
		}
	}
	return strings.SplitAfter(strings.TrimSuffix(buf.String(), "\n"), "\n"), l.Head()
}

func TestVerify(t *testing.T) {
	lines, head := fiveRecords(t)
	if head.Seq != 5 {
		t.Fatalf("head %+v", head)
	}
	join := func(ls ...string) string {
		s := strings.Join(ls, "")
		if !strings.HasSuffix(s, "\n") {
			s += "\n"
		}
		return s
	}
	edited := strings.Replace(lines[1], `"allow":false`, `"allow":true`, 1)
	reworded := strings.Replace(lines[2], "reason 2", "reason X", 1)
	tests := []struct {
		name string
		log  string
		ok   bool
		seq  uint64
	}{
		{"intact", join(lines...), true, 5},
		{"empty", "", true, 0},
		{"decision edited", join(lines[0], edited, lines[2], lines[3], lines[4]), false, 1},
		{"reason edited", join(lines[0], lines[1], reworded, lines[3], lines[4]), false, 2},
		{"line deleted", join(lines[0], lines[2], lines[3], lines[4]), false, 1},
		{"first line deleted", join(lines[1:]...), false, 0},
		{"lines swapped", join(lines[0], lines[2], lines[1], lines[3], lines[4]), false, 1},
		{"line duplicated", join(lines[0], lines[1], lines[1], lines[2]), false, 2},
		{"whitespace added", join(lines[0], " "+lines[1]), false, 1},
		{"unknown field", join(lines[0], strings.Replace(lines[1], `{"seq"`, `{"x":1,"seq"`, 1)), false, 1},
		{"unterminated", strings.TrimSuffix(join(lines...), "\n"), false, 4},
		{"too long", join(lines[0], strings.Repeat("a", MaxLine+1)), false, 1},
		// Cutting the tail keeps a valid chain: only an anchor shows it
		// (TestVerifyHead).
		{"tail cut", join(lines[:3]...), true, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := Verify(strings.NewReader(tc.log))
			if tc.ok != (err == nil) || !tc.ok && !errors.Is(err, ErrChain) {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if h.Seq != tc.seq {
				t.Errorf("verified up to %d, want %d", h.Seq, tc.seq)
			}
		})
	}
}

func TestVerifyHead(t *testing.T) {
	lines, head := fiveRecords(t)
	full := strings.Join(lines, "") + "\n"
	other, _ := fiveRecords(t) // same content, same clock: same chain
	rewritten := strings.Replace(strings.Join(other[:5], "")+"\n", "reason 4", "reason Y", 1)
	tests := []struct {
		name   string
		log    string
		anchor Head
		ok     bool
	}{
		{"at anchor", full, head, true},
		{"past anchor", full, Head{Seq: 3, Hash: mustHead(t, strings.Join(lines[:3], ""))}, true},
		{"no anchor", full, Head{}, true},
		{"truncated", strings.Join(lines[:3], ""), head, false},
		{"wrong anchored record", full, Head{Seq: 5, Hash: strings.Repeat("1", 64)}, false},
		{"rewritten from the anchor", rewritten, head, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := VerifyHead(strings.NewReader(tc.log), tc.anchor)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func mustHead(t *testing.T, log string) string {
	t.Helper()
	if !strings.HasSuffix(log, "\n") {
		log += "\n"
	}
	h, err := Verify(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	return h.Hash
}

// TestOpen: a log file is resumed where it ended, and one edited behind
// gvmm's back is refused.
func TestOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	now := clock()
	for i := range 3 {
		l, err := Open(path, now)
		if err != nil {
			t.Fatal(err)
		}
		d := policy.Deny(policy.StagePrecheck, "authenticate", fmt.Errorf("request %d replayed: %w", i, policy.ErrReplay))
		r, err := l.Append(EventFor("h", "authenticate", nil, d))
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq != uint64(i+1) {
			t.Fatalf("seq %d after reopening %d times", r.Seq, i)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, bytes.Replace(b, []byte("request 1"), []byte("request 9"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, now); !errors.Is(err, ErrChain) {
		t.Fatalf("edited log opened: %v", err)
	}
}

func TestAppendConcurrent(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Head{}, nil)
	done := make(chan error)
	for range 4 {
		go func() {
			var err error
			for range 25 {
				if _, e := l.Append(Event{Kind: "migrate-in"}); e != nil {
					err = e
				}
			}
			done <- err
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if h, err := Verify(&buf); err != nil || h.Seq != 100 {
		t.Fatalf("head %+v, err %v", h, err)
	}
}

func BenchmarkAppend(b *testing.B) {
	var buf bytes.Buffer
	l := New(&buf, Head{}, nil)
	e := Event{Host: "h", Kind: "migrate-out", VM: "tom-vm", Decision: policy.Decision{Allow: true, Stage: policy.StageAttested, Rule: "owner v1 migrators role:owner", Reason: "ok"}}
	for b.Loop() {
		if _, err := l.Append(e); err != nil {
			b.Fatal(err)
		}
	}
}
