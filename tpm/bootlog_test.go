package tpm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// bootLogBuilder writes a crypto-agile boot log with SHA-1 and SHA-256
// digests (for tests and for tools that synthesise logs, such as a
// verifier computing golden values). The caller extends the same digests.
type bootLogBuilder struct {
	buf bytes.Buffer
}

// newBootLogBuilder starts a log with the Spec ID event for algs (TCG ids
// with their known sizes; the order is kept).
func newBootLogBuilder(algs ...uint16) *bootLogBuilder {
	var spec bytes.Buffer
	spec.Write(specIDSignature)
	le := binary.LittleEndian
	spec.Write(le.AppendUint32(nil, 0))
	spec.Write([]byte{0, 2, 0, 2})
	spec.Write(le.AppendUint32(nil, uint32(len(algs))))
	for _, a := range algs {
		spec.Write(le.AppendUint16(nil, a))
		spec.Write(le.AppendUint16(nil, uint16(bootAlgs[a])))
	}
	spec.WriteByte(0)
	b := &bootLogBuilder{}
	b.buf.Write(le.AppendUint32(nil, 0))
	b.buf.Write(le.AppendUint32(nil, EvNoAction))
	b.buf.Write(make([]byte, 20))
	b.buf.Write(le.AppendUint32(nil, uint32(spec.Len())))
	b.buf.Write(spec.Bytes())
	return b
}

// Add appends a TCG_PCR_EVENT2 record with the given digests, one per
// algorithm in the Spec ID event's order.
func (b *bootLogBuilder) Add(pcr int, typ uint32, digests map[uint16][]byte, order []uint16, data []byte) {
	le := binary.LittleEndian
	b.buf.Write(le.AppendUint32(nil, uint32(pcr)))
	b.buf.Write(le.AppendUint32(nil, typ))
	b.buf.Write(le.AppendUint32(nil, uint32(len(order))))
	for _, a := range order {
		b.buf.Write(le.AppendUint16(nil, a))
		b.buf.Write(digests[a])
	}
	b.buf.Write(le.AppendUint32(nil, uint32(len(data))))
	b.buf.Write(data)
}

// Bytes returns the log so far.
func (b *bootLogBuilder) Bytes() []byte { return bytes.Clone(b.buf.Bytes()) }

// bootEvent is one event of a synthetic firmware log: what is measured
// (content, hashed per bank) and the event data.
type bootEvent struct {
	pcr     int
	typ     uint32
	content []byte // hashed into the digests
	data    []byte
}

var sha1sha256 = []uint16{0x0004, algSHA256}

// syntheticBoot is what a UEFI firmware would log on a host whose
// firmware says version: the Spec ID event, S-CRTM version, a firmware
// blob, Secure Boot configuration, separators for PCRs 0-7, the boot
// loader, Exit Boot Services, a PCR 9 event (not replayed) and a trailing
// EV_NO_ACTION.
func syntheticBoot(version string) []bootEvent {
	u16 := func(s string) []byte {
		var b []byte
		for _, r := range s + "\x00" {
			b = binary.LittleEndian.AppendUint16(b, uint16(r))
		}
		return b
	}
	crtm := u16(version)
	sb := []byte("SecureBoot=1 (UEFI_VARIABLE_DATA)")
	exit := []byte("Exit Boot Services Invocation")
	evs := []bootEvent{
		{0, EvSCRTMVersion, crtm, crtm},
		{0, EvEFIPlatformFWBlob, []byte("firmware volume " + version), make([]byte, 16)},
		{1, EvEFIHandoffTables, []byte("SMBIOS tables " + version), make([]byte, 24)},
		{7, EvEFIVariableDriverCfg, sb, sb},
	}
	for p := 0; p <= 7; p++ {
		evs = append(evs, bootEvent{p, EvSeparator, make([]byte, 4), make([]byte, 4)})
	}
	return append(evs,
		bootEvent{4, EvEFIBootServicesApp, []byte("shim and grub images"), []byte("\\EFI\\BOOT\\BOOTX64.EFI")},
		bootEvent{5, EvEFIAction, exit, exit},
		bootEvent{9, 0xd /* EV_IPL */, []byte("grub.cfg"), []byte("grub.cfg")},
		bootEvent{0, EvNoAction, nil, []byte("vendor note")},
	)
}

