package tpm

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// host is one enrolled, launched, closed host with a verifier.
type host struct {
	tp     *TPM
	id     *Identity
	log    *Log
	v      *Verifier
	clock  *fakeClock
	eph    *ecdh.PrivateKey
	policy *Policy
}

const migID = "mig-0001"

func newHost(t testing.TB, tp *TPM) *host {
	t.Helper()
	ctx := context.Background()
	h := &host{tp: tp, clock: &fakeClock{now: time.Unix(1_800_000_000, 0)}}
	h.v = NewVerifier(VerifierConfig{Now: h.clock.Now})
	h.log = launch(t, tp, "config v1")
	if err := tp.CloseLaunch(ctx, h.log); err != nil {
		t.Fatal(err)
	}
	var err error
	if h.id, err = tp.Identity(ctx); err != nil {
		t.Fatal(err)
	}
	enroll(t, h.v, tp)
	if h.eph, err = NewEphemeralKey(); err != nil {
		t.Fatal(err)
	}
	exe := sha256.Sum256([]byte("gvmm executable v1"))
	g := GoldenLaunchPCR(h.log.PCR, exe, []byte("config v1"), []byte("policy v1"))
	if g != h.log.Replay() {
		t.Fatalf("golden value %x != replay %x", g, h.log.Replay())
	}
	h.policy = &Policy{PCRs: []int{h.log.PCR}, MeasuredPCR: h.log.PCR, Golden: map[int][][]byte{h.log.PCR: {g[:]}}, MinTrust: TrustSoftware}
	return h
}

func enroll(t testing.TB, v *Verifier, tp *TPM) *EnrolledHost {
	t.Helper()
	ctx := context.Background()
	req, err := tp.EnrollRequest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := v.BeginEnroll(*req)
	if err != nil {
		t.Fatalf("begin enroll: %v", err)
	}
	secret, err := tp.ActivateCredential(ctx, ch)
	if err != nil {
		t.Fatalf("activate credential: %v", err)
	}
	eh, err := v.FinishEnroll(ch.HostID, secret)
	if err != nil {
		t.Fatalf("finish enroll: %v", err)
	}
	return eh
}

func (h *host) evidence(t testing.TB) *Evidence {
	t.Helper()
	ch, err := h.v.Challenge(migID)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := h.tp.Attest(context.Background(), ch, h.id.HostID, h.eph.PublicKey().Bytes(), []int{h.log.PCR}, h.log)
	if err != nil {
		t.Fatalf("attest: %v", err)
	}
	return ev
}

func (h *host) verify(ev *Evidence) (*Result, error) {
	return h.v.Verify(ev, Expect{MigrationID: migID, EphemeralPub: h.eph.PublicKey().Bytes()}, h.policy)
}

// quoteWith quotes with a key made from tmpl (an AK-shaped key the
// verifier never enrolled) and a custom selection.
func quoteWith(t testing.TB, h *host, tmpl tpm2.TPMTPublic, sel tpm2.TPMLPCRSelection, ev *Evidence) {
	t.Helper()
	extra := QuoteExtraData(ev.Nonce, ev.MigrationID, ev.HostID, ev.EphemeralPub)
	err := h.tp.do(context.Background(), func(tr transportTPM) error {
		rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}.Execute(tr)
		if err != nil {
			return err
		}
		defer flush(tr, rsp.ObjectHandle)
		q, err := tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: extra},
			InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
			PCRSelect: sel,
		}.Execute(tr)
		if err != nil {
			return err
		}
		r, s, err := ecdsaSignature(&q.Signature)
		if err != nil {
			return err
		}
		ev.Quoted, ev.SigR, ev.SigS = q.Quoted.Bytes(), r.Bytes(), s.Bytes()
		return nil
	})
	if err != nil {
		t.Fatalf("quote: %v", err)
	}
}

func reencodeLog(t testing.TB, ev *Evidence, f func(l *Log)) {
	t.Helper()
	l, err := ParseLog(ev.Log)
	if err != nil {
		t.Fatal(err)
	}
	f(l)
	if ev.Log, err = l.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
}

