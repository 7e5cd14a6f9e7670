package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Under nested KVM on TCG a Linux boot takes tens of seconds.
const (
	bootTimeout    = 4 * time.Minute
	commandTimeout = time.Minute
	exitTimeout    = time.Minute
	userspaceUp    = "gvmm-guest: userspace up"
	testCmdline    = "console=ttyS0 quiet"
)

type testEnv struct {
	bin, kernel, initrd string
}

// requireKVM returns the test environment or skips the test; with
// GVMM_REQUIRE_KVM=1 a missing piece fails it instead.
func requireKVM(t *testing.T, needGuest bool) testEnv {
	t.Helper()
	e := testEnv{bin: os.Getenv("GVMM_BIN"), kernel: os.Getenv("GVMM_GUEST_KERNEL"), initrd: os.Getenv("GVMM_GUEST_INITRD")}
	var missing []string
	if e.bin == "" {
		missing = append(missing, "GVMM_BIN")
	}
	if needGuest && (e.kernel == "" || e.initrd == "") {
		missing = append(missing, "GVMM_GUEST_KERNEL/GVMM_GUEST_INITRD")
	}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
		missing = append(missing, "/dev/kvm ("+err.Error()+")")
	} else {
		f.Close()
	}
	if len(missing) > 0 {
		msg := "needs " + strings.Join(missing, ", ") + "; run through `make test` (tests/nested)"
		if os.Getenv("GVMM_REQUIRE_KVM") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return e
}

// vm is a running `gvmm run` with its console on pipes.
type vm struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	mu     sync.Mutex
	out    bytes.Buffer // console output
	stderr bytes.Buffer
	grew   chan struct{}
	done   chan struct{}
	err    error // exit error, valid after done
}

func startVM(t *testing.T, bin string, args ...string) *vm {
	t.Helper()
	return startGvmm(t, bin, append([]string{"run"}, args...)...)
}

// startGvmm starts gvmm with args (a subcommand and its flags) with the
// guest console, if any, on pipes.
func startGvmm(t *testing.T, bin string, args ...string) *vm {
	t.Helper()
	return startGvmmOn(t, nil, bin, args...)
}

// startGvmmOn is startGvmm on a host of a lan (nil: in the test's own
// network namespace).
func startGvmmOn(t *testing.T, h *nsHost, bin string, args ...string) *vm {
	t.Helper()
	v := &vm{t: t, grew: make(chan struct{}, 1), done: make(chan struct{})}
	v.cmd = exec.Command(bin, args...)
	var err error
	if v.stdin, err = v.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := v.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	v.cmd.Stderr = &lockedWriter{v: v, w: &v.stderr}
	start := v.cmd.Start
	if h != nil {
		start = func() error { return h.Start(v.cmd) }
	}
	if err := start(); err != nil {
		t.Fatalf("start gvmm: %v", err)
	}
	t.Logf("started %s", strings.Join(v.cmd.Args, " "))
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := stdout.Read(buf)
			if n > 0 {
				v.mu.Lock()
				v.out.Write(buf[:n])
				v.mu.Unlock()
				select {
				case v.grew <- struct{}{}:
				default:
				}
			}
			if err != nil {
				break
			}
		}
		v.err = v.cmd.Wait()
		close(v.done)
	}()
	t.Cleanup(func() {
		select {
		case <-v.done:
		default:
			_ = v.cmd.Process.Kill()
			<-v.done
		}
		if t.Failed() {
			t.Logf("console output (tail):\n%s", tail(v.console(), 3000))
			t.Logf("gvmm stderr:\n%s", v.errors())
		}
	})
	return v
}

type lockedWriter struct {
	v *vm
	w io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.v.mu.Lock()
	defer l.v.mu.Unlock()
	return l.w.Write(p)
}

func (v *vm) console() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.out.String()
}

func (v *vm) errors() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stderr.String()
}

// waitFor waits until the console output after offset from matches re and
// returns the submatches and the offset after the match.
func (v *vm) waitFor(re *regexp.Regexp, from int, timeout time.Duration) ([]string, int) {
	v.t.Helper()
	deadline := time.After(timeout)
	for {
		out := v.console()
		if from > len(out) {
			from = len(out)
		}
		if loc := re.FindStringSubmatchIndex(out[from:]); loc != nil {
			m := make([]string, len(loc)/2)
			for i := range m {
				if loc[2*i] >= 0 {
					m[i] = out[from+loc[2*i] : from+loc[2*i+1]]
				}
			}
			return m, from + loc[1]
		}
		select {
		case <-v.grew:
		case <-v.done:
			// One last look after the process ended.
			out := v.console()
			if re.MatchString(out[from:]) {
				continue
			}
			v.t.Fatalf("gvmm exited (%v) before the console showed %q", v.err, re)
		case <-deadline:
			v.t.Fatalf("console did not show %q within %v", re, timeout)
		}
	}
}

func (v *vm) send(s string) {
	v.t.Helper()
	if _, err := io.WriteString(v.stdin, s); err != nil {
		v.t.Fatalf("write to console: %v", err)
	}
}

// wait waits for gvmm to exit and returns its status.
func (v *vm) wait(timeout time.Duration) int {
	v.t.Helper()
	select {
	case <-v.done:
	case <-time.After(timeout):
		v.t.Fatalf("gvmm did not exit within %v", timeout)
	}
	var ee *exec.ExitError
	if errors.As(v.err, &ee) {
		return ee.ExitCode()
	}
	if v.err != nil {
		v.t.Fatalf("gvmm: %v", v.err)
	}
	return 0
}