func digestsOf(e bootEvent) map[uint16][]byte {
	if e.typ == EvNoAction {
		return map[uint16][]byte{0x0004: make([]byte, 20), algSHA256: make([]byte, 32)}
	}
	s1, s256 := sha1.Sum(e.content), sha256.Sum256(e.content)
	return map[uint16][]byte{0x0004: s1[:], algSHA256: s256[:]}
}

func encodeBoot(evs []bootEvent) []byte {
	b := newBootLogBuilder(sha1sha256...)
	for _, e := range evs {
		b.Add(e.pcr, e.typ, digestsOf(e), sha1sha256, e.data)
	}
	return b.Bytes()
}

// extendBoot extends what evs log into tp's PCRs 0-7, both banks, as the
// firmware would have.
func extendBoot(t testing.TB, tp *TPM, evs []bootEvent) {
	t.Helper()
	for _, e := range evs {
		if e.typ == EvNoAction || e.pcr > BootLogLastPCR {
			continue
		}
		d := digestsOf(e)
		extendRaw(t, tp, e.pcr, d[0x0004], d[algSHA256])
	}
}

func extendRaw(t testing.TB, tp *TPM, pcr int, sha1d, sha256d []byte) {
	t.Helper()
	err := tp.do(context.Background(), func(tr transportTPM) error {
		_, err := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
			Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{
				{HashAlg: tpm2.TPMAlgSHA1, Digest: sha1d},
				{HashAlg: tpm2.TPMAlgSHA256, Digest: sha256d},
			}},
		}.Execute(tr)
		return err
	})
	if err != nil {
		t.Fatalf("extend PCR %d: %v", pcr, err)
	}
}