// TestAttestationFailsClosed runs every evidence attack of issue 4 against
// a real quote, on every backend. Each case must be rejected with the
// named error; the first case proves the untampered evidence verifies.
func TestAttestationFailsClosed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		h := newHost(t, b.open(t))
		ctx := context.Background()
		otherKey := akTemplate()
		otherKey.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{1}, 32)},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		})
		sel := func(hash tpm2.TPMAlgID, pcrs ...uint) tpm2.TPMLPCRSelection {
			return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: hash, PCRSelect: tpm2.PCClientCompatible.PCRs(pcrs...)}}}
		}
		cases := []struct {
			name string
			// mutate tampers with fresh evidence; verify (if set) replaces
			// the plain verification.
			mutate func(t *testing.T, ev *Evidence)
			verify func(t *testing.T, ev *Evidence) (*Result, error)
			want   error
		}{
			{name: "genuine evidence verifies", want: nil},
			{name: "replayed quote (nonce already used)", want: ErrNonceUnknown,
				verify: func(t *testing.T, ev *Evidence) (*Result, error) {
					if _, err := h.verify(ev); err != nil {
						t.Fatalf("first use: %v", err)
					}
					return h.verify(ev)
				}},
			{name: "nonce used twice for two quotes", want: ErrNonceUnknown,
				verify: func(t *testing.T, ev *Evidence) (*Result, error) {
					ch := &Challenge{Nonce: ev.Nonce, MigrationID: migID}
					ev2, err := h.tp.Attest(ctx, ch, h.id.HostID, ev.EphemeralPub, []int{h.log.PCR}, h.log)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := h.verify(ev); err != nil {
						t.Fatalf("first use: %v", err)
					}
					return h.verify(ev2)
				}},
			{name: "expired nonce", want: ErrNonceExpired,
				mutate: func(t *testing.T, ev *Evidence) { h.clock.Advance(DefaultNonceTTL + time.Second) }},
			{name: "nonce never issued", want: ErrNonceUnknown,
				mutate: func(t *testing.T, ev *Evidence) { rand.Read(ev.Nonce) }},
			{name: "quote bound to another migration id", want: ErrBinding,
				verify: func(t *testing.T, ev *Evidence) (*Result, error) {
					return h.v.Verify(ev, Expect{MigrationID: "mig-other", EphemeralPub: ev.EphemeralPub}, h.policy)
				}},
			{name: "evidence relabelled with another migration id", want: ErrBinding,
				mutate: func(t *testing.T, ev *Evidence) { ev.MigrationID = "mig-other" },
				verify: func(t *testing.T, ev *Evidence) (*Result, error) {
					return h.v.Verify(ev, Expect{MigrationID: "mig-other"}, h.policy)
				}},
			{name: "quote relabelled with another host id", want: ErrNotEnrolled,
				mutate: func(t *testing.T, ev *Evidence) { ev.HostID = "h-00000000000000000000000000000000" }},
			{name: "quote bound to another receiving key", want: ErrBinding,
				mutate: func(t *testing.T, ev *Evidence) {
					k, _ := NewEphemeralKey()
					ev.EphemeralPub = k.PublicKey().Bytes()
				},
				verify: func(t *testing.T, ev *Evidence) (*Result, error) {
					return h.v.Verify(ev, Expect{MigrationID: migID}, h.policy)
				}},
			{name: "verifier expects another receiving key", want: ErrBinding,
				verify: func(t *testing.T, ev *Evidence) (*Result, error) {
					k, _ := NewEphemeralKey()
					return h.v.Verify(ev, Expect{MigrationID: migID, EphemeralPub: k.PublicKey().Bytes()}, h.policy)
				}},
			{name: "tampered PCR value", want: ErrPCRMismatch,
				mutate: func(t *testing.T, ev *Evidence) { ev.PCRValues[0][0] ^= 1 }},
			{name: "tampered quote bytes", want: ErrSignature,
				mutate: func(t *testing.T, ev *Evidence) { ev.Quoted[len(ev.Quoted)-1] ^= 1 }},
			{name: "unknown measurement in selected PCR, empty log", want: ErrPCRMismatch,
				verify: func(t *testing.T, ev *Evidence) (*Result, error) {
					if err := h.tp.ExtendEvent(ctx, &Log{PCR: h.log.PCR}, Event{Type: EventConfig, Data: []byte("rootkit")}); err != nil {
						t.Fatal(err)
					}
					defer func() { // restore the launch state for later cases
						h.log = launch(t, h.tp, "config v1")
						h.tp.CloseLaunch(ctx, h.log)
					}()
					ch, _ := h.v.Challenge(migID)
					ev2, err := h.tp.Attest(ctx, ch, h.id.HostID, ev.EphemeralPub, []int{h.log.PCR}, &Log{PCR: h.log.PCR})
					if err != nil {
						t.Fatal(err)
					}
					return h.verify(ev2)
				}},
			{name: "wrong hash bank (SHA-1)", want: ErrPCRSelection,
				mutate: func(t *testing.T, ev *Evidence) { quoteWith(t, h, akTemplate(), sel(tpm2.TPMAlgSHA1, 23), ev) }},
			{name: "two banks", want: ErrPCRSelection,
				mutate: func(t *testing.T, ev *Evidence) {
					s := sel(tpm2.TPMAlgSHA256, 23)
					s.PCRSelections = append(s.PCRSelections, sel(tpm2.TPMAlgSHA384, 23).PCRSelections...)
					quoteWith(t, h, akTemplate(), s, ev)
				}},
			{name: "extra PCR quoted", want: ErrPCRSelection,
				mutate: func(t *testing.T, ev *Evidence) {
					quoteWith(t, h, akTemplate(), sel(tpm2.TPMAlgSHA256, 0, 23), ev)
					ev.PCRs = []int{0, 23}
					ev.PCRValues = [][]byte{make([]byte, 32), ev.PCRValues[0]}
				}},
			{name: "policy PCR missing from quote", want: ErrPCRSelection,
				verify: func(t *testing.T, ev *Evidence) (*Result, error) {
					p := *h.policy
					p.PCRs = []int{0, 23}
					p.Golden = map[int][][]byte{0: {make([]byte, 32)}, 23: h.policy.Golden[23]}
					return h.v.Verify(ev, Expect{MigrationID: migID}, &p)
				}},
			{name: "PCR value not golden", want: ErrPCRMismatch,
				verify: func(t *testing.T, ev *Evidence) (*Result, error) {
					p := *h.policy
					p.Golden = map[int][][]byte{23: {make([]byte, 32)}}
					return h.v.Verify(ev, Expect{MigrationID: migID}, &p)
				}},
			{name: "signed by a key never enrolled", want: ErrSignature,
				mutate: func(t *testing.T, ev *Evidence) { quoteWith(t, h, otherKey, sel(tpm2.TPMAlgSHA256, 23), ev) }},
			{name: "log event altered", want: ErrPCRMismatch,
				mutate: func(t *testing.T, ev *Evidence) {
					reencodeLog(t, ev, func(l *Log) { l.Events[1].Data[0] ^= 1 })
				}},
			{name: "log event retyped", want: ErrPCRMismatch,
				mutate: func(t *testing.T, ev *Evidence) {
					reencodeLog(t, ev, func(l *Log) { l.Events[1].Type = EventPolicy })
				}},
			{name: "log events reordered", want: ErrPCRMismatch,
				mutate: func(t *testing.T, ev *Evidence) {
					reencodeLog(t, ev, func(l *Log) { l.Events[1], l.Events[2] = l.Events[2], l.Events[1] })
				}},
			{name: "log event dropped", want: ErrPCRMismatch,
				mutate: func(t *testing.T, ev *Evidence) {
					reencodeLog(t, ev, func(l *Log) { l.Events = slices.Delete(l.Events, 1, 2) })
				}},
			{name: "log for another PCR", want: ErrPCRMismatch,
				mutate: func(t *testing.T, ev *Evidence) { reencodeLog(t, ev, func(l *Log) { l.PCR = 16 }) }},
			{name: "log truncated", want: ErrPCRMismatch,
				mutate: func(t *testing.T, ev *Evidence) { ev.Log = ev.Log[:len(ev.Log)-3] }},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				ev := h.evidence(t)
				if c.mutate != nil {
					c.mutate(t, ev)
				}
				var (
					res *Result
					err error
				)
				if c.verify != nil {
					res, err = c.verify(t, ev)
				} else {
					res, err = h.verify(ev)
				}
				if c.want == nil {
					if err != nil {
						t.Fatalf("verify: %v", err)
					}
					if res.Trust != TrustSoftware || res.HostID != h.id.HostID || len(res.Events) != 4 || res.Events[3].Type != EventClosing {
						t.Fatalf("result = %+v", res)
					}
					return
				}
				if res != nil || !errors.Is(err, ErrEvidence) || !errors.Is(err, c.want) {
					t.Fatalf("verify = %v, %v; want %v", res, err, c.want)
				}
			})
		}
	})
}

