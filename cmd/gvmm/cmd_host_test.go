package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gvmm/gvmm/tpm"
)

// writePEM writes one PEM block and returns its path.
func writePEM(t *testing.T, path, typ string, der []byte) string {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newApprovalKey makes an offline approval key; sec1 picks the "EC PRIVATE
// KEY" encoding (openssl ecparam) instead of PKCS#8.
func newApprovalKey(t *testing.T, dir, name string, sec1 bool) (k *ecdsa.PrivateKey, priv, pub string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var der []byte
	typ := "PRIVATE KEY"
	if sec1 {
		der, err = x509.MarshalECPrivateKey(k)
		typ = "EC PRIVATE KEY"
	} else {
		der, err = x509.MarshalPKCS8PrivateKey(k)
	}
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k, writePEM(t, filepath.Join(dir, name+".key"), typ, der),
		writePEM(t, filepath.Join(dir, name+".pub"), "PUBLIC KEY", pubDER)
}

// TestHostApproveUpgrade drives a PolicyAuthorize upgrade through the
// commands: init sealed to an offline key, approve, open, change the
// configuration (refused until approved), approve again, and the ways an
// approval can be wrong. Each "gvmm" run is a new TPM session on the
// fixed-seed simulator, so state survives between runs as it would across
// restarts (and PCR 23 starts from zero each time, as after a reboot).
func TestHostApproveUpgrade(t *testing.T) {
	if !tpm.SimulatorAvailable {
		t.Skip(tpm.ErrSimulatorNeedsCgo.Error())
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	const uri = "sim?insecure-fixed-seed=4242"
	_, keyPath, pubPath := newApprovalKey(t, dir, "approver", false)
	forger, forgerKey, forgerPub := newApprovalKey(t, dir, "forger", true)
	conf := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c1, c2 := conf("v1.conf", "memory=1G\n"), conf("v2.conf", "memory=2G\n")

	ok := func(args ...string) string {
		t.Helper()
		code, out, stderr := runGVMM(t, args...)
		if code != 0 {
			t.Fatalf("gvmm %s: status %d\n%s", strings.Join(args, " "), code, stderr)
		}
		return out
	}
	fails := func(want string, args ...string) {
		t.Helper()
		code, _, stderr := runGVMM(t, args...)
		if code == 0 {
			t.Fatalf("gvmm %s succeeded, want failure (%s)", strings.Join(args, " "), want)
		}
		t.Logf("gvmm %s: %s", args[1], strings.TrimSpace(stderr))
		if !strings.Contains(stderr, want) {
			t.Fatalf("gvmm %s: stderr %q does not say %q", strings.Join(args, " "), stderr, want)
		}
	}
	open := func(config string, extra ...string) []string {
		return append([]string{"host", "open", "--tpm", uri, "--state", state, "--config", config}, extra...)
	}

	ok("host", "init", "--tpm", uri, "--state", state, "--approver", pubPath, "--config", c1)
	fails("no approval for the current measurements", open(c1)...)

	out := ok("host", "approve", "--key", keyPath, "--state", state, "--config", c1)
	if !strings.Contains(out, "approved pcr 23") {
		t.Fatalf("approve output: %q", out)
	}
	if out := ok(open(c1)...); !strings.Contains(out, "opened host store") {
		t.Fatalf("open output: %q", out)
	}

	// Upgrade: the new configuration is refused until it is approved.
	fails("no approval for the current measurements", open(c2)...)

	// The CLI refuses to sign with a key the host was not sealed to...
	fails("another approval key", "host", "approve", "--key", forgerKey, "--state", state, "--config", c2)
	// ...and a forged approval of exactly the right measurements, put in
	// the state directory, is refused by the TPM.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d, err := tpm.FileDigest(exe)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := tpm.Approve(forger, tpm.KEKPolicyRef, []int{23}, map[int][32]byte{23: tpm.LaunchPCRValue(23, d, []byte("memory=2G\n"), nil)})
	if err != nil {
		t.Fatal(err)
	}
	forgedPath, err := tpm.SaveApproval(state, forged)
	if err != nil {
		t.Fatal(err)
	}
	fails("approval signature", open(c2)...)
	// The forger's public key offered as the approver does not help: the
	// sealed KEK's policy names the real key.
	fails("unseal refused", open(c2, "--approver", forgerPub)...)
	if err := os.Remove(forgedPath); err != nil {
		t.Fatal(err)
	}

	// The real approval, written elsewhere and passed by flag.
	apath := filepath.Join(dir, "v2.approval.json")
	ok("host", "approve", "--key", keyPath, "--state", state, "--config", c2, "--out", apath)
	fails("no approval for the current measurements", open(c2)...)
	ok(open(c2, "--approval", apath)...)
	// An approval altered on disk fails closed.
	a, err := tpm.ReadApproval(apath)
	if err != nil {
		t.Fatal(err)
	}
	a.S[len(a.S)-1] ^= 1
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	altered := filepath.Join(dir, "altered.json")
	if err := os.WriteFile(altered, b, 0o600); err != nil {
		t.Fatal(err)
	}
	fails("approval signature", open(c2, "--approval", altered)...)

	// PolicyAuthorize has no revocation: the v1 approval still opens v1.
	ok(open(c1)...)

	// A PolicyPCR host needs no approval and refuses one.
	pcrState := filepath.Join(dir, "pcr-state")
	ok("host", "init", "--tpm", uri, "--state", pcrState, "--config", c1)
	ok("host", "open", "--tpm", uri, "--state", pcrState, "--config", c1)
	fails("unseal refused", "host", "open", "--tpm", uri, "--state", pcrState, "--config", c2)
	fails(`approvals need "authorized"`, "host", "approve", "--key", keyPath, "--state", pcrState, "--config", c2)

	fails("need --key", "host", "approve", "--state", state)
	fails("no such file", "host", "approve", "--key", filepath.Join(dir, "nope"), "--state", state)
}
