package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gvmm/gvmm/api"
	"github.com/gvmm/gvmm/migration/gate"
	"github.com/gvmm/gvmm/tpm"
)

// syncBuffer is a bytes.Buffer safe for a subprocess's writer and a
// reading test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cliEnv is two hosts set up through the commands migration/gate's
// doc.go promises, each with its own fixed-seed simulated TPM: A (the VM's
// host; its commands run in this process, where gvmm is this test binary)
// and B (the destination; a built gvmm, run from binB).
type cliEnv struct {
	t          *testing.T
	dir        string
	A, B       string
	binB       string
	aID, bID   string
	tomID      string
	recvStderr *syncBuffer
	addr       string
}

const cliURIA, cliURIB = "sim?insecure-fixed-seed=101", "sim?insecure-fixed-seed=202"

func (c *cliEnv) p(name string) string { return filepath.Join(c.dir, name) }

// ok runs gvmm in this process (host A's gvmm).
func (c *cliEnv) ok(args ...string) string {
	c.t.Helper()
	code, out, stderr := runGVMM(c.t, args...)
	if code != 0 {
		c.t.Fatalf("gvmm %s: status %d\n%s", strings.Join(args, " "), code, stderr)
	}
	return out
}

// onB runs host B's gvmm.
func (c *cliEnv) onB(args ...string) string {
	c.t.Helper()
	var out, stderr bytes.Buffer
	cmd := exec.Command(c.binB, args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("gvmm (B) %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out.String()
}

func (c *cliEnv) write(name, content string) string {
	if err := os.WriteFile(c.p(name), []byte(content), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return c.p(name)
}

// newCLIEnv sets up users, both hosts, the directory, A's enrollment of
// B, Tom's VM policy on A (accepting the gvmm build "want") and B's
// migrate-in policy. B runs the build in file binB; with an approver, B
// is sealed to it (PolicyAuthorize) and approves, offline, each of
// approved.
func newCLIEnv(t *testing.T, binB string, want []byte, approved ...string) *cliEnv {
	c := &cliEnv{t: t, dir: filepath.Dir(binB), binB: binB}
	c.A, c.B = c.p("A"), c.p("B")
	ok, onB, p := c.ok, c.onB, c.p

	// Users.
	for _, u := range []struct{ key, name, roles string }{{"tom", "Tom", "user"}, {"bob", "Bob", "user"}, {"it", "IT", "admin"}} {
		ok("policy", "keygen", "-out", p(u.key+".key"))
		ok("policy", "principal", "--key", p(u.key+".key"), "--name", u.name, "--roles", u.roles, "--out", p(u.key+".principal.json"))
	}
	c.tomID = strings.TrimSpace(ok("policy", "id", "--key", p("tom.key")))

	// Hosts, each its own TPM.
	ok("host", "init", "--state", c.A, "--tpm", cliURIA)
	if len(approved) > 0 {
		_, key, pub := newApprovalKey(t, c.dir, "it-approver", false)
		onB("host", "init", "--state", c.B, "--tpm", cliURIB, "--approver", pub)
		for _, exe := range approved {
			ok("host", "approve", "--key", key, "--state", c.B, "--executable", exe)
		}
	} else {
		onB("host", "init", "--state", c.B, "--tpm", cliURIB)
	}
	c.aID = strings.TrimSpace(ok("policy", "--state", c.A, "--tpm", cliURIA, "hostkey", "--name", "laptop", "--groups", "tom-devices", "--owner", c.tomID, "--out", p("laptop.principal.json")))
	c.bID = strings.TrimSpace(onB("policy", "--state", c.B, "--tpm", cliURIB, "hostkey", "--name", "desktop", "--groups", "tom-devices", "--owner", c.tomID, "--out", p("desktop.principal.json")))
	if got := strings.TrimSpace(ok("policy", "id", "--principal", p("desktop.principal.json"))); got != c.bID {
		t.Fatalf("policy id of desktop's entry %q, hostkey printed %q", got, c.bID)
	}
	ok("policy", "directory", "--out", p("dir.json"), p("tom.principal.json"), p("bob.principal.json"), p("it.principal.json"),
		p("laptop.principal.json"), p("desktop.principal.json"))
	ok("policy", "--state", c.A, "--tpm", cliURIA, "init", "--directory", p("dir.json"))
	onB("policy", "--state", c.B, "--tpm", cliURIB, "init", "--directory", p("dir.json"))

	// A enrolls B.
	if err := os.MkdirAll(filepath.Join(c.A, "enrolled"), 0o700); err != nil {
		t.Fatal(err)
	}
	ok("enroll", "challenge", "--verifier-dir", filepath.Join(c.A, "verifier"), "--host-identity", filepath.Join(c.B, "identity.json"), "--out", p("ch.json"))
	onB("enroll", "activate", "--tpm", cliURIB, "--state", c.B, "--challenge", p("ch.json"), "--out", p("resp.json"))
	ok("enroll", "finish", "--verifier-dir", filepath.Join(c.A, "verifier"), "--response", p("resp.json"), "--out", filepath.Join(c.A, "enrolled", "B.json"))

	// Tom's VM policy on A: his devices, running the build want.
	d := sha256.Sum256(want)
	c.write("owner.json", fmt.Sprintf(`{"vm":"tom-vm","version":1,"owner":%q,"rules":{"migrators":["role:owner"],`+
		`"destinations":["group:tom-devices"],"min_trust":"software-tpm","measurements":[{"executable_sha256":%q,"version":"v2"}]}}`,
		c.tomID, hex.EncodeToString(d[:])))
	ok("policy", "sign", "-key", p("tom.key"), "-type", "owner", "-in", p("owner.json"), "-out", p("owner.signed.json"))
	ok("policy", "bundle", "-owner", p("owner.signed.json"), "-out", p("vm-policy.json"))
	ok("policy", "request", "-key", p("tom.key"), "-action", "set-vm-policy", "-audience", c.aID, "-vm", "tom-vm", "-document", p("vm-policy.json"), "-out", p("set.json"))
	ok("policy", "--state", c.A, "--tpm", cliURIA, "set", "-request", p("set.json"), "-policy", p("vm-policy.json"))
	if out := ok("policy", "--state", c.A, "--tpm", cliURIA, "show", "-vm", "tom-vm"); !strings.Contains(out, `"vm": "tom-vm"`) {
		t.Fatalf("policy show: %s", out)
	}

	// B's migrate-in policy, set by its owner.
	c.write("hostpol.json", fmt.Sprintf(`{"host":%q,"version":1,"accept_owners":[%q],"accept_sources":["group:tom-devices"]}`, c.bID, c.tomID))
	ok("policy", "sign", "-key", p("tom.key"), "-type", "host", "-in", p("hostpol.json"), "-out", p("hostpol.signed.json"))
	ok("policy", "request", "-key", p("tom.key"), "-action", "set-host-policy", "-audience", c.bID, "-document", p("hostpol.signed.json"), "-out", p("r.json"))
	onB("policy", "--state", c.B, "--tpm", cliURIB, "set", "-request", p("r.json"), "-host-policy", p("hostpol.signed.json"))
	return c
}

// receive starts "gvmm receive" on B and waits until it listens.
func (c *cliEnv) receive(extra ...string) {
	t := c.t
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = l.Addr().String()
	l.Close()
	c.recvStderr = &syncBuffer{}
	recv := exec.Command(c.binB, append([]string{"receive", "--listen", c.addr, "--state", c.B, "--tpm", cliURIB}, extra...)...)
	recv.Stderr = c.recvStderr
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { recv.Wait(); close(exited) }()
	t.Cleanup(func() { recv.Process.Kill(); <-exited })
	c.waitReceive("opened its sealed state", exited)
}

func (c *cliEnv) waitReceive(want string, exited chan struct{}) {
	c.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(c.recvStderr.String(), want); time.Sleep(50 * time.Millisecond) {
		select {
		case <-exited:
			c.t.Fatalf("gvmm receive exited: %s", c.recvStderr.String())
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("gvmm receive did not say %q: %s", want, c.recvStderr.String())
		}
	}
}

// migrate does what gvmm migrate asks the VM process to do, up to the
// released key, for user's signed request.
func (c *cliEnv) migrate(user string, retries int) ([]string, *api.Handshake, error) {
	c.ok("policy", "request", "-key", c.p(user+".key"), "-action", "migrate", "-audience", c.aID, "-vm", "tom-vm", "-destination", c.bID, "-out", c.p(user+"-mig.json"))
	b, err := os.ReadFile(c.p(user + "-mig.json"))
	if err != nil {
		c.t.Fatal(err)
	}
	var steps []string
	req := api.MigrateRequest{To: c.addr, Request: b, State: c.A, TPM: cliURIA, RemediationRetries: retries, RetryDelayMs: 300}
	key, hs, err := gateOut(context.Background(), req, func(s string) { steps = append(steps, s) }, nil, slog.New(slog.DiscardHandler))
	if key != nil {
		key.Destroy()
	}
	return steps, hs, err
}

func buildGVMM(t *testing.T, path string) []byte {
	t.Helper()
	if out, err := exec.Command("go", "build", "-o", path, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGateCLIContract: Bob's request is refused on A; Tom's is allowed,
// against "gvmm receive" on B in another process; both audit logs hold
// the decisions.
func TestGateCLIContract(t *testing.T) {
	if !tpm.SimulatorAvailable {
		t.Skip(tpm.ErrSimulatorNeedsCgo.Error())
	}
	bin := filepath.Join(t.TempDir(), "gvmm")
	exe := buildGVMM(t, bin)
	c := newCLIEnv(t, bin, exe)
	c.receive()

	steps, _, err := c.migrate("bob", 0)
	var r *gate.RefusedError
	if !errors.As(err, &r) || !strings.Contains(r.Decision.Rule, "migrators") {
		t.Fatalf("Bob's request: %v (steps %q)", err, steps)
	}
	steps, hs, err := c.migrate("tom", 0)
	if err != nil {
		t.Fatalf("Tom's request: %v\nsteps: %q\nreceive: %s", err, steps, c.recvStderr.String())
	}
	all := strings.Join(steps, "\n")
	for _, want := range []string{"requester authenticated: Tom", "policy pre-check allowed by rule", "destination attested: desktop",
		"at level software-tpm", "policy allowed by rule", "key released to desktop", "handshake"} {
		if !strings.Contains(all, want) {
			t.Errorf("steps lack %q:\n%s", want, all)
		}
	}
	if hs.Trust != "software-tpm" || hs.Destination != "desktop" || hs.TotalMs <= 0 || hs.Attempts != 1 {
		t.Errorf("handshake %+v", hs)
	}
	c.waitReceive("migrate-in allowed", nil)

	auditA := c.ok("policy", "--state", c.A, "audit")
	for _, want := range []string{"migrate-out DENY (pre-attestation) rule owner v1 migrators", "migrate-out ALLOW (attested)", "migrate-in ALLOW", "audit chain verified"} {
		if !strings.Contains(auditA, want) {
			t.Errorf("A's audit lacks %q:\n%s", want, auditA)
		}
	}
	if auditB := c.onB("policy", "--state", c.B, "audit"); !strings.Contains(auditB, "migrate-in ALLOW (attested)") {
		t.Errorf("B's audit:\n%s", auditB)
	}
}

// TestGateCLIRemediation: B runs an outdated gvmm; A refuses it, naming
// the build it needs; B's --update-cmd installs that build (approved
// offline for B's sealed store) and B starts again, measured afresh; A's
// retry of the same request gets the key.
func TestGateCLIRemediation(t *testing.T) {
	if !tpm.SimulatorAvailable {
		t.Skip(tpm.ErrSimulatorNeedsCgo.Error())
	}
	dir := t.TempDir()
	v1 := filepath.Join(dir, "gvmm")
	exe := buildGVMM(t, v1)
	// v2 is another build: the same program with different bytes (an ELF
	// file runs with data appended).
	v2 := filepath.Join(dir, "gvmm-v2")
	v2exe := append(append([]byte{}, exe...), "\ngvmm v2\n"...)
	if err := os.WriteFile(v2, v2exe, 0o755); err != nil {
		t.Fatal(err)
	}
	c := newCLIEnv(t, v1, v2exe, v1, v2)
	c.receive("--update-cmd", fmt.Sprintf(`cp %s "$GVMM_EXECUTABLE.new" && mv "$GVMM_EXECUTABLE.new" "$GVMM_EXECUTABLE"`, v2))

	steps, hs, err := c.migrate("tom", 20)
	if err != nil {
		t.Fatalf("Tom's request: %v\nsteps: %q\nreceive: %s", err, steps, c.recvStderr.String())
	}
	all := strings.Join(steps, "\n")
	for _, want := range []string{"destination must update", "retrying", "key released to desktop"} {
		if !strings.Contains(all, want) {
			t.Errorf("steps lack %q:\n%s", want, all)
		}
	}
	if hs.Attempts < 2 {
		t.Errorf("handshake %+v", hs)
	}
	c.waitReceive("migrate-in allowed", nil)
	for _, want := range []string{"refused by the source", "required: gvmm v2", "running the update command", "starting again"} {
		if !strings.Contains(c.recvStderr.String(), want) {
			t.Errorf("receive's output lacks %q:\n%s", want, c.recvStderr.String())
		}
	}
	auditB := c.onB("policy", "--state", c.B, "audit")
	for _, want := range []string{"migrate-out DENY (attested) rule owner v1 measurements", "migrate-in ALLOW (attested)"} {
		if !strings.Contains(auditB, want) {
			t.Errorf("B's audit lacks %q:\n%s", want, auditB)
		}
	}
}