// TestEvidenceBringsOwnAK: evidence carrying an AK is refused at parsing;
// the verifier has no way to use one.
func TestEvidenceBringsOwnAK(t *testing.T) {
	good, _ := json.Marshal(&Evidence{Version: 1})
	if _, err := ParseEvidence(bytes.NewReader(good)); err != nil {
		t.Fatalf("parse plain evidence: %v", err)
	}
	withAK := strings.Replace(string(good), "{", `{"ak_public":"AAEC",`, 1)
	if _, err := ParseEvidence(strings.NewReader(withAK)); !errors.Is(err, ErrEvidence) {
		t.Fatalf("evidence with its own AK: %v, want ErrEvidence", err)
	}
	huge := strings.Repeat(" ", maxEvidence+1)
	if _, err := ParseEvidence(strings.NewReader(huge)); !errors.Is(err, ErrEvidence) {
		t.Fatalf("huge evidence: %v", err)
	}
}

// TestEnrollmentFailsClosed covers AK shape checks and credential
// activation with the wrong EK or a wrong returned secret.
func TestEnrollmentFailsClosed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		tp := b.open(t)
		req, err := tp.EnrollRequest(ctx)
		if err != nil {
			t.Fatal(err)
		}
		retemplate := func(f func(p *tpm2.TPMTPublic)) []byte {
			p, err := tpm2.Unmarshal[tpm2.TPMTPublic](req.AKPublic)
			if err != nil {
				t.Fatal(err)
			}
			f(p)
			return tpm2.Marshal(p)
		}
		t.Run("AK shape", func(t *testing.T) {
			for name, ak := range map[string][]byte{
				"unrestricted":   retemplate(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false }),
				"not fixedTPM":   retemplate(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false }),
				"decrypt":        retemplate(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true }),
				"imported":       retemplate(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false }),
				"trailing bytes": append(bytes.Clone(req.AKPublic), 0),
				"empty":          nil,
				"SHA-1 name alg": retemplate(func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 }),
			} {
				r := *req
				r.AKPublic = ak
				if _, err := NewVerifier(VerifierConfig{}).BeginEnroll(r); !errors.Is(err, ErrEnroll) {
					t.Errorf("%s AK: %v, want ErrEnroll", name, err)
				}
			}
		})
		t.Run("unrestricted key made by the TPM", func(t *testing.T) {
			tmpl := akTemplate()
			tmpl.ObjectAttributes.Restricted = false
			var pub []byte
			err := tp.do(ctx, func(tr transportTPM) error {
				rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}.Execute(tr)
				if err != nil {
					return err
				}
				flush(tr, rsp.ObjectHandle)
				pub = rsp.OutPublic.Bytes()
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			r := *req
			r.AKPublic = pub
			if _, err := NewVerifier(VerifierConfig{}).BeginEnroll(r); !errors.Is(err, ErrEnroll) {
				t.Fatalf("unrestricted AK: %v, want ErrEnroll", err)
			}
		})
		t.Run("wrong EK", func(t *testing.T) {
			// The host claims an EK it does not hold: the challenge is
			// encrypted to that key and this TPM cannot activate it.
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			ek, _ := tpm2.Unmarshal[tpm2.TPMTPublic](req.EKPublic)
			pt, _ := k.PublicKey.Bytes()
			ek.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: pt[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: pt[33:]}})
			r := *req
			r.EKPublic = tpm2.Marshal(ek)
			v := NewVerifier(VerifierConfig{})
			ch, err := v.BeginEnroll(r)
			if err != nil {
				t.Fatal(err)
			}
			secret, err := tp.ActivateCredential(ctx, ch)
			if err == nil {
				t.Fatalf("activation with a foreign EK succeeded (%x)", secret)
			}
			if _, err := v.FinishEnroll(ch.HostID, secret); !errors.Is(err, ErrEnroll) {
				t.Fatalf("finish: %v, want ErrEnroll", err)
			}
		})
		t.Run("wrong returned secret, then right one", func(t *testing.T) {
			v := NewVerifier(VerifierConfig{})
			ch, err := v.BeginEnroll(*req)
			if err != nil {
				t.Fatal(err)
			}
			secret, err := tp.ActivateCredential(ctx, ch)
			if err != nil {
				t.Fatal(err)
			}
			bad := bytes.Clone(secret)
			bad[0] ^= 1
			if _, err := v.FinishEnroll(ch.HostID, bad); !errors.Is(err, ErrEnroll) {
				t.Fatalf("wrong secret: %v, want ErrEnroll", err)
			}
			if _, err := v.FinishEnroll(ch.HostID, secret); !errors.Is(err, ErrEnroll) {
				t.Fatalf("right secret after a wrong one: %v, want ErrEnroll (single use)", err)
			}
			if _, ok := v.Host(ch.HostID); ok {
				t.Fatal("host enrolled after failed activation")
			}
		})
		t.Run("credential for another AK", func(t *testing.T) {
			// A verifier's challenge names the AK; a TPM holding the EK but
			// activating with a different AK must fail.
			v := NewVerifier(VerifierConfig{})
			r := *req
			other := akTemplate()
			other.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{2}, 32)},
				Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}})
			err := tp.do(ctx, func(tr transportTPM) error {
				rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(other)}.Execute(tr)
				if err != nil {
					return err
				}
				flush(tr, rsp.ObjectHandle)
				r.AKPublic = rsp.OutPublic.Bytes()
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			ch, err := v.BeginEnroll(r)
			if err != nil {
				t.Fatal(err)
			}
			if s, err := tp.ActivateCredential(ctx, ch); err == nil {
				t.Fatalf("activation for another AK succeeded (%x)", s)
			}
		})
	})
}

