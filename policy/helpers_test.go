package policy

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"testing"
	"time"

	"github.com/gvmm/gvmm/tpm"
)

// world is Tom's small personal cloud, Bob, and the enterprise's IT.
type world struct {
	t                          testing.TB
	keys                       map[string]ed25519.PrivateKey
	dir                        *Directory
	now                        time.Time
	v14, v15                   [32]byte
	tomLaptop, tomDesktop, bob Principal
	office                     Principal
}

func keyFor(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("gvmm policy test key " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

func newWorld(t testing.TB) *world {
	w := &world{t: t, keys: map[string]ed25519.PrivateKey{}, now: time.Unix(1_795_000_000, 0)}
	pub := func(n string) []byte {
		k := keyFor(n)
		w.keys[n] = k
		return k.Public().(ed25519.PublicKey)
	}
	tomKey, itKey := pub("tom"), pub("it")
	ps := []Principal{
		{Name: "tom", Kind: KindUser, Key: tomKey, Roles: []Role{RoleUser}},
		{Name: "bob", Kind: KindUser, Key: pub("bob"), Roles: []Role{RoleUser}},
		{Name: "it", Kind: KindUser, Key: itKey, Roles: []Role{RoleAdmin}},
		{Name: "tom-laptop", Kind: KindHost, Key: pub("tom-laptop"), Groups: []string{"tom-devices"}, TPMHostID: "tpm-laptop", Owner: KeyIDOf(tomKey)},
		{Name: "tom-desktop", Kind: KindHost, Key: pub("tom-desktop"), Groups: []string{"tom-devices"}, TPMHostID: "tpm-desktop", Owner: KeyIDOf(tomKey)},
		{Name: "office", Kind: KindHost, Key: pub("office"), Groups: []string{"office"}, TPMHostID: "tpm-office", Owner: KeyIDOf(itKey)},
		{Name: "bob-pc", Kind: KindHost, Key: pub("bob-pc"), Groups: []string{"bob-devices"}, TPMHostID: "tpm-bob"},
	}
	dir, err := NewDirectory(ps)
	if err != nil {
		t.Fatal(err)
	}
	w.dir = dir
	w.v14 = sha256.Sum256([]byte("gvmm 1.4"))
	w.v15 = sha256.Sum256([]byte("gvmm 1.5"))
	w.tomLaptop, w.tomDesktop, w.office, w.bob = w.host("tom-laptop"), w.host("tom-desktop"), w.host("office"), w.host("bob-pc")
	return w
}

func (w *world) id(name string) KeyID { return KeyIDOf(w.keys[name].Public().(ed25519.PublicKey)) }

func (w *world) host(name string) Principal {
	p, ok := w.dir.Lookup(w.id(name))
	if !ok {
		w.t.Fatalf("no principal %s", name)
	}
	return p
}

func (w *world) m14() Measurement {
	return Measurement{Executable: digestHex(w.v14), Version: "gvmm-1.4"}
}
func (w *world) m15() Measurement {
	return Measurement{Executable: digestHex(w.v15), Version: "gvmm-1.5"}
}

// ownerRules is Tom's layer: he moves his VM between his devices and the
// office, on gvmm 1.4 or 1.5.
func (w *world) ownerRules() Rules {
	return Rules{
		Migrators:    []string{"role:owner"},
		Destinations: []string{"group:tom-devices", "group:office"},
		MinTrust:     "software-tpm",
		Measurements: []Measurement{w.m14(), w.m15()},
	}
}

// entRules is IT's layer: only Tom's devices and the office, gvmm 1.5.
func (w *world) entRules() Rules {
	return Rules{
		Destinations: []string{"group:tom-devices", "group:office"},
		Measurements: []Measurement{w.m15()},
	}
}

func (w *world) ownerLayer(signer string, v uint64, r Rules) *Signed {
	s, err := SignOwnerLayer(w.keys[signer], OwnerLayer{VM: "tom-vm", Version: v, Owner: w.id("tom"), Rules: r})
	if err != nil {
		w.t.Fatal(err)
	}
	return s
}

func (w *world) entLayer(signer string, v uint64, r Rules) *Signed {
	s, err := SignEnterpriseLayer(w.keys[signer], EnterpriseLayer{VM: "tom-vm", Version: v, Rules: r})
	if err != nil {
		w.t.Fatal(err)
	}
	return s
}

func (w *world) doc(owner, ent *Signed) *VMPolicyDoc {
	return &VMPolicyDoc{Owner: owner, Enterprise: ent}
}

func (w *world) verify(d *VMPolicyDoc) *VMPolicy {
	p, err := VerifyVMPolicy(d, w.dir)
	if err != nil {
		w.t.Fatal(err)
	}
	return p
}

// policy is Tom's VM policy with both layers.
func (w *world) policy() *VMPolicy {
	return w.verify(w.doc(w.ownerLayer("tom", 1, w.ownerRules()), w.entLayer("it", 1, w.entRules())))
}

// auth signs and authenticates a request from user at host aud.
func (w *world) auth(user string, aud Principal, r Request) *Authenticated {
	a, err := NewAuthenticator(AuthConfig{Directory: w.dir, Host: aud.ID(), Now: func() time.Time { return w.now }})
	if err != nil {
		w.t.Fatal(err)
	}
	r.Audience, r.IssuedAt = aud.ID(), w.now.Unix()
	s, err := SignRequest(w.keys[user], r)
	if err != nil {
		w.t.Fatal(err)
	}
	ar, err := a.Authenticate(s)
	if err != nil {
		w.t.Fatal(err)
	}
	return ar
}

func (w *world) migrate(user string, from, to Principal) *Authenticated {
	return w.auth(user, from, Request{Action: ActionMigrate, VM: "tom-vm", Destination: to.ID()})
}

func att(h Principal, trust tpm.TrustLevel, exe [32]byte) *Attestation {
	return &Attestation{HostID: h.TPMHostID, Trust: trust, Executable: exe}
}

func mustJSON(t testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
