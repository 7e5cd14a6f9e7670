package gate

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gvmm/gvmm/migration"
	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/tpm"
)

const (
	exeV1 = "gvmm executable v1"
	exeV2 = "gvmm executable v2"
)

// stdWorld is Tom's laptop (the VM's host; it never attests), Tom's
// desktop (simulator TPM, running gvmm v2), Bob's PC, and a policy for
// Tom's VM that lets its owner move it between Tom's devices running v2.
func stdWorld(t testing.TB, rules func(*policy.Rules)) *world {
	t.Helper()
	w := newWorld(t,
		hostSpec{name: "laptop", groups: []string{"tom-devices"}, owner: "tom", tpm: noTPM, exe: exeV2},
		hostSpec{name: "desktop", groups: []string{"tom-devices"}, owner: "tom", tpm: simTPM, exe: exeV2},
		hostSpec{name: "bob-pc", groups: []string{"bob-devices"}, owner: "bob", tpm: noTPM, exe: exeV2},
	)
	w.installTomPolicy(rules)
	w.installHostPolicy(w.hosts["desktop"], "tom", policy.HostPolicy{Version: 1,
		AcceptOwners: []policy.KeyID{w.uid("tom")}, AcceptSources: []string{"group:tom-devices"}})
	return w
}

func (w *world) installTomPolicy(rules func(*policy.Rules)) {
	r := policy.Rules{
		Migrators:    []string{"role:owner"},
		Destinations: []string{"group:tom-devices"},
		MinTrust:     "software-tpm",
		Measurements: []policy.Measurement{{Executable: exeDigest(exeV2), Version: "v2"}},
	}
	if rules != nil {
		rules(&r)
	}
	w.installVMPolicy(w.hosts["laptop"], "tom", policy.OwnerLayer{VM: "tom-vm", Version: 1, Owner: w.uid("tom"), Rules: r}, nil)
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// try runs one whole migration of a fresh guest from src to dst.
func (w *world) try(t testing.TB, signed *policy.Signed, src, dst *testHost) *attempt {
	t.Helper()
	ln := listen(t)
	ctx := context.Background()
	s := &Source{Host: src.host}
	return runAttempt(t, ctx, func() (*Outcome, error) { return s.Run(ctx, signed, ln.Addr().String()) },
		&Destination{Host: dst.host}, ln, ln.Addr().String())
}

// TestAllowedMigration: Tom moves his VM from his laptop to his desktop.
// Both sides hold the same fresh key, every step is decided and audited on
// both hosts, the guest arrives, and the destination installs its policy.
func TestAllowedMigration(t *testing.T) {
	w := stdWorld(t, nil)
	lap, desk := w.hosts["laptop"], w.hosts["desktop"]
	at := w.try(t, w.migrate("tom", "tom-vm", lap, desk), lap, desk)
	if at.srcErr != nil || at.dstErr != nil {
		t.Fatalf("source: %v; destination: %v", at.srcErr, at.dstErr)
	}
	if !at.arrived() {
		t.Fatal("the guest did not arrive intact")
	}
	if !bytes.Equal(at.out.Key.Bytes(), at.acc.Key.Bytes()) {
		t.Fatal("source and destination hold different keys")
	}
	if !at.out.Final.Final() || at.out.Attestation.Trust != tpm.TrustSoftware || at.out.MigrationID != at.acc.MigrationID {
		t.Fatalf("outcome %+v", at.out)
	}
	if at.out.Requester.Name != "tom" || at.acc.Source.Name != "laptop" {
		t.Fatalf("requester %q, source %q", at.out.Requester.Name, at.acc.Source.Name)
	}
	tm := at.out.Timings
	if tm.Authenticate <= 0 || tm.Attest <= 0 || tm.Decide <= 0 || tm.Release <= 0 || tm.Total < tm.Attest {
		t.Fatalf("timings %+v", tm)
	}
	kinds := func(h *testHost) (s []string) {
		for _, r := range auditRecords(t, h) {
			if r.Event.Kind == KindMigrateOut || r.Event.Kind == KindMigrateIn {
				s = append(s, r.Event.Kind+":"+string(r.Event.Decision.Stage))
				if !r.Event.Decision.Allow {
					t.Errorf("%s audited a refusal: %+v", h.spec.name, r.Event.Decision)
				}
			}
		}
		return s
	}
	if got := strings.Join(kinds(lap), " "); got != "migrate-out:pre-attestation migrate-out:attested migrate-in:attested" {
		t.Errorf("laptop audit: %s", got)
	}
	if got := strings.Join(kinds(desk), " "); got != "migrate-in:attested" {
		t.Errorf("desktop audit: %s", got)
	}
	d := &Destination{Host: desk.host}
	if err := d.Commit(at.acc); err != nil {
		t.Fatal(err)
	}
	if _, ok := desk.host.State.VMPolicy("tom-vm"); !ok {
		t.Fatal("the destination did not keep the VM's policy")
	}
	// Saved in the sealed store: a reopened host has it.
	w.open(desk)
	if _, ok := desk.host.State.VMPolicy("tom-vm"); !ok {
		t.Fatal("the VM's policy did not survive a reopen")
	}
}

// TestRefusals: each refusal fails closed, before the first page, with
// the rule and reason in the deciding host's audit log, and the guest is
// never paused.
func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules func(*policy.Rules)
		// req makes the signed request; dst names the destination.
		user, dst string
		req       func(w *world) *policy.Signed
		setup     func(w *world)
		// where the refusal is audited, its rule and reason.
		auditOn, rule, reason string
		remote                bool
	}{
		{name: "requester without the role", user: "bob", dst: "desktop",
			auditOn: "laptop", rule: "migrators", reason: "bob"},
		{name: "destination outside the allowed hosts", user: "tom", dst: "bob-pc",
			auditOn: "laptop", rule: "destinations", reason: "bob-pc"},
		{name: "destination below the trust level", user: "tom", dst: "desktop",
			rules:   func(r *policy.Rules) { r.MinTrust = "hardware-tpm-ek-cert" },
			auditOn: "laptop", rule: "min_trust", reason: "software-tpm"},
		{name: "vm marked not to leave", user: "tom", dst: "desktop",
			rules:   func(r *policy.Rules) { r.Pinned = true },
			auditOn: "laptop", rule: "pinned", reason: "pins"},
		{name: "forged request signature", dst: "desktop",
			req: func(w *world) *policy.Signed {
				s := w.migrate("tom", "tom-vm", w.hosts["laptop"], w.hosts["desktop"])
				s.Body = bytes.Replace(s.Body, []byte("tom-vm"), []byte("tom-vn"), 1)
				return s
			},
			auditOn: "laptop", rule: "authenticate", reason: "signature"},
		{name: "request signed by an unknown key", dst: "desktop",
			req: func(w *world) *policy.Signed {
				_, k, _ := ed25519.GenerateKey(rand.Reader)
				w.users["mallory"] = k
				return w.migrate("mallory", "tom-vm", w.hosts["laptop"], w.hosts["desktop"])
			},
			auditOn: "laptop", rule: "authenticate", reason: "unknown"},
		{name: "request for another host", dst: "desktop",
			req: func(w *world) *policy.Signed {
				return w.request("tom", w.hosts["bob-pc"], policy.Request{Action: policy.ActionMigrate, VM: "tom-vm", Destination: w.hosts["desktop"].id()})
			},
			auditOn: "laptop", rule: "authenticate", reason: "addressed to host"},
		{name: "vm without a policy", dst: "desktop",
			req: func(w *world) *policy.Signed {
				return w.migrate("tom", "other-vm", w.hosts["laptop"], w.hosts["desktop"])
			},
			auditOn: "laptop", rule: "vm-policy", reason: "no policy"},
		{name: "outdated destination", user: "tom", dst: "desktop",
			rules: func(r *policy.Rules) {
				r.Measurements = []policy.Measurement{{Executable: exeDigest("gvmm v3"), Version: "v3"}}
			},
			auditOn: "laptop", rule: "measurements", reason: "v3"},
		{name: "destination's migrate-in policy refuses the owner", user: "tom", dst: "desktop",
			setup: func(w *world) {
				w.installHostPolicy(w.hosts["desktop"], "tom", policy.HostPolicy{Version: 2,
					AcceptOwners: []policy.KeyID{w.uid("bob")}, AcceptSources: []string{"group:tom-devices"}})
			},
			auditOn: "desktop", rule: "accept", reason: "not accepted", remote: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := stdWorld(t, tc.rules)
			if tc.setup != nil {
				tc.setup(w)
			}
			lap, dst := w.hosts["laptop"], w.hosts[tc.dst]
			var signed *policy.Signed
			if tc.req != nil {
				signed = tc.req(w)
			} else {
				signed = w.migrate(tc.user, "tom-vm", lap, dst)
			}
			at := w.try(t, signed, lap, dst)
			r := at.refusedKeepsRunning(t)
			if r.Remote != tc.remote {
				t.Errorf("refusal remote=%v, want %v: %v", r.Remote, tc.remote, r)
			}
			wantAuditRefusal(t, w.hosts[tc.auditOn], tc.rule, tc.reason)
			if tc.remote {
				// The source records the destination's refusal too.
				wantAuditRefusal(t, lap, tc.rule, tc.reason)
			}
		})
	}
}

