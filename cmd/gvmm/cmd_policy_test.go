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

// TestGateCLIContract drives the command sequence migration/gate's doc.go
// promises, on two hosts with separate fixed-seed simulated TPMs, up to
// the released key (the VM itself needs KVM): users, host keys, the
// directory, enrollment, a signed VM policy and migrate-in policy, Bob's
// refused request, Tom's allowed one against a "gvmm receive" in another
// process, and both audit logs. Host A's commands run in this process
// (gvmm is this test binary there), host B's in a built gvmm.
func TestGateCLIContract(t *testing.T) {
	if !tpm.SimulatorAvailable {
		t.Skip(tpm.ErrSimulatorNeedsCgo.Error())
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "gvmm")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	A, B := p("A"), p("B")
	const uriA, uriB = "sim?insecure-fixed-seed=101", "sim?insecure-fixed-seed=202"
	ok := func(args ...string) string {
		t.Helper()
		code, out, stderr := runGVMM(t, args...)
		if code != 0 {
			t.Fatalf("gvmm %s: status %d\n%s", strings.Join(args, " "), code, stderr)
		}
		return out
	}
	onB := func(args ...string) string {
		t.Helper()
		var out, stderr bytes.Buffer
		c := exec.Command(bin, args...)
		c.Stdout, c.Stderr = &out, &stderr
		if err := c.Run(); err != nil {
			t.Fatalf("gvmm (B) %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return out.String()
	}
	write := func(name, content string) string {
		if err := os.WriteFile(p(name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p(name)
	}

	// Users.
	for _, u := range []struct{ key, name, roles string }{{"tom", "Tom", "user"}, {"bob", "Bob", "user"}, {"it", "IT", "admin"}} {
		ok("policy", "keygen", "-out", p(u.key+".key"))
		ok("policy", "principal", "--key", p(u.key+".key"), "--name", u.name, "--roles", u.roles, "--out", p(u.key+".principal.json"))
	}
	tomID := strings.TrimSpace(ok("policy", "id", "--key", p("tom.key")))

	// Hosts: A (this binary) and B (the built gvmm), each its own TPM.
	ok("host", "init", "--state", A, "--tpm", uriA)
	onB("host", "init", "--state", B, "--tpm", uriB)
	aID := strings.TrimSpace(ok("policy", "--state", A, "--tpm", uriA, "hostkey", "--name", "laptop", "--groups", "tom-devices", "--owner", tomID, "--out", p("laptop.principal.json")))
	bID := strings.TrimSpace(onB("policy", "--state", B, "--tpm", uriB, "hostkey", "--name", "desktop", "--groups", "tom-devices", "--owner", tomID, "--out", p("desktop.principal.json")))
	if got := strings.TrimSpace(ok("policy", "id", "--principal", p("desktop.principal.json"))); got != bID {
		t.Fatalf("policy id of desktop's entry %q, hostkey printed %q", got, bID)
	}
	ok("policy", "directory", "--out", p("dir.json"), p("tom.principal.json"), p("bob.principal.json"), p("it.principal.json"),
		p("laptop.principal.json"), p("desktop.principal.json"))
	ok("policy", "--state", A, "--tpm", uriA, "init", "--directory", p("dir.json"))
	onB("policy", "--state", B, "--tpm", uriB, "init", "--directory", p("dir.json"))

	// A enrolls B.
	if err := os.MkdirAll(filepath.Join(A, "enrolled"), 0o700); err != nil {
		t.Fatal(err)
	}
	ok("enroll", "challenge", "--verifier-dir", filepath.Join(A, "verifier"), "--host-identity", filepath.Join(B, "identity.json"), "--out", p("ch.json"))
	onB("enroll", "activate", "--tpm", uriB, "--state", B, "--challenge", p("ch.json"), "--out", p("resp.json"))
	ok("enroll", "finish", "--verifier-dir", filepath.Join(A, "verifier"), "--response", p("resp.json"), "--out", filepath.Join(A, "enrolled", "B.json"))

	// Tom's VM policy on A: his devices, running the gvmm B runs.
	exe, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(exe)
	write("owner.json", fmt.Sprintf(`{"vm":"tom-vm","version":1,"owner":%q,"rules":{"migrators":["role:owner"],`+
		`"destinations":["group:tom-devices"],"min_trust":"software-tpm","measurements":[{"executable_sha256":%q,"version":"v2"}]}}`,
		tomID, hex.EncodeToString(d[:])))
	ok("policy", "sign", "-key", p("tom.key"), "-type", "owner", "-in", p("owner.json"), "-out", p("owner.signed.json"))
	ok("policy", "bundle", "-owner", p("owner.signed.json"), "-out", p("vm-policy.json"))
	ok("policy", "request", "-key", p("tom.key"), "-action", "set-vm-policy", "-audience", aID, "-vm", "tom-vm", "-document", p("vm-policy.json"), "-out", p("set.json"))
	ok("policy", "--state", A, "--tpm", uriA, "set", "-request", p("set.json"), "-policy", p("vm-policy.json"))
	if out := ok("policy", "--state", A, "--tpm", uriA, "show", "-vm", "tom-vm"); !strings.Contains(out, `"vm": "tom-vm"`) {
		t.Fatalf("policy show: %s", out)
	}

	// B's migrate-in policy, set by its owner.
	write("hostpol.json", fmt.Sprintf(`{"host":%q,"version":1,"accept_owners":[%q],"accept_sources":["group:tom-devices"]}`, bID, tomID))
	ok("policy", "sign", "-key", p("tom.key"), "-type", "host", "-in", p("hostpol.json"), "-out", p("hostpol.signed.json"))
	ok("policy", "request", "-key", p("tom.key"), "-action", "set-host-policy", "-audience", bID, "-document", p("hostpol.signed.json"), "-out", p("r.json"))
	onB("policy", "--state", B, "--tpm", uriB, "set", "-request", p("r.json"), "-host-policy", p("hostpol.signed.json"))

	// gvmm receive on B.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var recvErr syncBuffer
	recv := exec.Command(bin, "receive", "--listen", addr, "--state", B, "--tpm", uriB)
	recv.Stderr = &recvErr
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { recv.Wait(); close(exited) }()
	t.Cleanup(func() { recv.Process.Kill(); <-exited })
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(recvErr.String(), "opened its sealed state"); time.Sleep(50 * time.Millisecond) {
		select {
		case <-exited:
			t.Fatalf("gvmm receive exited: %s", recvErr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("gvmm receive did not start: %s", recvErr.String())
		}
	}

	// What gvmm migrate asks the VM process to do, up to the key.
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	migrate := func(user string) ([]string, *api.Handshake, error) {
		ok("policy", "request", "-key", p(user+".key"), "-action", "migrate", "-audience", aID, "-vm", "tom-vm", "-destination", bID, "-out", p(user+"-mig.json"))
		b, err := os.ReadFile(p(user + "-mig.json"))
		if err != nil {
			t.Fatal(err)
		}
		var steps []string
		key, hs, err := gateOut(ctx, api.MigrateRequest{To: addr, Request: b, State: A, TPM: uriA}, func(s string) { steps = append(steps, s) }, log)
		if key != nil {
			key.Destroy()
		}
		return steps, hs, err
	}
	steps, _, err := migrate("bob")
	var r *gate.RefusedError
	if !errors.As(err, &r) || !strings.Contains(r.Decision.Rule, "migrators") {
		t.Fatalf("Bob's request: %v (steps %q)", err, steps)
	}
	steps, hs, err := migrate("tom")
	if err != nil {
		t.Fatalf("Tom's request: %v\nsteps: %q\nreceive: %s", err, steps, recvErr.String())
	}
	all := strings.Join(steps, "\n")
	for _, want := range []string{"requester authenticated: Tom", "policy pre-check allowed by rule", "destination attested: desktop",
		"at level software-tpm", "policy allowed by rule", "key released to desktop", "handshake"} {
		if !strings.Contains(all, want) {
			t.Errorf("steps lack %q:\n%s", want, all)
		}
	}
	if hs.Trust != "software-tpm" || hs.Destination != "desktop" || hs.TotalMs <= 0 {
		t.Errorf("handshake %+v", hs)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(recvErr.String(), "migrate-in allowed"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("receive did not report the decision: %s", recvErr.String())
		}
	}

	// Both audit logs hold the decisions.
	auditA := ok("policy", "--state", A, "audit")
	for _, want := range []string{"migrate-out DENY (pre-attestation) rule owner v1 migrators", "migrate-out ALLOW (attested)", "migrate-in ALLOW", "audit chain verified"} {
		if !strings.Contains(auditA, want) {
			t.Errorf("A's audit lacks %q:\n%s", want, auditA)
		}
	}
	if auditB := onB("policy", "--state", B, "audit"); !strings.Contains(auditB, "migrate-in ALLOW (attested)") {
		t.Errorf("B's audit:\n%s", auditB)
	}
}
