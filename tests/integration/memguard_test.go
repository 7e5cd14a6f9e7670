package integration

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// guestOutput asks the guest shell for the output of a command, retrying
// until it matches re (a background program may not have written yet).
func guestOutput(t *testing.T, v *vm, off int, shell string, re *regexp.Regexp) ([]string, int) {
	t.Helper()
	deadline := time.Now().Add(commandTimeout)
	for {
		var out string
		out, off = v.ask(off, shell)
		if m := re.FindStringSubmatch(out); m != nil {
			return m, off
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q does not match %q", shell, out, re)
		}
		time.Sleep(time.Second)
	}
}

// violationLine is gvmm's log line for a refused access (log/slog text).
var violationLine = regexp.MustCompile(`msg="memguard: violation" region=(\d+) mode=(\w+) vcpu=\d+ gpa=(0x[0-9a-f]+) write=(true|false)`)

// TestMemguard protects application memory inside a Linux guest with two
// vCPUs: an owner writes a secret into a confidential region and reads it
// back (with gvmm's digest matching, and the pages wiped on unregister);
// another root process reading the owner's memory through /proc/PID/mem
// and process_vm_readv sees no secret; gvmm counts and logs those reads
// as violations at the region's guest-physical page; the owner still reads
// its secret afterwards and unregisters; hostile registrations are
// refused with their error codes; the guest carries on to power off.
func TestMemguard(t *testing.T) {
	env := requireKVM(t, true)
	v, off := bootVirtio(t, env, "--cpus", "2")

	out, off := v.ask(off, "memguard-guest roundtrip 2>&1 | tr '\\n' ' '")
	if !strings.Contains(out, "memguard roundtrip: ok") {
		t.Fatalf("roundtrip: %s", out)
	}
	t.Logf("guest: %s", out)
	out, off = v.ask(off, "memguard-guest roundtrip -mode integrity 2>&1 | tr '\\n' ' '")
	if !strings.Contains(out, "memguard roundtrip: ok") {
		t.Fatalf("integrity roundtrip: %s", out)
	}
	t.Logf("guest: %s", out)

	const secret = "gvmm-memguard-secret-4711"
	v.send("memguard-guest hold -secret " + secret + " >/tmp/hold.out 2>&1 &\n")
	m, off := guestOutput(t, v, off, "cat /tmp/hold.out | tr '\\n' ' '",
		regexp.MustCompile(`held (\d+) (0x[0-9a-f]+) (\d+) (\d+) (0x[0-9a-f]+)|FAIL.*`))
	if m[1] == "" {
		t.Fatalf("hold: %s", m[0])
	}
	pid, addr, region, gpa := m[1], m[2], m[4], m[5]
	t.Logf("owner pid %s holds %s at %s (region %s, guest-physical %s)", pid, secret, addr, region, gpa)

	before := len(violationLine.FindAllString(v.errors(), -1))
	out, off = v.ask(off, "memguard-guest peek -pid "+pid+" -addr "+addr+" -len 4096 -secret "+secret+" 2>&1 | tr '\\n' ' '")
	if !strings.Contains(out, "memguard peek: no secret") {
		t.Fatalf("peek: %s", out)
	}
	t.Logf("guest: %s", out)

	// The violations reach gvmm's log (stderr) before the peek returns.
	page, err := strconv.ParseUint(gpa, 0, 64)
	if err != nil {
		t.Fatal(err)
	}
	lines := violationLine.FindAllStringSubmatch(v.errors(), -1)
	if len(lines) <= before {
		t.Fatalf("no violation logged for the peek; gvmm stderr:\n%s", tail(v.errors(), 3000))
	}
	for _, l := range lines[before:] {
		a, _ := strconv.ParseUint(l[3], 0, 64)
		if l[1] != region || l[2] != "confidential" || l[4] != "false" || a&^0xfff != page {
			t.Errorf("violation %q: want a read of region %s at page %s", l[0], region, gpa)
		}
	}
	t.Logf("%d violations logged for the peek, first: %s", len(lines)-before, lines[before][0])

	v.send("kill -USR1 " + pid + "\n")
	m, off = guestOutput(t, v, off, "cat /tmp/hold.out | tr '\\n' ' '", regexp.MustCompile(`owner ok|FAIL.*`))
	if m[0] != "owner ok" {
		t.Fatalf("owner after the peek: %s", m[0])
	}
	v.send("kill -TERM " + pid + "\n")
	m, off = guestOutput(t, v, off, "cat /tmp/hold.out | tr '\\n' ' '", regexp.MustCompile(`memguard hold: ok|FAIL.*`))
	if m[0] != "memguard hold: ok" {
		t.Fatalf("owner at exit: %s", m[0])
	}

	out, off = v.ask(off, "{ memguard-guest hostile >/tmp/hostile.out 2>&1; echo rc=$? refused=$(grep -c refused /tmp/hostile.out); grep -v refused /tmp/hostile.out; } | tr '\\n' ' '")
	if !strings.HasPrefix(out, "rc=0") {
		t.Errorf("hostile registrations: %s", out)
	}
	t.Logf("guest: hostile: %s", out)
	if got, _ := v.ask(off, "expr 6 + 36"); got != "42" {
		t.Fatalf("guest answered %q after the memguard checks", got)
	}
	powerOff(t, v)
}
