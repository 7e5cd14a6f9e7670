package main

import (
	"context"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestStream(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	tests := []struct {
		name             string
		script           string
		timeout, silence time.Duration
		alive            func() time.Time
		lines            []string // shown lines
		anyLines         bool     // do not check the lines
		silent, timedOut bool
		exitErr          bool
	}{{
		name:    "lines and exit status",
		script:  "echo one; printf 'two\\r\\n'; echo err >&2; printf tail; exit 3",
		timeout: 10 * time.Second, silence: 5 * time.Second,
		lines:   []string{"one", "two", "err", "tail"},
		exitErr: true,
	}, {
		name:    "silence kills the whole group",
		script:  "echo start; sleep 30 & sleep 30",
		timeout: 20 * time.Second, silence: 1500 * time.Millisecond,
		lines:  []string{"start"},
		silent: true, exitErr: true,
	}, {
		name:    "stall reports are no sign of life",
		script:  "echo start; while :; do echo '[  100.6] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [gvmm:182]'; sleep 0.3; done",
		timeout: 20 * time.Second, silence: 1500 * time.Millisecond,
		anyLines: true, silent: true, exitErr: true,
	}, {
		name:    "a long soft lockup is a wedge even with heartbeats",
		script:  "echo start; while :; do echo '[  400.1] watchdog: BUG: soft lockup - CPU#1 stuck for 257s! [gvmm:780]'; sleep 0.3; done",
		timeout: 20 * time.Second, silence: 200 * time.Second,
		alive:    func() time.Time { return time.Now() },
		anyLines: true, silent: true, exitErr: true,
	}, {
		name:    "a short soft lockup is not",
		script:  "echo '[  100.1] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [gvmm:780]'; sleep 2",
		timeout: 20 * time.Second, silence: 200 * time.Second,
		alive: func() time.Time { return time.Now() },
		lines: []string{"[  100.1] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [gvmm:780]"},
	}, {
		name:    "heartbeats keep it alive until the timeout",
		script:  "sleep 30",
		timeout: 2500 * time.Millisecond, silence: 1500 * time.Millisecond,
		alive:    func() time.Time { return time.Now() },
		timedOut: true, exitErr: true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var shown []string
			start := time.Now()
			out := stream(context.Background(), newProgress(io.Discard), exec.Command("sh", "-c", tt.script),
				tt.timeout, tt.silence, tt.alive, func(s string) bool {
					shown = append(shown, s)
					return true
				})
			if el := time.Since(start); el > tt.timeout+killGrace/2 {
				t.Errorf("took %v", el)
			}
			if !tt.anyLines && !slices.Equal(shown, tt.lines) && !(len(shown) == 0 && len(tt.lines) == 0) {
				t.Errorf("lines %q, want %q", shown, tt.lines)
			}
			if out.silent != tt.silent || out.timedOut != tt.timedOut || (out.err != nil) != tt.exitErr {
				t.Errorf("outcome %+v, want silent=%v timedOut=%v exitErr=%v", out, tt.silent, tt.timedOut, tt.exitErr)
			}
		})
	}
}

func TestL1Args(t *testing.T) {
	a := strings.Join(l1Config{kernel: "K", initrd: "I", memMiB: 4096, cpus: 2}.args(), " ")
	for _, want := range []string{"-accel tcg", "-cpu EPYC,+svm", "-m 4096", "-smp 2", "-no-reboot", "-kernel K", "-initrd I", "-serial stdio"} {
		if !strings.Contains(a, want) {
			t.Errorf("args %q lack %q", a, want)
		}
	}
	if !strings.HasSuffix(a, "-serial stdio") {
		t.Errorf("args %q: the console is not last, with no heartbeat port", a)
	}
	hb := strings.Join(l1Config{heartbeat: "/x/hb"}.args(), " ")
	if !strings.HasSuffix(hb, "-serial stdio -serial file:/x/hb") {
		t.Errorf("args %q: ttyS0 must be the console, ttyS1 the heartbeat", hb)
	}
	ia := l1Config{interactive: true}.args()
	if ia[len(ia)-1] != "mon:stdio" {
		t.Errorf("interactive args end in %q", ia[len(ia)-1])
	}
}

func TestParseQEMUMajor(t *testing.T) {
	for _, tc := range []struct {
		out    string
		major  int
		params string
		bad    bool
	}{
		{out: "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n", major: 7, params: "kvm_amd.npt=0"},
		{out: "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n", major: 10, params: ""},
		{out: "QEMU emulator version 11.1.0\n", major: 11, params: ""},
		{out: "qemu-system-x86_64: unknown option\n", bad: true},
		{out: "", bad: true},
	} {
		major, err := parseQEMUMajor(tc.out)
		if tc.bad {
			if err == nil {
				t.Errorf("parseQEMUMajor(%q) = %d, want an error", tc.out, major)
			}
			continue
		}
		if err != nil || major != tc.major {
			t.Errorf("parseQEMUMajor(%q) = %d, %v; want %d", tc.out, major, err, tc.major)
			continue
		}
		if got := autoKVMParams(major); got != tc.params {
			t.Errorf("autoKVMParams(%d) = %q, want %q", major, got, tc.params)
		}
	}
}