func TestParseBootLog(t *testing.T) {
	evs := syntheticBoot("fw 1.0")
	good := encodeBoot(evs)
	l, err := ParseBootLog(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Events) != len(evs) || !slicesEqual(l.Algs, sha1sha256) {
		t.Fatalf("parsed %d events, algs %v", len(l.Events), l.Algs)
	}
	// The replay against an independent computation.
	want := map[int][32]byte{}
	for _, e := range evs {
		if e.typ == EvNoAction || e.pcr > 7 {
			continue
		}
		v, d := want[e.pcr], sha256.Sum256(e.content)
		want[e.pcr] = sha256.Sum256(append(v[:], d[:]...))
	}
	got := l.Replay()
	for p := 0; p <= 7; p++ {
		if got[p] != want[p] {
			t.Errorf("PCR %d replays to %x, want %x", p, got[p], want[p])
		}
	}
	if !l.Events[0].DataChecked || l.Events[1].DataChecked {
		t.Error("DataChecked: S-CRTM version must be checked, a firmware blob cannot be")
	}

	// A StartupLocality event sets PCR 0's initial value.
	withLoc := append([]bootEvent{{0, EvNoAction, nil, append([]byte("StartupLocality\x00"), 3)}}, evs...)
	ll, err := ParseBootLog(encodeBoot(withLoc))
	if err != nil {
		t.Fatal(err)
	}
	if ll.StartupLocality != 3 || ll.Replay()[0] == got[0] {
		t.Error("startup locality 3 not applied to PCR 0")
	}

	mutate := func(f func(evs []bootEvent) []bootEvent) []byte {
		c := make([]bootEvent, len(evs))
		copy(c, evs)
		return encodeBoot(f(c))
	}
	specWith := func(algs []uint16, sizes []uint16) []byte {
		b := newBootLogBuilder(sha1sha256...).Bytes()
		// Rewrite the algorithm table of the Spec ID event in place
		// (offset 32 header + 16 sig + 4 class + 4 version + 4 count).
		off := 32 + 28
		for i := range algs {
			binary.LittleEndian.PutUint16(b[off+4*i:], algs[i])
			binary.LittleEndian.PutUint16(b[off+4*i+2:], sizes[i])
		}
		return b
	}
	bigCount := func() []byte {
		b := newBootLogBuilder(sha1sha256...)
		for i := 0; i <= maxBootEvents; i++ {
			b.Add(0, EvNoAction, digestsOf(bootEvent{typ: EvNoAction}), sha1sha256, nil)
		}
		return b.Bytes()
	}
	for _, c := range []struct {
		name string
		log  []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"truncated in the header", good[:20], "truncated"},
		{"truncated in the Spec ID event", good[:40], "truncated"},
		{"truncated in a digest", good[:len(good)-len(encodeBoot(evs[len(evs)-1:]))+10], "truncated"},
		{"truncated in the last event's data", good[:len(good)-3], "truncated"},
		{"unknown algorithm in the Spec ID event", specWith([]uint16{0x0004, 0x0099}, []uint16{20, 32}), "unknown algorithm 0x0099"},
		{"known algorithm with a wrong size", specWith([]uint16{0x0004, algSHA256}, []uint16{20, 64}), "digest size 64"},
		{"algorithm listed twice", specWith([]uint16{algSHA256, algSHA256}, []uint16{32, 32}), "listed twice"},
		{"no SHA-256 bank", specWith([]uint16{0x0004, 0x000c}, []uint16{20, 48}), "no SHA-256"},
		{"not crypto-agile", bytes.Replace(good, []byte("Spec ID Event03"), []byte("Spec ID Event02"), 1), "not a crypto-agile"},
		{"altered S-CRTM version", mutate(func(e []bootEvent) []bootEvent {
			e[0].data = []byte("fw 9.9")
			return e
		}), "altered event"},
		{"altered separator", mutate(func(e []bootEvent) []bootEvent {
			e[4] = bootEvent{0, EvSeparator, []byte{1, 0, 0, 0}, []byte{1, 0, 0, 0}}
			return e
		}), "error separator"},
		{"too many events", bigCount(), "more than"},
		{"too large", make([]byte, maxBootLog+1), "exceed"},
		{"PCR out of range", mutate(func(e []bootEvent) []bootEvent {
			e[2].pcr = 24
			return e
		}), "PCR 24"},
	} {
		_, err := ParseBootLog(c.log)
		if !errors.Is(err, ErrBootLog) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrBootLog (%s)", c.name, err, c.want)
		}
	}

	// Digest lists that disagree with the Spec ID event.
	b := newBootLogBuilder(sha1sha256...)
	d := digestsOf(evs[0])
	b.Add(0, EvSCRTMVersion, d, []uint16{algSHA256, 0x0004}, evs[0].data)
	if _, err := ParseBootLog(b.Bytes()); err == nil || !strings.Contains(err.Error(), "digest algorithm") {
		t.Errorf("digests out of order: %v", err)
	}
	b = newBootLogBuilder(sha1sha256...)
	b.Add(0, EvSCRTMVersion, d, []uint16{algSHA256}, evs[0].data)
	if _, err := ParseBootLog(b.Bytes()); err == nil || !strings.Contains(err.Error(), "1 digests") {
		t.Errorf("one digest for two banks: %v", err)
	}
	b = newBootLogBuilder(sha1sha256...)
	b.Add(0, EvNoAction, d, sha1sha256, nil)
	if _, err := ParseBootLog(b.Bytes()); err == nil || !strings.Contains(err.Error(), "non-zero") {
		t.Errorf("EV_NO_ACTION with digests: %v", err)
	}
}

func trustOf(r *Result) TrustLevel {
	if r == nil {
		return TrustNone
	}
	return r.Trust
}

func slicesEqual(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// goCA is an EK certificate authority made in Go.
type goCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newGoCA(t testing.TB) *goCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test EK CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &goCA{cert: c, key: k}
}

func (ca *goCA) issue(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "EK"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
	}, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestBootLogTrust gives a TPM an EK certificate from a test CA, extends