// ask types a shell command whose answer is framed by a unique marker and
// returns the answer.
func (v *vm) ask(from int, shell string) (string, int) {
	v.t.Helper()
	mark := fmt.Sprintf("Q%06d", time.Now().UnixNano()%1000000)
	// The typed line is echoed with the marker split by quotes
	// (Q1""23456-), so only the shell's answer matches the marker.
	v.send(fmt.Sprintf("echo \"%s\"\"%s-$(%s)-END\"\n", mark[:2], mark[2:], shell))
	m, off := v.waitFor(regexp.MustCompile(mark+`-([^\n]*?)-END`), from, commandTimeout)
	return strings.TrimSpace(m[1]), off
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// TestBootLinux boots the Debian kernel to userspace with 1 and 2 vCPUs,
// checks the guest sees the CPUs and memory it was given, talks to its
// shell over the serial console, and ends it by poweroff and by reboot:
// both end gvmm with status 0.
func TestBootLinux(t *testing.T) {
	env := requireKVM(t, true)
	tests := []struct {
		name   string
		cpus   int
		memMiB int
		end    string
	}{
		{"1cpu-poweroff", 1, 256, "poweroff"},
		{"2cpu-reboot", 2, 384, "reboot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			v := startVM(t, env.bin, "--kernel", env.kernel, "--initrd", env.initrd,
				"--memory", fmt.Sprintf("%dM", tt.memMiB), "--cpus", fmt.Sprint(tt.cpus),
				"--cmdline", testCmdline)
			_, off := v.waitFor(regexp.MustCompile(regexp.QuoteMeta(userspaceUp)), 0, bootTimeout)
			t.Logf("guest userspace after %v", time.Since(start).Round(time.Millisecond))
			_, off = v.waitFor(regexp.MustCompile(`guest# `), off, commandTimeout)

			nproc, off := v.ask(off, "nproc")
			if nproc != fmt.Sprint(tt.cpus) {
				t.Errorf("guest nproc = %q, want %d", nproc, tt.cpus)
			}
			online, off := v.ask(off, "cat /sys/devices/system/cpu/online")
			wantOnline := "0"
			if tt.cpus > 1 {
				wantOnline = fmt.Sprintf("0-%d", tt.cpus-1)
			}
			if online != wantOnline {
				t.Errorf("guest online CPUs = %q, want %q", online, wantOnline)
			}
			memKiB, off := v.ask(off, "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2")
			var kib int
			if _, err := fmt.Sscan(memKiB, &kib); err != nil {
				t.Fatalf("MemTotal answer %q: %v", memKiB, err)
			}
			// MemTotal is RAM less what the kernel reserves for itself.
			if max := tt.memMiB * 1024; kib > max || kib < max*3/4 {
				t.Errorf("guest MemTotal = %d KiB, want between %d and %d", kib, max*3/4, max)
			}
			sum, off := v.ask(off, "expr 6 \\* 7")
			if sum != "42" {
				t.Errorf("guest shell computed %q, want 42", sum)
			}
			_ = off
			v.send(tt.end + "\n")
			if code := v.wait(exitTimeout); code != 0 {
				t.Fatalf("gvmm exited with %d after guest %s, want 0; stderr: %s", code, tt.end, v.errors())
			}
		})
	}
}

// TestRebootRestart checks --on-reboot=restart boots the guest again.
func TestRebootRestart(t *testing.T) {
	env := requireKVM(t, true)
	v := startVM(t, env.bin, "--kernel", env.kernel, "--initrd", env.initrd,
		"--memory", "256M", "--on-reboot", "restart", "--cmdline", testCmdline)
	up := regexp.MustCompile(regexp.QuoteMeta(userspaceUp))
	_, off := v.waitFor(up, 0, bootTimeout)
	_, off = v.waitFor(regexp.MustCompile(`guest# `), off, commandTimeout)
	v.send("reboot\n")
	_, off = v.waitFor(up, off, bootTimeout)
	_, _ = v.waitFor(regexp.MustCompile(`guest# `), off, commandTimeout)
	v.send("poweroff\n")
	if code := v.wait(exitTimeout); code != 0 {
		t.Fatalf("gvmm exited with %d, want 0", code)
	}
}

// TestGuestFailures runs synthetic kernels that fail in the ways a VMM must
// report: each ends gvmm with a non-zero status and a message naming the
// cause, never a hang.
func TestGuestFailures(t *testing.T) {
	env := requireKVM(t, false)
	tests := []struct {
		name string
		code []byte
		want string
	}{
		{"triple fault", codeTripleFault, "triple fault"},
		{"emulation failure", codeExecMMIO, "KVM internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kernel := writeKernel(t, tt.code)
			ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, env.bin, "run", "--kernel", kernel, "--memory", "128M")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			if ctx.Err() != nil {
				t.Fatalf("gvmm hung on a %s", tt.name)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("gvmm returned %v, want a non-zero status; stderr %q", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("stderr %q does not name the cause %q", stderr.String(), tt.want)
			}
			t.Logf("gvmm said: %s", strings.TrimSpace(stderr.String()))
		})
	}
	t.Run("power off", func(t *testing.T) {
		kernel := writeKernel(t, codePowerOff)
		ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, env.bin, "run", "--kernel", kernel, "--memory", "128M").CombinedOutput()
		if err != nil {
			t.Fatalf("gvmm: %v: %s", err, out)
		}
	})
}