// TestRequestReplayed: a signed request works once, even across a restart
// of gvmm (the used nonce is in the sealed state).
func TestRequestReplayed(t *testing.T) {
	w := stdWorld(t, nil)
	lap, desk := w.hosts["laptop"], w.hosts["desktop"]
	signed := w.migrate("tom", "tom-vm", lap, desk)
	if at := w.try(t, signed, lap, desk); !at.arrived() {
		t.Fatalf("first migration: %v / %v", at.srcErr, at.dstErr)
	}
	w.open(lap)
	at := w.try(t, signed, lap, desk)
	at.refusedKeepsRunning(t)
	wantAuditRefusal(t, lap, "authenticate", "replayed")
}

// TestRemediation: an outdated destination is refused with what it must
// run; it updates (an approved new build), measures again in a fresh
// launch, and the source's retry of the same request succeeds.
func TestRemediation(t *testing.T) {
	w := newWorld(t,
		hostSpec{name: "laptop", groups: []string{"tom-devices"}, owner: "tom", tpm: noTPM, exe: exeV2},
		hostSpec{name: "office", groups: []string{"tom-devices"}, owner: "it", tpm: simTPM, exe: exeV1, approved: []string{exeV2}},
	)
	w.installTomPolicy(nil)
	off, lap := w.hosts["office"], w.hosts["laptop"]
	w.installHostPolicy(off, "it", policy.HostPolicy{Version: 1, AcceptOwners: []policy.KeyID{w.uid("tom")}, AcceptSources: []string{"group:tom-devices"}})

	ctx := context.Background()
	var lines []string
	s := &Source{Host: lap.host, Report: func(l string) { lines = append(lines, l) }}
	a, err := s.Authorize(w.migrate("tom", "tom-vm", lap, off))
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	at := runAttempt(t, ctx, func() (*Outcome, error) { return a.Handshake(ctx, ln.Addr().String()) }, &Destination{Host: off.host}, ln, ln.Addr().String())
	r := at.refusedKeepsRunning(t)
	rem := r.Decision.Remediation
	if rem == nil || rem.Have != exeDigest(exeV1) || len(rem.Acceptable) != 1 || rem.Acceptable[0].Executable != exeDigest(exeV2) {
		t.Fatalf("refusal %+v, remediation %+v", r.Decision, rem)
	}
	// The destination was told, with the remediation.
	dr, ok := isRefused(at.dstErr)
	if !ok || !dr.Remote || dr.Decision.Remediation == nil || dr.Decision.Remediation.Acceptable[0].Version != "v2" {
		t.Fatalf("destination's error %v", at.dstErr)
	}
	wantAuditRefusal(t, off, "measurements", "v2")
	wantAuditRefusal(t, lap, "measurements", "v2")

	// The update: the new build replaces the executable; gvmm launches
	// again, measuring it (the approved build unseals the store).
	if err := os.WriteFile(off.exePath, []byte(exeV2), 0o755); err != nil {
		t.Fatal(err)
	}
	w.open(off)
	ln2 := listen(t)
	at = runAttempt(t, ctx, func() (*Outcome, error) { return a.Handshake(ctx, ln2.Addr().String()) }, &Destination{Host: off.host}, ln2, ln2.Addr().String())
	if !at.arrived() {
		t.Fatalf("retry after the update: %v / %v", at.srcErr, at.dstErr)
	}
	if got := at.out.Attestation.Executable; exeDigest(exeV2) != hex.EncodeToString(got[:]) {
		t.Fatalf("attested executable %x", got)
	}
}

