package gate

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/policy/audit"
	"github.com/gvmm/gvmm/tpm"
)

// TPM kinds a test host can have.
const (
	noTPM    = "none"  // a source that never attests: its store has a random KEK
	simTPM   = "sim"   // the in-process simulator (one at a time)
	swtpmTPM = "swtpm" // a separate swtpm process
)

// hostSpec describes one host of a test world.
type hostSpec struct {
	name   string
	groups []string
	owner  string // user name
	tpm    string
	exe    string // content of its "gvmm executable"
	// approved, when set, seals the host's store to an offline approval
	// key (PolicyAuthorize) that approved exe and these builds.
	approved []string
}

// testHost is one host of a test world.
type testHost struct {
	spec    hostSpec
	dir     string
	exePath string
	key     ed25519.PrivateKey
	tp      *tpm.TPM
	tpmID   string
	store   policy.BlobStore
	host    *Host
}

func (h *testHost) id() policy.KeyID { return policy.KeyIDOf(h.key.Public().(ed25519.PublicKey)) }

// exeDigest is the SHA-256 of a host's executable content.
func exeDigest(content string) string {
	d := sha256.Sum256([]byte(content))
	return hex.EncodeToString(d[:])
}

// world is Tom's small cloud: users tom (owner), bob and it (admin), and
// hosts, each with its own state directory, sealed store, TPM, audit log
// and verifier holding the hosts it enrolled.
type world struct {
	t     testing.TB
	users map[string]ed25519.PrivateKey
	hosts map[string]*testHost
	dir   *policy.Directory
}