// PCRs 0-7 from a synthetic firmware log, enrolls it (credential
// activation, then through a MACed record) with that CA as a hardware root
// and as a software root, and checks that hardware-tpm-boot-log is granted
// only to a quote whose log replays, from the hardware-root enrollment,
// and that every defect in the log fails closed.
func TestBootLogTrust(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		tp := b.open(t)
		id, err := tp.Identity(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ek, err := EKPublicKey(id.EKPublic)
		if err != nil {
			t.Fatal(err)
		}
		ca := newGoCA(t)
		writeNV(t, tp, ekCertNVIndexECC, ca.issue(t, ek))

		evs := syntheticBoot("fw 1.0 " + b.name)
		extendBoot(t, tp, evs)
		log := launch(t, tp, "config v1")
		if err := tp.CloseLaunch(ctx, log); err != nil {
			t.Fatal(err)
		}
		bootLog := encodeBoot(evs)

		enrollAs := func(cfg VerifierConfig) *Verifier {
			t.Helper()
			req, err := tp.EnrollRequest(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(req.EKCert) == 0 {
				t.Fatal("EK certificate not read from NV")
			}
			ch, p, err := MakeEnrollChallenge(*req, time.Now().Add(time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			secret, err := tp.ActivateCredential(ctx, ch)
			if err != nil {
				t.Fatal(err)
			}
			h, err := NewVerifier(cfg).FinishPendingEnroll(p, secret)
			if err != nil {
				t.Fatal(err)
			}
			key := make([]byte, 32)
			rand.Read(key)
			rec, err := NewEnrolledRecord(key, h, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			v := NewVerifier(cfg)
			if _, err := v.AddEnrolledRecord(key, rec); err != nil {
				t.Fatal(err)
			}
			return v
		}
		hw := enrollAs(VerifierConfig{EKRoots: pool(ca.cert)})
		sw := enrollAs(VerifierConfig{SoftwareEKRoots: pool(ca.cert)})

		pcrs := []int{0, 1, 2, 3, 4, 5, 6, 7, log.PCR}
		g := log.Replay()
		policy := func(minTrust TrustLevel, golden map[int][][]byte) *Policy {
			p := &Policy{PCRs: pcrs, MeasuredPCR: log.PCR, Golden: map[int][][]byte{log.PCR: {g[:]}}, BootLog: true, MinTrust: minTrust}
			for k, v := range golden {
				p.Golden[k] = v
			}
			return p
		}
		// attest quotes with a fresh nonce from v and returns the
		// evidence with the given boot log.
		attest := func(v *Verifier, boot []byte, quoted []int) *Evidence {
			t.Helper()
			ch, err := v.Challenge(migID)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := tp.Attest(ctx, ch, id.HostID, nil, quoted, log)
			if err != nil {
				t.Fatal(err)
			}
			ev.BootLog = boot
			return ev
		}
		verify := func(v *Verifier, boot []byte, pol *Policy) (*Result, error) {
			return v.Verify(attest(v, boot, pcrs), Expect{MigrationID: migID}, pol)
		}

		res, err := verify(hw, bootLog, policy(TrustHardwareBootLog, nil))
		if err != nil || res.Trust != TrustHardwareBootLog {
			t.Fatalf("hardware root, replaying log: %v (trust %v)", err, trustOf(res))
		}
		if len(res.BootEvents) != len(evs) {
			t.Errorf("result has %d boot events, want %d", len(res.BootEvents), len(evs))
		}
		pcr0, pcr4 := res.PCRs[0], res.PCRs[4]
		if res, err := verify(hw, bootLog, policy(TrustHardwareBootLog, map[int][][]byte{0: {pcr0[:]}, 4: {pcr4[:]}})); err != nil || res.Trust != TrustHardwareBootLog {
			t.Errorf("with golden firmware and boot loader values: %v", err)
		}
		// The same log from a software-root enrollment earns nothing more.
		if res, err := verify(sw, bootLog, policy(TrustSoftware, nil)); err != nil || res.Trust != TrustSoftware {
			t.Errorf("software root: %v (trust %v), want software-tpm", err, trustOf(res))
		}
		if _, err := verify(sw, bootLog, policy(TrustHardwareBootLog, nil)); !errors.Is(err, ErrTrustTooLow) {
			t.Errorf("software root, boot-log policy: %v, want ErrTrustTooLow", err)
		}
		// Without the boot log in the policy, the level stays at EK cert.
		plain := &Policy{PCRs: []int{log.PCR}, MeasuredPCR: log.PCR, Golden: map[int][][]byte{log.PCR: {g[:]}}, MinTrust: TrustHardwareEKCert}
		if res, err := hw.Verify(attest(hw, nil, []int{log.PCR}), Expect{MigrationID: migID}, plain); err != nil || res.Trust != TrustHardwareEKCert {
			t.Errorf("no boot log: %v (trust %v), want hardware-tpm-ek-cert", err, trustOf(res))
		}

		drop := func(i int) []byte {
			c := append(append([]bootEvent{}, evs[:i]...), evs[i+1:]...)
			return encodeBoot(c)
		}
		alter := func(f func(e []bootEvent)) []byte {
			c := append([]bootEvent{}, evs...)
			f(c)
			return encodeBoot(c)
		}
		unknownAlg := bytes.Clone(bootLog)
		binary.LittleEndian.PutUint16(unknownAlg[32+28:], 0x0099)
		other := encodeBoot(syntheticBoot("fw 2.0 another host"))
		wrong := sha256.Sum256([]byte("not the firmware"))
		for _, c := range []struct {
			name string
			boot []byte
			pol  *Policy
			want error
			why  string
		}{
			{"altered event data", alter(func(e []bootEvent) { e[0].data = []byte("fw 6.6") }), policy(TrustSoftware, nil), ErrPCRMismatch, "altered event"},
			{"altered event digest", alter(func(e []bootEvent) { e[12].content = []byte("another boot loader") }), policy(TrustSoftware, nil), ErrPCRMismatch, "replay to quoted PCR 4"},
			{"dropped event", drop(1), policy(TrustSoftware, nil), ErrPCRMismatch, "replay to quoted PCR 0"},
			{"dropped separator", drop(7), policy(TrustSoftware, nil), ErrPCRMismatch, "replay to quoted PCR 3"},
			{"reordered events", alter(func(e []bootEvent) { e[0], e[1] = e[1], e[0] }), policy(TrustSoftware, nil), ErrPCRMismatch, "replay to quoted PCR 0"},
			{"truncated log", bootLog[:len(bootLog)-5], policy(TrustSoftware, nil), ErrPCRMismatch, "truncated"},
			{"unknown algorithm in the Spec ID event", unknownAlg, policy(TrustSoftware, nil), ErrPCRMismatch, "unknown algorithm"},
			{"log of another host", other, policy(TrustSoftware, nil), ErrPCRMismatch, "replay to quoted PCR 0"},
			{"no log", nil, policy(TrustSoftware, nil), ErrPCRMismatch, "has none"},
			{"golden firmware value differs", bootLog, policy(TrustSoftware, map[int][][]byte{0: {wrong[:]}}), ErrPCRMismatch, "PCR 0"},
			{"log the policy does not replay", bootLog, plain, ErrEvidence, "does not replay"},
		} {
			quoted := pcrs
			if c.pol == plain {
				quoted = []int{log.PCR}
			}
			_, err := hw.Verify(attest(hw, c.boot, quoted), Expect{MigrationID: migID}, c.pol)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.why) {
				t.Errorf("%s: %v, want %v (%s)", c.name, err, c.want, c.why)
			}
		}

		// Policies that cannot be met are refused as invalid.
		for _, p := range []*Policy{
			{PCRs: []int{0, 1, 2, 3, log.PCR}, MeasuredPCR: log.PCR, Golden: map[int][][]byte{log.PCR: {g[:]}}, BootLog: true, MinTrust: TrustSoftware},
			{PCRs: []int{log.PCR}, MeasuredPCR: log.PCR, Golden: map[int][][]byte{log.PCR: {g[:]}}, MinTrust: TrustHardwareBootLog},
		} {
			if _, err := hw.Verify(attest(hw, nil, p.PCRs), Expect{MigrationID: migID}, p); !errors.Is(err, ErrPolicyInvalid) {
				t.Errorf("policy %+v: %v, want ErrPolicyInvalid", p, err)
			}
		}

		// A PCR 0-7 value the log does not account for: something
		// extended PCR 2 after the log was taken.
		extendRaw(t, tp, 2, make([]byte, 20), wrong[:])
		if _, err := verify(hw, bootLog, policy(TrustSoftware, nil)); !errors.Is(err, ErrPCRMismatch) || !strings.Contains(err.Error(), "PCR 2") {
			t.Errorf("unlogged PCR 2 extension: %v, want ErrPCRMismatch", err)
		}
	})
}
