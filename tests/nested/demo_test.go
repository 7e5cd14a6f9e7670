package main

import (
	"strings"
	"testing"
)

// TestStoryResult: the demo's story passes only when its test ran and
// passed; a binary in which it did not run passes vacuously and must not.
func TestStoryResult(t *testing.T) {
	begin, end := markerBegin+storyPkg, markerEnd+storyPkg
	tests := []struct {
		name, out string
		ok        bool
	}{
		{"passed", begin + "\n=== RUN   TestPersonalCloud\n--- PASS: TestPersonalCloud (99.1s)\nPASS\n" + end + " rc=0", true},
		{"not run", begin + "\ntesting: warning: no tests to run\nPASS\n" + end + " rc=0", false},
		{"failed", begin + "\n--- FAIL: TestPersonalCloud (9.1s)\nFAIL\n" + end + " rc=1", false},
		{"skipped", begin + "\n--- SKIP: TestPersonalCloud (0.0s)\n" + end + " rc=0", false},
		{"unfinished", begin + "\n=== RUN   TestPersonalCloud", false},
		{"absent", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newConsoleParser()
			for _, l := range strings.Split(tt.out, "\n") {
				p.Line(l)
			}
			if err := storyResult(p); (err == nil) != tt.ok {
				t.Fatalf("storyResult = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