// TestChannelBinding: a quote bound to one secure channel verifies only
// for that channel, and its binding cannot be swapped or removed.
func TestChannelBinding(t *testing.T) {
	h := newHost(t, openSim(t))
	sessA := bytes.Repeat([]byte{0xa}, 32)
	sessB := bytes.Repeat([]byte{0xb}, 32)
	bound := func(t *testing.T) *Evidence {
		ch, err := h.v.Challenge(migID)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := h.tp.AttestBound(context.Background(), ch, h.id.HostID, h.eph.PublicKey().Bytes(), sessA, []int{h.log.PCR}, h.log)
		if err != nil {
			t.Fatalf("attest: %v", err)
		}
		return ev
	}
	expect := func(b []byte) Expect {
		return Expect{MigrationID: migID, EphemeralPub: h.eph.PublicKey().Bytes(), ChannelBinding: b}
	}
	for _, tc := range []struct {
		name    string
		want    []byte
		tamper  func(ev *Evidence)
		wantErr error
	}{
		{name: "same channel", want: sessA},
		{name: "another channel", want: sessB, wantErr: ErrBinding},
		{name: "binding swapped in evidence", want: sessB, tamper: func(ev *Evidence) { ev.ChannelBinding = sessB }, wantErr: ErrBinding},
		{name: "binding removed", want: nil, tamper: func(ev *Evidence) { ev.ChannelBinding = nil }, wantErr: ErrBinding},
		{name: "oversized binding", want: sessA, tamper: func(ev *Evidence) { ev.ChannelBinding = make([]byte, MaxChannelBinding+1) }, wantErr: ErrEvidence},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := bound(t)
			if tc.tamper != nil {
				tc.tamper(ev)
			}
			res, err := h.v.Verify(ev, expect(tc.want), h.policy)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("verify: %v", err)
				}
				if res.HostID != h.id.HostID {
					t.Fatalf("host %q", res.HostID)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("verify: got %v, want %v", err, tc.wantErr)
			}
		})
	}
	// Unbound extra data is unchanged by the new function.
	n := bytes.Repeat([]byte{1}, 32)
	if !bytes.Equal(QuoteExtraData(n, "m", "h", nil), QuoteExtraDataBound(n, "m", "h", nil, nil)) {
		t.Fatal("QuoteExtraDataBound without a binding differs from QuoteExtraData")
	}
	if bytes.Equal(QuoteExtraDataBound(n, "m", "h", nil, sessA), QuoteExtraDataBound(n, "m", "h", nil, sessB)) {
		t.Fatal("two bindings give the same extra data")
	}
}