// TestChangedBinaryCannotUnseal: a gvmm changed after its store was
// sealed cannot open the store, so it has no policies, no host key and
// cannot migrate anything.
func TestChangedBinaryCannotUnseal(t *testing.T) {
	w := newWorld(t, hostSpec{name: "desktop", groups: []string{"tom-devices"}, tpm: simTPM, exe: exeV1})
	h := w.hosts["desktop"]
	if err := os.WriteFile(h.exePath, []byte(exeV1+" with a backdoor"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := OpenHost(context.Background(), h.tp, h.dir, OpenOptions{Executable: h.exePath, NeedState: true})
	if err == nil || !errors.Is(err, tpm.ErrUnseal) {
		t.Fatalf("a changed gvmm opened the store: %v", err)
	}
	wantAuditRefusal(t, h, "sealed-state", "do not unseal")
	// The unchanged build still does, once the launch is fresh.
	if err := os.WriteFile(h.exePath, []byte(exeV1), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenHost(context.Background(), h.tp, h.dir, OpenOptions{Executable: h.exePath, NeedState: true}); err != nil {
		t.Fatalf("the sealed build: %v", err)
	}
}

// TestPolicyChangedOnDisk: the policy state is an AEAD blob under the
// sealed key; editing it, or putting another host's in its place, makes
// the host refuse to open it.
func TestPolicyChangedOnDisk(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, w *world, path string)
	}{
		{"a byte flipped", func(t *testing.T, w *world, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 1
			os.WriteFile(path, b, 0o600)
		}},
		{"another host's state", func(t *testing.T, w *world, path string) {
			b, err := os.ReadFile(filepath.Join(w.hosts["laptop"].dir, "blobs", policy.StateBlob))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(path, b, 0o600)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := stdWorld(t, nil)
			h := w.hosts["desktop"]
			tc.change(t, w, filepath.Join(h.dir, "blobs", policy.StateBlob))
			_, err := OpenHost(context.Background(), h.tp, h.dir, OpenOptions{Executable: h.exePath, NeedState: true})
			if !errors.Is(err, tpm.ErrBlob) {
				t.Fatalf("opened a changed policy state: %v", err)
			}
			wantAuditRefusal(t, h, "policy-state", "authentication failed")
		})
	}
}

// TestTamperedPolicyInTransit: a VM policy whose signature does not hold
// is refused by the destination before it quotes anything.
func TestTamperedPolicyInTransit(t *testing.T) {
	w := stdWorld(t, nil)
	lap, desk := w.hosts["laptop"], w.hosts["desktop"]
	pol, _ := lap.host.State.VMPolicy("tom-vm")
	doc := *pol.Doc()
	owner := *doc.Owner
	owner.Body = bytes.Replace(owner.Body, []byte(`"pinned"`), []byte(`"pinneD"`), 1)
	owner.Body = bytes.Replace(owner.Body, []byte(`"version":1`), []byte(`"version":9`), 1)
	doc.Owner = &owner

	ln := listen(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { _, err := (&Destination{Host: desk.host}).Accept(ctx, ln); errc <- err }()
	conn := rawClient(t, lap, desk, ln.Addr().String())
	ch, _ := lap.host.Verifier.Challenge("m-tampered")
	if err := writeMsg(conn, &message{Type: msgHello, Version: protocolVersion, MigrationID: "m-tampered", VM: "tom-vm", VMPolicy: &doc, Challenge: ch}); err != nil {
		t.Fatal(err)
	}
	m, err := readMsg(conn, msgEvidence)
	if err != nil || m.Type != msgRefuse {
		t.Fatalf("destination answered %+v, %v", m, err)
	}
	if _, ok := isRefused(<-errc); !ok {
		t.Fatal("destination did not refuse")
	}
	wantAuditRefusal(t, desk, "vm-policy", "signature")
}

// rawClient opens the control connection as host from, pinned to to.
func rawClient(t testing.TB, from, to *testHost, addr string) *tls.Conn {
	t.Helper()
	cfg, err := tlsConfig(from.host, to.id())
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRelayedAttestation: a host between the source and the real
// destination relays the destination's quote. It is bound to another TLS
// session (and to another host), so the source refuses it.
func TestRelayedAttestation(t *testing.T) {
	for _, tc := range []struct {
		name string
		// rewrite changes the relayed evidence.
		rewrite func(ev *tpm.Evidence, binding []byte)
		reason  string
	}{
		{"as made", func(*tpm.Evidence, []byte) {}, "another secure channel"},
		{"binding rewritten to the source's session", func(ev *tpm.Evidence, b []byte) { ev.ChannelBinding = b }, "extra data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t,
				hostSpec{name: "laptop", groups: []string{"tom-devices"}, owner: "tom", tpm: noTPM, exe: exeV2},
				hostSpec{name: "desktop", groups: []string{"tom-devices"}, owner: "tom", tpm: simTPM, exe: exeV2},
				hostSpec{name: "relay", groups: []string{"tom-devices"}, owner: "tom", tpm: noTPM, exe: exeV2},
			)
			w.installTomPolicy(nil)
			lap, desk, relay := w.hosts["laptop"], w.hosts["desktop"], w.hosts["relay"]
			w.installHostPolicy(desk, "tom", policy.HostPolicy{Version: 1, AcceptOwners: []policy.KeyID{w.uid("tom")}, AcceptSources: []string{"group:tom-devices"}})

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			deskLn, relayLn := listen(t), listen(t)
			go (&Destination{Host: desk.host}).Accept(ctx, deskLn)
			// The relay: the source's destination on one side, a source
			// to the desktop on the other.
			go func() {
				c, err := relayLn.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				cfg, _ := tlsConfig(relay.host, "")
				in := tls.Server(c, cfg)
				if in.Handshake() != nil {
					return
				}
				inB, _ := channelBinding(in)
				out := rawClient(t, relay, desk, deskLn.Addr().String())
				hello, err := readMsg(in, msgHello)
				if err != nil {
					return
				}
				writeMsg(out, hello)
				ev, err := readMsg(out, msgEvidence)
				if err != nil {
					return
				}
				if ev.Evidence != nil {
					tc.rewrite(ev.Evidence, inB)
				}
				writeMsg(in, ev)
				io.Copy(io.Discard, in)
			}()
			s := &Source{Host: lap.host}
			_, err := s.Run(ctx, w.migrate("tom", "tom-vm", lap, relay), relayLn.Addr().String())
			if r, ok := isRefused(err); !ok || r.Decision.Rule != "attestation" {
				t.Fatalf("source accepted a relayed quote: %v", err)
			}
			wantAuditRefusal(t, lap, "attestation", tc.reason)
		})
	}
}

// TestKeyOnlyForAttestedDestination: after the desktop attested and got
// the key, another host that takes the data connections cannot receive
// (it has no key: the stream does not authenticate), and the source
// resumes its guest.
func TestKeyOnlyForAttestedDestination(t *testing.T) {
	w := stdWorld(t, nil)
	lap, desk := w.hosts["laptop"], w.hosts["desktop"]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ln, other := listen(t), listen(t)
	accepted := make(chan *Accepted, 1)
	go func() {
		a, _ := (&Destination{Host: desk.host}).Accept(ctx, ln)
		accepted <- a
	}()
	out, err := (&Source{Host: lap.host}).Run(ctx, w.migrate("tom", "tom-vm", lap, desk), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer out.Key.Destroy()
	if a := <-accepted; a == nil {
		t.Fatal("desktop did not accept")
	} else {
		a.Key.Destroy()
	}
	// The other host guesses a key.
	guess := make([]byte, 32)
	rand.Read(guess)
	recvErr := make(chan error, 1)
	go func() {
		_, err := migration.Receive(ctx, other, guess, newFakeDest(), migration.ReceiveOptions{})
		recvErr <- err
	}()
	vm := newFakeMachine()
	conns, err := dialN(ctx, other.Addr().String(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := migration.Migrate(ctx, vm, conns, out.Key.Bytes(), migration.Options{}); err == nil {
		t.Fatal("migrated to a host without the key")
	}
	if err := <-recvErr; err == nil || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("the other host's receive: %v", err)
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if !vm.running {
		t.Fatal("the source guest does not run")
	}
}

// recorder is a TCP proxy that records what the source sends.
type recorder struct {
	mu   sync.Mutex
	sent [][]byte
}

func (r *recorder) proxy(t testing.TB, to string) string {
	t.Helper()
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			i := len(r.sent)
			r.sent = append(r.sent, nil)
			r.mu.Unlock()
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", to)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { io.Copy(c, u); c.Close() }()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						r.mu.Lock()
						r.sent[i] = append(r.sent[i], buf[:n]...)
						r.mu.Unlock()
						u.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestReplayedStream: the data connections of an earlier migration,
// replayed to the destination of a later one, do not authenticate under
// the later migration's fresh key.
func TestReplayedStream(t *testing.T) {
	w := stdWorld(t, nil)
	lap, desk := w.hosts["laptop"], w.hosts["desktop"]
	ctx := context.Background()
	ln := listen(t)
	rec := &recorder{}
	via := rec.proxy(t, ln.Addr().String())
	s := &Source{Host: lap.host}
	first := runAttempt(t, ctx, func() (*Outcome, error) { return s.Run(ctx, w.migrate("tom", "tom-vm", lap, desk), ln.Addr().String()) },
		&Destination{Host: desk.host}, ln, via)
	if !first.arrived() {
		t.Fatalf("first migration: %v / %v", first.srcErr, first.dstErr)
	}
	rec.mu.Lock()
	recorded := rec.sent
	rec.mu.Unlock()
	if len(recorded) != 2 || len(recorded[0]) == 0 {
		t.Fatalf("recorded %d connections", len(recorded))
	}

	// A second migration is authorized; an attacker replays the first
	// stream to its destination instead of the source's.
	ln2 := listen(t)
	ctx2, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	recvErr := make(chan error, 1)
	go func() {
		acc, err := (&Destination{Host: desk.host}).Accept(ctx2, ln2)
		if err != nil {
			recvErr <- err
			return
		}
		defer acc.Key.Destroy()
		_, err = migration.Receive(ctx2, ln2, acc.Key.Bytes(), newFakeDest(), migration.ReceiveOptions{})
		recvErr <- err
	}()
	out, err := s.Run(ctx2, w.migrate("tom", "tom-vm", lap, desk), ln2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer out.Key.Destroy()
	if bytes.Equal(out.Key.Bytes(), first.out.Key.Bytes()) {
		t.Fatal("two migrations got the same key")
	}
	for _, b := range recorded {
		c, err := net.Dial("tcp", ln2.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go c.Write(b)
	}
	if err := <-recvErr; err == nil || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("replayed stream: %v", err)
	}
}

// TestManInTheMiddle: a host without a key in the directory cannot stand
// in for the destination (the source refuses its TLS), nor connect to the
// destination (which records and drops it, then serves the real source);
// and bytes changed on the data connections fail the stream, with the
// source guest running on.
func TestManInTheMiddle(t *testing.T) {
	w := stdWorld(t, nil)
	lap, desk := w.hosts["laptop"], w.hosts["desktop"]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A MITM with its own key, in front of the source.
	_, mk, _ := ed25519.GenerateKey(rand.Reader)
	cert, err := certificate(mk, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	mitm := listen(t)
	go func() {
		c, err := mitm.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert})
		tc.Handshake()
		io.Copy(io.Discard, tc)
	}()
	_, err = (&Source{Host: lap.host}).Run(ctx, w.migrate("tom", "tom-vm", lap, desk), mitm.Addr().String())
	if r, ok := isRefused(err); !ok || r.Decision.Rule != "mutual-tls" {
		t.Fatalf("source with a MITM: %v", err)
	}
	wantAuditRefusal(t, lap, "mutual-tls", "did not authenticate")

	// The MITM connects to the destination first; then the real source.
	ln := listen(t)
	s := &Source{Host: lap.host}
	at := runAttempt(t, ctx, func() (*Outcome, error) {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true})
		if err == nil {
			c.Read(make([]byte, 1))
			c.Close()
		}
		return s.Run(ctx, w.migrate("tom", "tom-vm", lap, desk), ln.Addr().String())
	}, &Destination{Host: desk.host}, ln, ln.Addr().String())
	if !at.arrived() {
		t.Fatalf("migration after a MITM attempt: %v / %v", at.srcErr, at.dstErr)
	}
	found := false
	for _, r := range auditRecords(t, desk) {
		if r.Event.Decision.Rule == "mutual-tls" && !r.Event.Decision.Allow {
			found = true
		}
	}
	if !found {
		t.Fatal("the destination did not audit the MITM's connection")
	}

	// A MITM that flips a byte on the data connections.
	ln = listen(t)
	flip := tamperProxy(t, ln.Addr().String(), 20000)
	at = runAttempt(t, ctx, func() (*Outcome, error) { return s.Run(ctx, w.migrate("tom", "tom-vm", lap, desk), ln.Addr().String()) },
		&Destination{Host: desk.host}, ln, flip)
	if at.srcErr == nil || at.dstErr == nil || !strings.Contains(at.dstErr.Error(), "authentication") {
		t.Fatalf("a tampered stream: source %v / destination %v", at.srcErr, at.dstErr)
	}
	at.vm.mu.Lock()
	running := at.vm.running
	at.vm.mu.Unlock()
	if !running {
		t.Fatal("the source guest does not run after a failed migration")
	}
}

// tamperProxy forwards TCP to to, flipping the byte at offset off of each
// connection from the source.
func tamperProxy(t testing.TB, to string, off int) string {
	t.Helper()
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", to)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { io.Copy(c, u); c.Close() }()
				buf := make([]byte, 4096)
				n := 0
				for {
					k, err := c.Read(buf)
					if k > 0 {
						if n <= off && off < n+k {
							buf[off-n] ^= 0x40
						}
						n += k
						if _, werr := u.Write(buf[:k]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestSourceAttestation: a destination whose policy requires the source
// to attest gets its quote (bound to the same session) and decides with
// it; a source below the required level is refused by the destination.
func TestSourceAttestation(t *testing.T) {
	for _, tc := range []struct {
		name, minTrust string
		ok             bool
	}{
		{"software source accepted", "software-tpm", true},
		{"source below the level", "hardware-tpm-ek-cert", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t,
				hostSpec{name: "laptop", groups: []string{"tom-devices"}, owner: "tom", tpm: swtpmTPM, exe: exeV2},
				hostSpec{name: "desktop", groups: []string{"tom-devices"}, owner: "tom", tpm: simTPM, exe: exeV2},
			)
			w.installTomPolicy(nil)
			lap, desk := w.hosts["laptop"], w.hosts["desktop"]
			w.installHostPolicy(desk, "tom", policy.HostPolicy{Version: 1, AcceptOwners: []policy.KeyID{w.uid("tom")},
				AcceptSources: []string{"group:tom-devices"}, RequireSourceAttestation: true, MinSourceTrust: tc.minTrust})
			at := w.try(t, w.migrate("tom", "tom-vm", lap, desk), lap, desk)
			if tc.ok {
				if !at.arrived() || at.acc.SourceAttestation == nil || at.acc.SourceAttestation.HostID != lap.tpmID {
					t.Fatalf("%v / %v", at.srcErr, at.dstErr)
				}
				return
			}
			r := at.refusedKeepsRunning(t)
			if !r.Remote {
				t.Fatalf("refusal %v not the destination's", r)
			}
			wantAuditRefusal(t, desk, "min_source_trust", "software-tpm")
		})
	}
}

// TestSourceRuntime: a destination that requires the source's run-time
// measurement gets a report that the source's quote covers, and decides on
// its contents; a source without one, or with a changed region or kernel
// range, is refused and keeps running. Each attempt adds one run-time
// event to the source's log, and later attempts still verify.
func TestSourceRuntime(t *testing.T) {
	dig := func(s string) string { d := sha256.Sum256([]byte(s)); return hex.EncodeToString(d[:]) }
	text, patched, region := dig("kernel text"), dig("patched text"), dig("region")
	measure := func(textDigest string, unexpected bool) func(context.Context) (*policy.RuntimeReport, error) {
		return func(context.Context) (*policy.RuntimeReport, error) {
			return &policy.RuntimeReport{
				Violations: 2,
				Regions:    []policy.RuntimeRegion{{ID: 1, Mode: "integrity", Owner: 0x5000, Length: 4096, SHA256: region, Unexpected: unexpected}},
				Ranges:     []policy.RuntimeRange{{Name: "text", GPA: 0x1000000, Size: 1 << 20, SHA256: textDigest}},
			}, nil
		}
	}
	tests := []struct {
		name    string
		runtime func(context.Context) (*policy.RuntimeReport, error)
		ok      bool
		rule    string // the destination's refusing rule
	}{
		{"clean report", measure(text, false), true, ""},
		{"no run-time measurement", nil, false, "source-runtime"},
		{"kernel range patched", measure(patched, false), false, "require_ranges"},
		{"region changed unexpectedly", measure(text, true), false, "require_source_runtime"},
		{"measurement fails", func(context.Context) (*policy.RuntimeReport, error) { return nil, errors.New("guest memory gone") }, false, ""},
	}
	w := newWorld(t,
		hostSpec{name: "laptop", groups: []string{"tom-devices"}, owner: "tom", tpm: swtpmTPM, exe: exeV2},
		hostSpec{name: "desktop", groups: []string{"tom-devices"}, owner: "tom", tpm: simTPM, exe: exeV2},
	)
	w.installTomPolicy(nil)
	lap, desk := w.hosts["laptop"], w.hosts["desktop"]
	w.installHostPolicy(desk, "tom", policy.HostPolicy{Version: 1, AcceptOwners: []policy.KeyID{w.uid("tom")},
		AcceptSources: []string{"group:tom-devices"}, RequireSourceAttestation: true, RequireSourceRuntime: true,
		RequireRanges: []policy.RangeDigest{{Name: "text", SHA256: text}}})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			before := len(lap.host.LaunchLog.Events)
			s := &Source{Host: lap.host, Runtime: tc.runtime}
			signed := w.migrate("tom", "tom-vm", lap, desk)
			ln := listen(t)
			at := runAttempt(t, ctx, func() (*Outcome, error) { return s.Run(ctx, signed, ln.Addr().String()) },
				&Destination{Host: desk.host}, ln, ln.Addr().String())
			if tc.runtime != nil && tc.rule != "" || tc.ok {
				last := lap.host.LaunchLog.Events[len(lap.host.LaunchLog.Events)-1]
				if len(lap.host.LaunchLog.Events) != before+1 || last.Type != tpm.EventRuntime {
					t.Fatalf("source log went from %d to %d events, last %s", before, len(lap.host.LaunchLog.Events), last.Type)
				}
			}
			switch {
			case tc.ok:
				if !at.arrived() {
					t.Fatalf("%v / %v", at.srcErr, at.dstErr)
				}
				rt := at.acc.SourceRuntime
				if rt == nil || rt.VM != "tom-vm" || rt.MigrationID != at.acc.MigrationID || rt.Violations != 2 || len(rt.Ranges) != 1 {
					t.Fatalf("destination's report %+v", rt)
				}
				if !strings.Contains(at.acc.Decision.Rule, "require_ranges text") {
					t.Fatalf("accepting rule %q", at.acc.Decision.Rule)
				}
			case tc.rule != "":
				r := at.refusedKeepsRunning(t)
				if !r.Remote {
					t.Fatalf("refusal %v not the destination's", r)
				}
				wantAuditRefusal(t, desk, tc.rule, "")
			default:
				if at.srcErr == nil || !strings.Contains(at.srcErr.Error(), "guest memory gone") || at.arrived() {
					t.Fatalf("source %v, destination %v", at.srcErr, at.dstErr)
				}
				if len(lap.host.LaunchLog.Events) != before {
					t.Fatal("a failed measurement was extended")
				}
			}
		})
	}
}
