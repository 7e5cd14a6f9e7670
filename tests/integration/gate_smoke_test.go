package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestGatedMigrationSmoke moves a running guest between two hosts of one
// machine, each with its own fixed-seed simulated TPM and state, through
// the attestation-gated flow and the commands of migration/gate's doc.go:
// Bob's request is refused (exit 3) and the guest runs on; Tom's is
// allowed, attested, and the guest arrives intact.
func TestGatedMigrationSmoke(t *testing.T) {
	env := requireKVM(t, true)
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	A, B := p("A"), p("B")
	const uriA, uriB = "sim?insecure-fixed-seed=11", "sim?insecure-fixed-seed=22"
	ok := func(args ...string) string {
		t.Helper()
		out, code := gvmmCmd(t, env.bin, time.Minute, args...)
		if code != 0 {
			t.Fatalf("gvmm %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}
	// gvmmCmd merges stderr; the ids are the last line of stdout.
	lastLine := func(s string) string {
		ls := strings.Split(strings.TrimSpace(s), "\n")
		return strings.TrimSpace(ls[len(ls)-1])
	}
	write := func(n, s string) {
		if err := os.WriteFile(p(n), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []struct{ key, name, roles string }{{"tom", "Tom", "user"}, {"bob", "Bob", "user"}, {"it", "IT", "admin"}} {
		ok("policy", "keygen", "-out", p(u.key+".key"))
		ok("policy", "principal", "--key", p(u.key+".key"), "--name", u.name, "--roles", u.roles, "--out", p(u.key+".principal.json"))
	}
	tom := lastLine(ok("policy", "id", "--key", p("tom.key")))
	ok("host", "init", "--state", A, "--tpm", uriA)
	ok("host", "init", "--state", B, "--tpm", uriB)
	aID := lastLine(ok("policy", "--state", A, "--tpm", uriA, "hostkey", "--name", "laptop", "--groups", "tom-devices", "--owner", tom, "--out", p("a.json")))
	bID := lastLine(ok("policy", "--state", B, "--tpm", uriB, "hostkey", "--name", "desktop", "--groups", "tom-devices", "--owner", tom, "--out", p("b.json")))
	ok("policy", "directory", "--out", p("dir.json"), p("tom.principal.json"), p("bob.principal.json"), p("it.principal.json"), p("a.json"), p("b.json"))
	ok("policy", "--state", A, "--tpm", uriA, "init", "--directory", p("dir.json"))
	ok("policy", "--state", B, "--tpm", uriB, "init", "--directory", p("dir.json"))
	if err := os.MkdirAll(filepath.Join(A, "enrolled"), 0o700); err != nil {
		t.Fatal(err)
	}
	ok("enroll", "challenge", "--verifier-dir", filepath.Join(A, "verifier"), "--host-identity", filepath.Join(B, "identity.json"), "--out", p("ch.json"))
	ok("enroll", "activate", "--tpm", uriB, "--state", B, "--challenge", p("ch.json"), "--out", p("resp.json"))
	ok("enroll", "finish", "--verifier-dir", filepath.Join(A, "verifier"), "--response", p("resp.json"), "--out", filepath.Join(A, "enrolled", "B.json"))
	exe, err := os.ReadFile(env.bin)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(exe)
	write("owner.json", fmt.Sprintf(`{"vm":"tom-vm","version":1,"owner":%q,"rules":{"migrators":["role:owner"],`+
		`"destinations":["group:tom-devices"],"min_trust":"software-tpm","measurements":[{"executable_sha256":%q,"version":"this"}]}}`,
		tom, hex.EncodeToString(d[:])))
	ok("policy", "sign", "-key", p("tom.key"), "-type", "owner", "-in", p("owner.json"), "-out", p("owner.signed.json"))
	ok("policy", "bundle", "-owner", p("owner.signed.json"), "-out", p("vm-policy.json"))
	ok("policy", "request", "-key", p("tom.key"), "-action", "set-vm-policy", "-audience", aID, "-vm", "tom-vm", "-document", p("vm-policy.json"), "-out", p("set.json"))
	ok("policy", "--state", A, "--tpm", uriA, "set", "-request", p("set.json"), "-policy", p("vm-policy.json"))
	write("hostpol.json", fmt.Sprintf(`{"host":%q,"version":1,"accept_owners":[%q],"accept_sources":["group:tom-devices"]}`, bID, tom))
	ok("policy", "sign", "-key", p("tom.key"), "-type", "host", "-in", p("hostpol.json"), "-out", p("hostpol.signed.json"))
	ok("policy", "request", "-key", p("tom.key"), "-action", "set-host-policy", "-audience", bID, "-document", p("hostpol.signed.json"), "-out", p("r.json"))
	ok("policy", "--state", B, "--tpm", uriB, "set", "-request", p("r.json"), "-host-policy", p("hostpol.signed.json"))

	srcSock, dstSock := p("src.sock"), p("dst.sock")
	img := diskImage(t)
	src, off := bootVirtio(t, env, "--api-socket", srcSock, "--disk", img)
	sum, off := guestWorkload(t, src, off)
	addr := freePort(t)
	dst := startGvmm(t, env.bin, "receive", "--listen", addr, "--state", B, "--tpm", uriB, "--disk", img, "--api-socket", dstSock)
	waitListening(t, addr, dst)

	ok("policy", "request", "-key", p("bob.key"), "-action", "migrate", "-audience", aID, "-vm", "tom-vm", "-destination", bID, "-out", p("bob-mig.json"))
	out, code := gvmmCmd(t, env.bin, 2*time.Minute, "migrate", "--api-socket", srcSock, "--to", addr, "--state", A, "--tpm", uriA, "--request", p("bob-mig.json"))
	if code != 3 || !strings.Contains(out, "gate: migration refused") || !strings.Contains(out, "migrators") {
		t.Fatalf("Bob's migration: exit %d\n%s", code, out)
	}
	if got, o := src.ask(off, "expr 6 \\* 7"); got != "42" {
		t.Fatalf("source guest after Bob's refused request answered %q", got)
	} else {
		off = o
	}

	ok("policy", "request", "-key", p("tom.key"), "-action", "migrate", "-audience", aID, "-vm", "tom-vm", "-destination", bID, "-out", p("tom-mig.json"))
	out, code = gvmmCmd(t, env.bin, 5*time.Minute, "migrate", "--api-socket", srcSock, "--to", addr, "--state", A, "--tpm", uriA, "--request", p("tom-mig.json"))
	if code != 0 {
		t.Fatalf("Tom's migration: exit %d\n%s\nsource stderr:\n%s\ndestination stderr:\n%s", code, out, src.errors(), dst.errors())
	}
	for _, want := range []string{"gate: requester authenticated: Tom", "gate: policy pre-check allowed by rule", "gate: destination attested: desktop",
		"at level software-tpm", "gate: policy allowed by rule", "gate: key released to desktop", "gate: handshake", "downtime", "migrated: handshake before the first page"} {
		if !strings.Contains(out, want) {
			t.Errorf("gvmm migrate output lacks %q", want)
		}
	}
	if c := src.wait(exitTimeout); c != 0 {
		t.Fatalf("source gvmm exited %d after the handover; stderr:\n%s", c, src.errors())
	}
	if !strings.Contains(dst.errors(), "migrate-in allowed by rule") {
		t.Errorf("receive did not print its decision:\n%s", dst.errors())
	}
	dst.send("\n")
	_, doff := dst.waitFor(regexp.MustCompile(`guest# `), 0, bootTimeout)
	checkWorkload(t, dst, doff, sum)
	powerOff(t, dst)
	for _, h := range []string{A, B} {
		if a := ok("policy", "--state", h, "audit"); !strings.Contains(a, "ALLOW (attested)") {
			t.Errorf("audit of %s:\n%s", h, a)
		}
	}
}
