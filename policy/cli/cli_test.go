package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/policy/audit"
)

type memStore map[string][]byte

func (m memStore) Put(name string, data []byte) error { m[name] = bytes.Clone(data); return nil }
func (m memStore) Get(name string) ([]byte, error) {
	b, ok := m[name]
	if !ok {
		return nil, fmt.Errorf("no blob %s", name)
	}
	return bytes.Clone(b), nil
}

func TestStory(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	now := time.Unix(1_795_000_000, 0)
	var logBuf bytes.Buffer
	store := memStore{}
	opts := Options{Now: func() time.Time { return now }, Store: store, Audit: audit.New(&logBuf, audit.Head{}, nil)}
	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := Main(context.Background(), args, strings.NewReader(""), &out, &errOut, opts)
		return out.String(), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out
	}
	type idKey struct {
		ID  policy.KeyID `json:"id"`
		Key []byte       `json:"key"`
	}
	keygen := func(name string) idKey {
		var k idKey
		if err := json.Unmarshal([]byte(must("keygen", "-out", p(name+".key"))), &k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	tom, bob, it := keygen("tom"), keygen("bob"), keygen("it")
	hostKey := func(n string) ed25519.PublicKey {
		s := sha256.Sum256([]byte(n))
		return ed25519.NewKeyFromSeed(s[:]).Public().(ed25519.PublicKey)
	}
	laptop, desktop := hostKey("laptop"), hostKey("desktop")
	ps := []policy.Principal{
		{Name: "tom", Kind: policy.KindUser, Key: tom.Key},
		{Name: "bob", Kind: policy.KindUser, Key: bob.Key},
		{Name: "it", Kind: policy.KindUser, Key: it.Key, Roles: []policy.Role{policy.RoleAdmin}},
		{Name: "laptop", Kind: policy.KindHost, Key: laptop, Groups: []string{"tom-devices"}, TPMHostID: "tpm-l", Owner: tom.ID},
		{Name: "desktop", Kind: policy.KindHost, Key: desktop, Groups: []string{"tom-devices"}, TPMHostID: "tpm-d", Owner: tom.ID},
	}
	write := func(name string, v any) {
		b, _ := json.Marshal(v)
		if err := os.WriteFile(p(name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("dir.json", ps)
	d, err := policy.NewDirectory(ps)
	if err != nil {
		t.Fatal(err)
	}
	if err := policy.SaveHostState(store, policy.NewHostState(d)); err != nil {
		t.Fatal(err)
	}
	laptopID, desktopID := policy.KeyIDOf(laptop), policy.KeyIDOf(desktop)
	opts.Host = laptopID
	v14, v15 := sha256.Sum256([]byte("1.4")), sha256.Sum256([]byte("1.5"))
	m := func(d [32]byte, v string) policy.Measurement {
		return policy.Measurement{Executable: hex.EncodeToString(d[:]), Version: v}
	}
	write("owner.json", policy.OwnerLayer{VM: "tom-vm", Version: 1, Owner: tom.ID, Rules: policy.Rules{
		Migrators: []string{"role:owner"}, Destinations: []string{"group:tom-devices"}, Measurements: []policy.Measurement{m(v14, "1.4"), m(v15, "1.5")}}})
	write("ent.json", policy.EnterpriseLayer{VM: "tom-vm", Version: 1, Rules: policy.Rules{Measurements: []policy.Measurement{m(v15, "1.5")}}})
	must("sign", "-key", p("tom.key"), "-type", "owner", "-in", p("owner.json"), "-out", p("owner.signed"))
	must("sign", "-key", p("it.key"), "-type", "enterprise", "-in", p("ent.json"), "-out", p("ent.signed"))
	if _, err := run("sign", "-key", p("tom.key"), "-type", "enterprise", "-in", p("ent.json")); err != nil {
		t.Fatal("signing is not checking: anyone may sign, verification refuses")
	}
	must("bundle", "-owner", p("owner.signed"), "-enterprise", p("ent.signed"), "-out", p("policy.json"))
	if out := must("show", "-directory", p("dir.json"), "-policy", p("policy.json")); !strings.Contains(out, `"owner": "tom"`) {
		t.Fatalf("show: %s", out)
	}

	// Tom installs it on his laptop; Bob cannot.
	must("request", "-key", p("bob.key"), "-action", "set-vm-policy", "-audience", string(laptopID), "-vm", "tom-vm", "-document", p("policy.json"), "-out", p("bobset.req"))
	if _, err := run("set", "-request", p("bobset.req"), "-policy", p("policy.json")); !errors.Is(err, policy.ErrForbidden) {
		t.Fatalf("bob set: %v", err)
	}
	must("request", "-key", p("tom.key"), "-action", "set-vm-policy", "-audience", string(laptopID), "-vm", "tom-vm", "-document", p("policy.json"), "-out", p("set.req"))
	must("set", "-request", p("set.req"), "-policy", p("policy.json"))
	if _, err := run("set", "-request", p("set.req"), "-policy", p("policy.json")); !errors.Is(err, policy.ErrReplay) {
		t.Fatalf("replayed set: %v", err)
	}
	if out := must("show", "-vm", "tom-vm"); !strings.Contains(out, `"version": 1`) {
		t.Fatalf("show installed: %s", out)
	}

	// Check Tom's and Bob's migrations.
	decide := func(args ...string) policy.Decision {
		t.Helper()
		var dec policy.Decision
		if err := json.Unmarshal([]byte(must(append([]string{"check"}, args...)...)), &dec); err != nil {
			t.Fatal(err)
		}
		return dec
	}
	must("request", "-key", p("tom.key"), "-action", "migrate", "-audience", string(laptopID), "-vm", "tom-vm", "-destination", string(desktopID), "-out", p("tom.req"))
	must("request", "-key", p("bob.key"), "-action", "migrate", "-audience", string(laptopID), "-vm", "tom-vm", "-destination", string(desktopID), "-out", p("bob.req"))
	if dec := decide("-request", p("tom.req")); !dec.Allow || dec.Stage != policy.StagePrecheck {
		t.Fatalf("tom precheck: %+v", dec)
	}
	if dec := decide("-request", p("tom.req"), "-trust", "software-tpm", "-executable", hex.EncodeToString(v14[:])); dec.Allow || dec.Remediation == nil {
		t.Fatalf("outdated: %+v", dec)
	}
	if dec := decide("-request", p("tom.req"), "-trust", "software-tpm", "-executable", hex.EncodeToString(v15[:])); !dec.Final() {
		t.Fatalf("updated: %+v", dec)
	}
	if dec := decide("-request", p("bob.req"), "-directory", p("dir.json"), "-policy", p("policy.json")); dec.Allow || dec.Rule != "owner v1 migrators" {
		t.Fatalf("bob: %+v", dec)
	}

	h, err := audit.Verify(&logBuf)
	if err != nil || h.Seq != 3 {
		t.Fatalf("audit log: %+v %v", h, err)
	}
	if _, err := run("frobnicate"); !errors.Is(err, ErrUsage) {
		t.Fatalf("unknown subcommand: %v", err)
	}
}
