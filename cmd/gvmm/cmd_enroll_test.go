package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gvmm/gvmm/tpm"
)

// testCA is an EK certificate authority made in Go (a stand-in for a TPM
// manufacturer's CA).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newTestCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: k, pem: writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)}
}

// issueEK certifies the EK of a marshaled EK public area.
func (ca *testCA) issueEK(t *testing.T, ekPublic []byte) []byte {
	t.Helper()
	ek, err := tpm.EKPublicKey(ekPublic)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "EK"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment,
	}, ca.cert, ek, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// editJSON rewrites one top-level field of a JSON file.
func editJSON(t *testing.T, src, dst, field string, value any) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m[field] = value
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestEnrollVerifyCLI runs enrollment and verification through the
// commands, each "gvmm" run a new process-like session on the fixed-seed
// simulator (so the host's TPM is the same across runs): host init,
// enroll challenge (verifier), enroll activate (host TPM), enroll finish
// (verifier), attest (host), verify (verifier, from its enrolled record).
// Then every way the record or the enrollment can be wrong fails closed.
func TestEnrollVerifyCLI(t *testing.T) {
	if !tpm.SimulatorAvailable {
		t.Skip(tpm.ErrSimulatorNeedsCgo.Error())
	}
	dir := t.TempDir()
	const uri = "sim?insecure-fixed-seed=777"
	state, vdir := filepath.Join(dir, "state"), filepath.Join(dir, "verifier")
	p := func(name string) string { return filepath.Join(dir, name) }
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
		t.Logf("gvmm %s: %s", strings.Join(args[:2], " "), strings.TrimSpace(stderr))
		if !strings.Contains(stderr, want) {
			t.Fatalf("gvmm %s: stderr %q does not say %q", strings.Join(args, " "), stderr, want)
		}
	}
	challenge := func(identity, out string) {
		t.Helper()
		ok("enroll", "challenge", "--verifier-dir", vdir, "--host-identity", identity, "--out", out)
	}
	activate := func(ch, out string) {
		t.Helper()
		ok("enroll", "activate", "--tpm", uri, "--state", state, "--challenge", ch, "--out", out)
	}
	finish := func(resp, out string, extra ...string) []string {
		return append([]string{"enroll", "finish", "--verifier-dir", vdir, "--response", resp, "--out", out}, extra...)
	}

	ok("host", "init", "--tpm", uri, "--state", state)
	identity := filepath.Join(state, "identity.json")
	info, err := tpm.ReadHostInfo(state)
	if err != nil {
		t.Fatal(err)
	}

	// Enrollment of a software TPM: credential activation, no EK cert.
	challenge(identity, p("c1.json"))
	activate(p("c1.json"), p("r1.json"))
	if out := ok(finish(p("r1.json"), p("enrolled.json"))...); !strings.Contains(out, "trust software-tpm") {
		t.Fatalf("enroll finish: %q", out)
	}

	// Attest and verify from the enrolled record.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d, err := tpm.FileDigest(exe)
	if err != nil {
		t.Fatal(err)
	}
	g := tpm.GoldenLaunchPCR(23, d, nil, nil)
	writePolicy := func(name string, minTrust tpm.TrustLevel) string {
		b, _ := json.Marshal(tpm.Policy{PCRs: []int{23}, MeasuredPCR: 23, Golden: map[int][][]byte{23: {g[:]}}, MinTrust: minTrust})
		if err := os.WriteFile(p(name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p(name)
	}
	pol, hwPol := writePolicy("policy.json", tpm.TrustSoftware), writePolicy("hw-policy.json", tpm.TrustHardwareEKCert)
	attestVerify := func(record, policy string, attestFlags ...string) []string {
		t.Helper()
		nonce := make([]byte, 32)
		rand.Read(nonce)
		n := hex.EncodeToString(nonce)
		ev := ok(append([]string{"attest", "--tpm", uri, "--nonce", n, "--migration-id", "m1"}, attestFlags...)...)
		evPath := p("evidence-" + n[:8] + ".json")
		if err := os.WriteFile(evPath, []byte(ev), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{"verify", "--evidence", evPath, "--policy", policy, "--enrolled", record, "--verifier-dir", vdir, "--nonce", n, "--migration-id", "m1"}
	}
	if out := ok(attestVerify(p("enrolled.json"), pol)...); !strings.Contains(out, "OK host "+info.HostID+" trust software-tpm") {
		t.Fatalf("verify: %q", out)
	}
	fails("trust level below policy", attestVerify(p("enrolled.json"), hwPol)...)

	{ // record edited to a higher level
		for _, level := range []string{"hardware-tpm-ek-cert", "hardware-tpm-boot-log"} {
			edited := p("edited-" + level + ".json")
			editJSON(t, p("enrolled.json"), edited, "trust", level)
			fails("MAC does not verify", attestVerify(edited, pol)...)
		}
		// The verified flag and the AK are covered too.
		editJSON(t, p("enrolled.json"), p("edited-verified.json"), "ek_cert_verified", true)
		fails("MAC does not verify", attestVerify(p("edited-verified.json"), pol)...)
	}

	{ // record from another verifier
		other := filepath.Join(dir, "other-verifier")
		if _, err := tpm.LoadVerifierKey(other, true); err != nil {
			t.Fatal(err)
		}
		args := attestVerify(p("enrolled.json"), pol)
		for i := range args {
			if args[i] == vdir {
				args[i] = other
			}
		}
		fails("MAC does not verify", args...)
	}

	{ // wrong returned secret
		challenge(identity, p("c2.json"))
		activate(p("c2.json"), p("r2.json"))
		editJSON(t, p("r2.json"), p("r2-wrong.json"), "secret", base64.StdEncoding.EncodeToString(make([]byte, 32)))
		fails("wrong credential secret", finish(p("r2-wrong.json"), p("e2.json"))...)
		// The wrong answer consumed the challenge: the right one is late.
		fails("no outstanding challenge", finish(p("r2.json"), p("e2.json"))...)
		if _, err := os.Stat(p("e2.json")); err == nil {
			t.Fatal("a refused enrollment wrote a record")
		}
	}

	{ // challenge answered twice
		challenge(identity, p("c3.json"))
		activate(p("c3.json"), p("r3.json"))
		ok(finish(p("r3.json"), p("e3.json"))...)
		fails("no outstanding challenge", finish(p("r3.json"), p("e3b.json"))...)
	}

	{ // challenge for another host
		editJSON(t, p("c1.json"), p("c-other.json"), "host_id", "h-00000000000000000000000000000000")
		fails("challenge is for host", "enroll", "activate", "--tpm", uri, "--challenge", p("c-other.json"), "--out", p("r-other.json"))
	}

	{ // EK certificate roots
		ca, otherCA := newTestCA(t, dir, "ek-ca"), newTestCA(t, dir, "other-ca")
		withCert := p("identity-cert.json")
		editJSON(t, identity, withCert, "ek_cert", base64.StdEncoding.EncodeToString(ca.issueEK(t, info.EKPublic)))
		for i, c := range []struct {
			flags []string
			want  string // trust level, or the refusal
			ok    bool
		}{
			{[]string{"--ek-roots", ca.pem}, "trust hardware-tpm-ek-cert (ek cert verified: true)", true},
			{[]string{"--software-ek-roots", ca.pem}, "trust software-tpm (ek cert verified: true)", true},
			{[]string{"--ek-roots", ca.pem, "--software-ek-roots", ca.pem}, "trust software-tpm", true},
			{[]string{"--ek-roots", otherCA.pem}, "unknown authority", false},
			{[]string{"--software-ek-roots", otherCA.pem}, "unknown authority", false},
		} {
			ch, resp, rec := p(fmt.Sprintf("c-ca%d.json", i)), p(fmt.Sprintf("r-ca%d.json", i)), p(fmt.Sprintf("e-ca%d.json", i))
			challenge(withCert, ch)
			activate(ch, resp)
			if !c.ok {
				fails(c.want, finish(resp, rec, c.flags...)...)
				continue
			}
			if out := ok(finish(resp, rec, c.flags...)...); !strings.Contains(out, c.want) {
				t.Fatalf("finish %v: %q, want %q", c.flags, out, c.want)
			}
		}
		// The hardware-level record passes a hardware policy...
		if out := ok(attestVerify(p("e-ca0.json"), hwPol)...); !strings.Contains(out, "trust hardware-tpm-ek-cert") {
			t.Fatalf("verify: %q", out)
		}
		// ...and the software one, from the same certificate, does not.
		fails("trust level below policy", attestVerify(p("e-ca1.json"), hwPol)...)
		// A boot log through the CLI: the simulator ran no firmware, so
		// the log that replays to its PCRs 0-7 holds only the Spec ID
		// event. The hardware record earns the boot-log level for the
		// quote; the software one does not, and a log that does not
		// replay is refused.
		bootPol := p("boot-policy.json")
		b, _ := json.Marshal(tpm.Policy{PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7, 23}, MeasuredPCR: 23,
			Golden: map[int][][]byte{23: {g[:]}}, BootLog: true, MinTrust: tpm.TrustHardwareBootLog})
		if err := os.WriteFile(bootPol, b, 0o600); err != nil {
			t.Fatal(err)
		}
		emptyLog, oneEvent := p("boot-empty.bin"), p("boot-one.bin")
		os.WriteFile(emptyLog, specIDOnlyLog(false), 0o600)
		os.WriteFile(oneEvent, specIDOnlyLog(true), 0o600)
		if out := ok(attestVerify(p("e-ca0.json"), bootPol, "--boot-log", emptyLog)...); !strings.Contains(out, "trust hardware-tpm-boot-log") {
			t.Fatalf("verify with boot log: %q", out)
		}
		fails("trust level below policy", attestVerify(p("e-ca1.json"), bootPol, "--boot-log", emptyLog)...)
		fails("boot log does not replay to quoted PCR 0", attestVerify(p("e-ca0.json"), bootPol, "--boot-log", oneEvent)...)
		fails("PCR selection differs from policy", attestVerify(p("e-ca0.json"), bootPol)...)

		// A certificate for another EK, from the right CA.
		otherEK := p("identity-cert-other.json")
		editJSON(t, withCert, otherEK, "ek_cert", base64.StdEncoding.EncodeToString(ca.issueEK(t, mustOtherEK(t))))
		challenge(otherEK, p("c-x.json"))
		activate(p("c-x.json"), p("r-x.json"))
		fails("does not certify this EK", finish(p("r-x.json"), p("e-x.json"), "--ek-roots", ca.pem)...)
	}
}

// specIDOnlyLog is a crypto-agile firmware log with the Spec ID event
// (SHA-256 bank only) and, if oneEvent, one EV_S_CRTM_VERSION in PCR 0.
func specIDOnlyLog(oneEvent bool) []byte {
	le := binary.LittleEndian
	var spec []byte
	spec = append(spec, "Spec ID Event03\x00"...)
	spec = le.AppendUint32(spec, 0)
	spec = append(spec, 0, 2, 0, 2)
	spec = le.AppendUint32(spec, 1)
	spec = le.AppendUint16(spec, 0x000b)
	spec = le.AppendUint16(spec, 32)
	spec = append(spec, 0)
	var b []byte
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, 3) // EV_NO_ACTION
	b = append(b, make([]byte, 20)...)
	b = le.AppendUint32(b, uint32(len(spec)))
	b = append(b, spec...)
	if oneEvent {
		data := []byte("v\x00")
		d := sha256.Sum256(data)
		b = le.AppendUint32(b, 0)
		b = le.AppendUint32(b, 8) // EV_S_CRTM_VERSION
		b = le.AppendUint32(b, 1)
		b = le.AppendUint16(b, 0x000b)
		b = append(b, d[:]...)
		b = le.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	return b
}

// mustOtherEK returns an EK public area from another TPM: the simulator
// with another seed.
func mustOtherEK(t *testing.T) []byte {
	t.Helper()
	st := filepath.Join(t.TempDir(), "other")
	if code, _, stderr := runGVMM(t, "host", "init", "--tpm", "sim?insecure-fixed-seed=778", "--state", st); code != 0 {
		t.Fatalf("host init: %s", stderr)
	}
	info, err := tpm.ReadHostInfo(st)
	if err != nil {
		t.Fatal(err)
	}
	return info.EKPublic
}