func userKey(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("gvmm gate test user " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

func (w *world) uid(name string) policy.KeyID {
	return policy.KeyIDOf(w.users[name].Public().(ed25519.PublicKey))
}

// newWorld builds the hosts, a shared directory in every host's sealed
// state, and enrolls every TPM host with every other host's verifier.
func newWorld(t testing.TB, specs ...hostSpec) *world {
	t.Helper()
	ctx := context.Background()
	w := &world{t: t, users: map[string]ed25519.PrivateKey{}, hosts: map[string]*testHost{}}
	var ps []policy.Principal
	for _, u := range []struct {
		name string
		role policy.Role
	}{{"tom", policy.RoleUser}, {"bob", policy.RoleUser}, {"it", policy.RoleAdmin}} {
		w.users[u.name] = userKey(u.name)
		ps = append(ps, policy.Principal{Name: u.name, Kind: policy.KindUser,
			Key: w.users[u.name].Public().(ed25519.PublicKey), Roles: []policy.Role{u.role}})
	}
	for _, s := range specs {
		h := &testHost{spec: s, dir: t.TempDir()}
		h.exePath = filepath.Join(t.TempDir(), "gvmm")
		if err := os.WriteFile(h.exePath, []byte(s.exe), 0o755); err != nil {
			t.Fatal(err)
		}
		switch s.tpm {
		case noTPM:
			kek := make([]byte, 32)
			rand.Read(kek)
			st, err := tpm.NewStore(h.dir, kek)
			if err != nil {
				t.Fatal(err)
			}
			h.store = st
			h.tpmID = "h-none-" + s.name
		default:
			h.tp = openTPM(t, s.tpm)
			opts := tpm.HostOptions{Launch: tpm.LaunchInputs{Executable: h.exePath}}
			var approver *ecdsa.PrivateKey
			if len(s.approved) > 0 {
				approver, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				opts.Approver, opts.PolicyRef = &approver.PublicKey, tpm.KEKPolicyRef
			}
			info, err := tpm.InitHost(ctx, h.tp, h.dir, opts)
			if err != nil {
				t.Fatalf("init host %s: %v", s.name, err)
			}
			if approver != nil {
				for _, build := range append([]string{s.exe}, s.approved...) {
					p := filepath.Join(t.TempDir(), "gvmm")
					os.WriteFile(p, []byte(build), 0o755)
					a, _, err := tpm.ApproveLaunch(approver, info, tpm.LaunchInputs{Executable: p})
					if err != nil {
						t.Fatal(err)
					}
					if _, err := tpm.SaveApproval(h.dir, a); err != nil {
						t.Fatal(err)
					}
				}
			}
			op, err := OpenHost(ctx, h.tp, h.dir, OpenOptions{Executable: h.exePath})
			if err != nil {
				t.Fatalf("open host %s: %v", s.name, err)
			}
			h.store, h.tpmID = op.Store, op.Info.HostID
		}
		k, err := HostKey(h.store, true)
		if err != nil {
			t.Fatal(err)
		}
		h.key = k
		p := policy.Principal{Name: s.name, Kind: policy.KindHost, Key: k.Public().(ed25519.PublicKey),
			Groups: s.groups, TPMHostID: h.tpmID}
		if s.owner != "" {
			p.Owner = w.uid(s.owner)
		}
		ps = append(ps, p)
		w.hosts[s.name] = h
	}
	dir, err := policy.NewDirectory(ps)
	if err != nil {
		t.Fatal(err)
	}
	w.dir = dir
	for _, h := range w.hosts {
		if err := policy.SaveHostState(h.store, policy.NewHostState(dir)); err != nil {
			t.Fatal(err)
		}
	}
	// Every host enrolls every TPM host but itself.
	for _, v := range w.hosts {
		for _, d := range w.hosts {
			if d != v && d.tp != nil {
				enrollInto(t, v.dir, d.tp)
			}
		}
	}
	for _, h := range w.hosts {
		w.open(h)
	}
	return w
}

// open (re)opens a host's gate state from its directory, as gvmm does.
func (w *world) open(h *testHost) {
	t := w.t
	t.Helper()
	if h.host != nil {
		h.host.Close()
	}
	if h.tp != nil {
		op, err := OpenHost(context.Background(), h.tp, h.dir, OpenOptions{Executable: h.exePath, NeedState: true})
		if err != nil {
			t.Fatalf("open host %s: %v", h.spec.name, err)
		}
		h.host = op.Host
		h.store = op.Store
	} else {
		st, err := policy.LoadHostState(h.store)
		if err != nil {
			t.Fatal(err)
		}
		self, _ := st.Directory().Lookup(h.id())
		v, err := LoadVerifier(h.dir, tpm.VerifierConfig{})
		if err != nil {
			t.Fatal(err)
		}
		al, err := audit.Open(filepath.Join(h.dir, AuditFile), nil)
		if err != nil {
			t.Fatal(err)
		}
		h.host = &Host{Self: self, Key: h.key, State: st, Store: h.store, Verifier: v, Audit: al}
	}
	t.Cleanup(func() { h.host.Close() })
}

// enrollInto enrolls tp with the verifier whose records live in dir.
func enrollInto(t testing.TB, dir string, tp *tpm.TPM) {
	t.Helper()
	ctx := context.Background()
	key, err := tpm.LoadVerifierKey(filepath.Join(dir, VerifierDir), true)
	if err != nil {
		t.Fatal(err)
	}
	v := tpm.NewVerifier(tpm.VerifierConfig{})
	req, err := tp.EnrollRequest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := v.BeginEnroll(*req)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := tp.ActivateCredential(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	eh, err := v.FinishEnroll(ch.HostID, secret)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := tpm.NewEnrolledRecord(key, eh, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, EnrolledDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, EnrolledDir, ch.HostID+".json"), rec, 0o600); err != nil {
		t.Fatal(err)
	}
}

// openTPM opens a fresh TPM of a kind.
func openTPM(t testing.TB, kind string) *tpm.TPM {
	t.Helper()
	uri := "sim"
	switch kind {
	case simTPM:
		if !tpm.SimulatorAvailable {
			t.Skip(tpm.ErrSimulatorNeedsCgo.Error())
		}
	case swtpmTPM:
		uri = startSwtpm(t)
	default:
		t.Fatalf("unknown TPM kind %q", kind)
	}
	tp, err := tpm.OpenURI(context.Background(), uri, nil)
	if err != nil {
		t.Fatalf("open TPM %s: %v", uri, err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// startSwtpm starts a fresh swtpm on a unix socket; without swtpm the test
// is skipped, unless GVMM_REQUIRE_SWTPM=1 makes that a failure.
func startSwtpm(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		if os.Getenv("GVMM_REQUIRE_SWTPM") == "1" {
			t.Fatal("swtpm not installed and GVMM_REQUIRE_SWTPM=1")
		}
		t.Skip("swtpm not installed: this test needs a second TPM")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "swtpm.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+sock+".ctrl",
		"--flags", "not-need-init,startup-clear")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-exited:
			t.Fatal("swtpm exited at start-up")
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return "swtpm+unix://" + sock
		}
	}
	t.Fatal("swtpm did not start")
	return ""
}

// request signs a request by user for host h.
func (w *world) request(user string, h *testHost, r policy.Request) *policy.Signed {
	w.t.Helper()
	r.Audience = h.id()
	if r.IssuedAt == 0 {
		r.IssuedAt = time.Now().Unix()
	}
	s, err := policy.SignRequest(w.users[user], r)
	if err != nil {
		w.t.Fatal(err)
	}
	return s
}

// migrate is user's signed request to move vm from src to dst.
func (w *world) migrate(user, vm string, src, dst *testHost) *policy.Signed {
	return w.request(user, src, policy.Request{Action: policy.ActionMigrate, VM: vm, Destination: dst.id()})
}

// installVMPolicy installs vm's policy on h at the owner's request.
func (w *world) installVMPolicy(h *testHost, signer string, ol policy.OwnerLayer, ent *policy.EnterpriseLayer) *policy.VMPolicyDoc {
	t := w.t
	t.Helper()
	os, err := policy.SignOwnerLayer(w.users[signer], ol)
	if err != nil {
		t.Fatal(err)
	}
	doc := &policy.VMPolicyDoc{Owner: os}
	if ent != nil {
		if doc.Enterprise, err = policy.SignEnterpriseLayer(w.users["it"], *ent); err != nil {
			t.Fatal(err)
		}
	}
	enc, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	req := w.authenticate(h, w.request(signer, h, policy.Request{Action: policy.ActionSetVMPolicy, VM: ol.VM, Document: policy.DocumentDigest(enc)}))
	if _, err := h.host.State.SetVMPolicy(req, doc); err != nil {
		t.Fatalf("set vm policy on %s: %v", h.spec.name, err)
	}
	if err := h.host.save(); err != nil {
		t.Fatal(err)
	}
	return doc
}

// installHostPolicy installs h's migrate-in policy, signed by signer.
func (w *world) installHostPolicy(h *testHost, signer string, hp policy.HostPolicy) {
	t := w.t
	t.Helper()
	hp.Host = h.id()
	s, err := policy.SignHostPolicy(w.users[signer], hp)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	req := w.authenticate(h, w.request(signer, h, policy.Request{Action: policy.ActionSetHostPolicy, Document: policy.DocumentDigest(enc)}))
	if _, err := h.host.State.SetHostPolicy(req, s); err != nil {
		t.Fatalf("set host policy on %s: %v", h.spec.name, err)
	}
	if err := h.host.save(); err != nil {
		t.Fatal(err)
	}
}

func (w *world) authenticate(h *testHost, s *policy.Signed) *policy.Authenticated {
	w.t.Helper()
	a, err := policy.NewAuthenticator(policy.AuthConfig{Directory: h.host.State.Directory(), Host: h.id(), Replay: h.host.State.Replay()})
	if err != nil {
		w.t.Fatal(err)
	}
	r, err := a.Authenticate(s)
	if err != nil {
		w.t.Fatalf("authenticate: %v", err)
	}
	return r
}

// auditRecords reads a host's audit log, checking its chain.
func auditRecords(t testing.TB, h *testHost) []audit.Record {
	t.Helper()
	f, err := os.Open(filepath.Join(h.dir, AuditFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := audit.Verify(f); err != nil {
		t.Fatalf("audit log of %s: %v", h.spec.name, err)
	}
	f.Seek(0, 0)
	var out []audit.Record
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, audit.MaxLine+1)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// lastRefusal returns the last refusing record of h's audit log.
func lastRefusal(t testing.TB, h *testHost) (audit.Record, bool) {
	t.Helper()
	rs := auditRecords(t, h)
	for i := len(rs) - 1; i >= 0; i-- {
		if !rs[i].Event.Decision.Allow {
			return rs[i], true
		}
	}
	return audit.Record{}, false
}

// wantAuditRefusal checks that h's audit log ends its refusals with one
// whose rule and reason contain the given words.
func wantAuditRefusal(t testing.TB, h *testHost, rule, reason string) {
	t.Helper()
	r, ok := lastRefusal(t, h)
	if !ok {
		t.Fatalf("no refusal in %s's audit log", h.spec.name)
	}
	if !strings.Contains(r.Event.Decision.Rule, rule) || !strings.Contains(r.Event.Decision.Reason, reason) {
		t.Fatalf("%s's last refusal: rule %q reason %q; want rule ~%q reason ~%q", h.spec.name, r.Event.Decision.Rule, r.Event.Decision.Reason, rule, reason)
	}
}

func isRefused(err error) (*RefusedError, bool) {
	var r *RefusedError
	ok := errors.As(err, &r)
	return r, ok
}
