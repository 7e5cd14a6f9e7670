package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// swtpm 0.7.1's swtpm_setup certifies an RSA-2048 EK (NV 0x01c00002) and an
// ECC **P-384** EK (NV 0x01c00016, the TCG "high range" template). gvmm's EK
// is the ECC P-256 one of the TCG low range, whose certificate lives at
// 0x01c0000a, which swtpm_setup leaves empty.
const ekCertNVIndexECCP384 = 0x01c00016

// swtpmToolsAvailable reports whether swtpm_setup and swtpm_localca (the
// swtpm-tools package) are installed, under the same rule as swtpm itself.
func swtpmToolsAvailable(t testing.TB) bool {
	for _, tool := range []string{"swtpm_setup", "swtpm_localca"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("GVMM_REQUIRE_SWTPM") == "1" {
				t.Fatalf("%s not installed and GVMM_REQUIRE_SWTPM=1 (apt-get install swtpm-tools)", tool)
			}
			t.Logf("%s not installed: skipping (apt-get install swtpm-tools; set GVMM_REQUIRE_SWTPM=1 to make this an error)", tool)
			return false
		}
	}
	return true
}

// swtpmCA is a swtpm local CA (root and intermediate, made by swtpm_localca
// on first use) whose every file lives under dir: the tests never touch
// /etc/swtpm*, /var/lib/swtpm-localca or the user's ~/.config.
type swtpmCA struct {
	dir string
}

func newSwtpmCA(t testing.TB, dir string) *swtpmCA {
	t.Helper()
	c := &swtpmCA{dir: dir}
	if err := os.MkdirAll(filepath.Join(dir, "ca"), 0o700); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"localca.conf": fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n",
			filepath.Join(dir, "ca")),
		"localca.options": "--platform-manufacturer gvmm-test\n--platform-version 2.1\n--platform-model swtpm\n",
		"setup.conf": fmt.Sprintf("create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
			filepath.Join(dir, "localca.conf"), filepath.Join(dir, "localca.options")),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func runTool(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// manufacture runs swtpm_setup on a new state directory, as a vTPM vendor
// would: EKs, EK and platform certificates from this CA, SHA-256 bank.
func (c *swtpmCA) manufacture(t testing.TB, state string) {
	t.Helper()
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	runTool(t, "swtpm_setup", "--tpm2", "--tpmstate", state, "--create-ek-cert", "--create-platform-cert",
		"--ecc", "--config", filepath.Join(c.dir, "setup.conf"))
}

// issueEK has swtpm_localca certify an ECC P-256 EK and returns the DER.
// The certificate is what swtpm_setup would make: critical SAN with the TPM
// manufacturer, model and version, EK certificate EKU, CA:FALSE.
func (c *swtpmCA) issueEK(t testing.TB, ek *ecdsa.PublicKey) []byte {
	t.Helper()
	pt, err := ek.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	runTool(t, "swtpm_localca", "--type", "ek", "--tpm2",
		"--ek", fmt.Sprintf("x=%s,y=%s,id=secp256r1", hex.EncodeToString(pt[1:33]), hex.EncodeToString(pt[33:])),
		"--dir", out, "--tpm-spec-family", "2.0", "--tpm-spec-level", "0", "--tpm-spec-revision", "164",
		"--tpm-manufacturer", "id:00001014", "--tpm-model", "swtpm", "--tpm-version", "id:20191023",
		"--configfile", filepath.Join(c.dir, "localca.conf"), "--optsfile", filepath.Join(c.dir, "localca.options"))
	der, err := os.ReadFile(filepath.Join(out, "ek.cert"))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func readPEMCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b) // gnutls writes a text dump before the PEM block
	if blk == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

// root and intermediate return the CA's certificates; signer its
// intermediate's private key (to make certificates swtpm_localca will not).
func (c *swtpmCA) root(t testing.TB) *x509.Certificate {
	return readPEMCert(t, filepath.Join(c.dir, "ca", "swtpm-localca-rootca-cert.pem"))
}

func (c *swtpmCA) intermediate(t testing.TB) *x509.Certificate {
	return readPEMCert(t, filepath.Join(c.dir, "ca", "issuercert.pem"))
}

func (c *swtpmCA) signer(t testing.TB) crypto.Signer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, "ca", "signkey.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			t.Fatal("signkey.pem: no private key")
		}
		if blk.Type == "RSA PRIVATE KEY" {
			k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
		if blk.Type == "PRIVATE KEY" {
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return k.(crypto.Signer)
		}
	}
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// writeNV defines an NV index with platform authorisation (as a TPM
// manufacturer provisions EK certificates) and writes data into it.
func writeNV(t testing.TB, tp *TPM, index uint32, data []byte) {
	t.Helper()
	err := tp.do(context.Background(), func(tr transportTPM) error {
		platform := tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)}
		if _, err := (tpm2.NVDefineSpace{
			AuthHandle: platform,
			PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
				NVIndex: tpm2.TPMHandle(index),
				NameAlg: tpm2.TPMAlgSHA256,
				Attributes: tpm2.TPMANV{PPWrite: true, PPRead: true, OwnerRead: true, AuthRead: true,
					NoDA: true, PlatformCreate: true, NT: tpm2.TPMNTOrdinary},
				DataSize: uint16(len(data)),
			}),
		}).Execute(tr); err != nil {
			return fmt.Errorf("define NV: %w", err)
		}
		pub, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}.Execute(tr)
		if err != nil {
			return err
		}
		for off := 0; off < len(data); off += 512 {
			chunk := data[off:min(off+512, len(data))]
			if _, err := (tpm2.NVWrite{
				AuthHandle: platform,
				NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(index), Name: pub.NVName},
				Data:       tpm2.TPM2BMaxNVBuffer{Buffer: chunk},
				Offset:     uint16(off),
			}).Execute(tr); err != nil {
				return fmt.Errorf("write NV: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("provision NV %#x: %v", index, err)
	}
}

// issueLike makes a certificate for pub with the extensions of model (the
// swtpm EK certificate: critical SAN, EKU, key usage), signed by parent.
func issueLike(t testing.TB, model *x509.Certificate, pub any, parent *x509.Certificate, key crypto.Signer, notBefore, notAfter time.Time, extra ...pkix.Extension) []byte {
	t.Helper()
	akid := asn1.ObjectIdentifier{2, 5, 29, 35}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      model.Subject,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
	}
	for _, e := range model.Extensions {
		if !e.Id.Equal(akid) {
			tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, e)
		}
	}
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, extra...)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestEKCertChain gives a swtpm an EK certificate from a swtpm local CA and
// checks the trust level the verifier computes from it, and that every
// certificate that does not hold makes enrollment fail.
func TestEKCertChain(t *testing.T) {
	if !swtpmAvailable(t) || !swtpmToolsAvailable(t) {
		t.Skip("swtpm or swtpm-tools not installed")
	}
	ctx := context.Background()
	dir := t.TempDir()
	ca := newSwtpmCA(t, filepath.Join(dir, "ca"))
	state := filepath.Join(dir, "state")
	ca.manufacture(t, state)
	tp, err := OpenURI(ctx, startSwtpm(t, state), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()

	id, err := tp.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ekPub, err := checkEK(id.EKPublic)
	if err != nil {
		t.Fatal(err)
	}
	ekKey, err := tpm2.Pub(*ekPub)
	if err != nil {
		t.Fatal(err)
	}
	ek := ekKey.(*ecdsa.PublicKey)
	if len(id.EKCert) == 0 {
		// swtpm_setup certified the P-384 EK, not gvmm's P-256 one:
		// provision its certificate like a manufacturer would.
		writeNV(t, tp, ekCertNVIndexECC, ca.issueEK(t, ek))
		if id, err = tp.Identity(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cert, err := x509.ParseCertificate(id.EKCert)
	if err != nil {
		t.Fatalf("EK certificate read from NV: %v", err)
	}
	if !ek.Equal(cert.PublicKey) {
		t.Fatal("EK certificate in NV does not certify the TPM's P-256 EK")
	}
	root, inter := ca.root(t), ca.intermediate(t)
	// The notes' trap, still true: Go refuses the critical SAN by itself.
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(root), Intermediates: pool(inter), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Log("note: x509.Verify now accepts the swtpm EK certificate's critical SAN on its own")
	} else {
		t.Logf("x509.Verify alone: %v (verifyEKCert handles the SAN itself)", err)
	}
	var p384Cert []byte
	if err := tp.do(ctx, func(tr transportTPM) (err error) {
		p384Cert, err = readNV(tr, ekCertNVIndexECCP384, 4096)
		return err
	}); err != nil {
		t.Fatalf("read swtpm_setup's P-384 EK certificate: %v", err)
	}

	req, err := tp.EnrollRequest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(req.EKCert, id.EKCert) {
		t.Fatal("enroll request does not carry the EK certificate from NV")
	}
	// enrollWith runs the whole enrollment (with credential activation)
	// with the request's EK certificate replaced.
	enrollWith := func(t *testing.T, cfg VerifierConfig, ekCert []byte) (*Verifier, *EnrolledHost, error) {
		v := NewVerifier(cfg)
		r := *req
		r.EKCert = ekCert
		ch, err := v.BeginEnroll(r)
		if err != nil {
			return v, nil, err
		}
		secret, err := tp.ActivateCredential(ctx, ch)
		if err != nil {
			t.Fatalf("activate credential: %v", err)
		}
		h, err := v.FinishEnroll(ch.HostID, secret)
		return v, h, err
	}
	inters := pool(inter)

	t.Run("levels", func(t *testing.T) {
		for _, c := range []struct {
			name     string
			cfg      VerifierConfig
			cert     []byte
			want     TrustLevel
			verified bool
		}{
			// The honest configuration for swtpm: its CA is a software TPM CA.
			{"swtpm CA as software root", VerifierConfig{SoftwareEKRoots: pool(root), EKIntermediates: inters}, id.EKCert, TrustSoftware, true},
			// The level is the operator's assertion about the root: the
			// verifier checks the chain and the key, not the silicon.
			{"swtpm CA wrongly configured as hardware root", VerifierConfig{EKRoots: pool(root), EKIntermediates: inters}, id.EKCert, TrustHardwareEKCert, true},
			{"root in both pools counts as software", VerifierConfig{EKRoots: pool(root), SoftwareEKRoots: pool(root), EKIntermediates: inters}, id.EKCert, TrustSoftware, true},
			{"no roots configured", VerifierConfig{}, id.EKCert, TrustSoftware, false},
			{"no certificate presented", VerifierConfig{EKRoots: pool(root), EKIntermediates: inters}, nil, TrustSoftware, false},
		} {
			_, h, err := enrollWith(t, c.cfg, c.cert)
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
				continue
			}
			if h.Trust != c.want || h.EKCertVerified != c.verified {
				t.Errorf("%s: trust %s verified %v, want %s %v", c.name, h.Trust, h.EKCertVerified, c.want, c.verified)
			}
		}
	})

	t.Run("trust reaches the attestation result", func(t *testing.T) {
		v, h, err := enrollWith(t, VerifierConfig{EKRoots: pool(root), EKIntermediates: inters}, id.EKCert)
		if err != nil {
			t.Fatal(err)
		}
		sv, _, err := enrollWith(t, VerifierConfig{SoftwareEKRoots: pool(root), EKIntermediates: inters}, id.EKCert)
		if err != nil {
			t.Fatal(err)
		}
		log := launch(t, tp, "config v1")
		if err := tp.CloseLaunch(ctx, log); err != nil {
			t.Fatal(err)
		}
		exe, err := NewEphemeralKey()
		if err != nil {
			t.Fatal(err)
		}
		g := log.Replay()
		pol := &Policy{PCRs: []int{log.PCR}, MeasuredPCR: log.PCR, Golden: map[int][][]byte{log.PCR: {g[:]}}, MinTrust: TrustHardwareEKCert}
		for _, c := range []struct {
			v    *Verifier
			want error
		}{{v, nil}, {sv, ErrTrustTooLow}} {
			ch, err := c.v.Challenge(migID)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := tp.Attest(ctx, ch, h.HostID, exe.PublicKey().Bytes(), []int{log.PCR}, log)
			if err != nil {
				t.Fatal(err)
			}
			res, err := c.v.Verify(ev, Expect{MigrationID: migID, EphemeralPub: exe.PublicKey().Bytes()}, pol)
			if c.want == nil && (err != nil || res.Trust != TrustHardwareEKCert) {
				t.Errorf("hardware-root verifier: %v, %+v", err, res)
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("software-root verifier with hardware policy: %v, want %v", err, c.want)
			}
		}
	})

	t.Run("fails closed", func(t *testing.T) {
		signKey := ca.signer(t)
		now := time.Now()
		model := cert
		good := issueLike(t, model, ek, inter, signKey, now.Add(-time.Hour), now.Add(24*time.Hour))
		expired := issueLike(t, model, ek, inter, signKey, now.Add(-48*time.Hour), now.Add(-time.Hour))
		notYet := issueLike(t, model, ek, inter, signKey, now.Add(time.Hour), now.Add(48*time.Hour))
		unknownCrit := issueLike(t, model, ek, inter, signKey, now.Add(-time.Hour), now.Add(24*time.Hour),
			pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Critical: true, Value: []byte{5, 0}})

		// A certificate that is not a CA, signed by the real intermediate,
		// then used to sign an EK certificate.
		rogueKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		mkRogue := func(bcValid bool) *x509.Certificate {
			der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
				SerialNumber:          big.NewInt(now.UnixNano()),
				Subject:               pkix.Name{CommonName: "not a CA"},
				NotBefore:             now.Add(-time.Hour),
				NotAfter:              now.Add(24 * time.Hour),
				KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
				BasicConstraintsValid: bcValid,
				IsCA:                  false,
			}, inter, &rogueKey.PublicKey, signKey)
			if err != nil {
				t.Fatal(err)
			}
			c, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		rogueCA, rogueV1 := mkRogue(true), mkRogue(false)
		viaRogue := issueLike(t, model, ek, rogueCA, rogueKey, now.Add(-time.Hour), now.Add(24*time.Hour))
		viaRogueV1 := issueLike(t, model, ek, rogueV1, rogueKey, now.Add(-time.Hour), now.Add(24*time.Hour))

		other := newSwtpmCA(t, filepath.Join(dir, "other-ca"))
		fromOther := other.issueEK(t, ek)
		otherInter := other.intermediate(t)

		hw := VerifierConfig{EKRoots: pool(root), EKIntermediates: inters}
		both := VerifierConfig{EKRoots: pool(root), SoftwareEKRoots: pool(root), EKIntermediates: pool(inter, rogueCA, rogueV1, otherInter)}
		afterExpiry := hw
		afterExpiry.Now = func() time.Time { return cert.NotAfter.Add(time.Second) }

		// Positive control: the certificates made here differ from the
		// failing ones only in the defect under test.
		if _, h, err := enrollWith(t, hw, good); err != nil || h.Trust != TrustHardwareEKCert {
			t.Fatalf("control certificate (intermediate-signed, valid): %v", err)
		}
		for _, c := range []struct {
			name string
			cfg  VerifierConfig
			cert []byte
			want string // the reason, so a case cannot pass by failing early
		}{
			{"certificate from another CA", both, fromOther, "unknown authority"},
			{"certificate from another CA, its intermediate known", VerifierConfig{EKRoots: pool(root), EKIntermediates: pool(inter, otherInter)}, fromOther, "unknown authority"},
			{"same CA, another EK (swtpm_setup's P-384 EK)", both, p384Cert, "does not certify this EK"},
			{"expired", both, expired, "expired"},
			{"not yet valid", both, notYet, "not yet valid"},
			{"verifier clock past the real certificate's NotAfter", afterExpiry, id.EKCert, "expired"},
			{"chain through a non-CA intermediate", both, viaRogue, "cannot sign"},
			{"chain through an intermediate without basic constraints", both, viaRogueV1, "cannot sign"},
			{"missing intermediate", VerifierConfig{EKRoots: pool(root)}, id.EKCert, "unknown authority"},
			{"only another CA's root configured", VerifierConfig{EKRoots: pool(other.root(t)), EKIntermediates: inters}, id.EKCert, "unknown authority"},
			{"unknown critical extension", both, unknownCrit, "unhandled critical extension"},
			{"not DER", both, []byte("not a certificate"), "malformed"},
			{"trailing bytes", both, append(bytes.Clone(id.EKCert), 0), "trailing data"},
		} {
			_, _, err := enrollWith(t, c.cfg, c.cert)
			t.Logf("%s: %v", c.name, err)
			if !errors.Is(err, ErrEnroll) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: %v, want ErrEnroll (%s)", c.name, err, c.want)
			}
		}
	})
}
