package policy

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestAuthenticate(t *testing.T) {
	w := newWorld(t)
	now := w.now
	a, err := NewAuthenticator(AuthConfig{Directory: w.dir, Host: w.tomLaptop.ID(), MaxAge: time.Minute, Skew: 10 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	req := func(mut func(*Request)) Request {
		r := Request{Action: ActionMigrate, Audience: w.tomLaptop.ID(), VM: "tom-vm", Destination: w.tomDesktop.ID(), IssuedAt: now.Unix()}
		if mut != nil {
			mut(&r)
		}
		return r
	}
	signed := func(user string, r Request) *Signed {
		s, err := SignRequest(w.keys[user], r)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	replayed := signed("tom", req(nil))
	if _, err := a.Authenticate(replayed); err != nil {
		t.Fatal(err)
	}
	tampered := signed("tom", req(nil))
	tampered.Body[len(tampered.Body)-2] ^= 1
	swapped := signed("bob", req(nil))
	swapped.Signer = w.id("tom") // Bob's request claiming to be Tom's
	stranger, _ := SignRequest(keyFor("mallory"), req(nil))
	fromHost := signed("tom-desktop", req(nil))
	nonCanon := signed("tom", req(nil))
	nonCanon = resign(w.keys["tom"], TypeRequest, append(nonCanon.Body, ' '))
	withName := resign(w.keys["bob"], TypeRequest, []byte(fmt.Sprintf(`{"action":"migrate","requester":"tom","audience":%q}`, w.tomLaptop.ID())))
	retyped := signed("tom", req(nil))
	retyped.Type = TypeOwnerLayer

	tests := []struct {
		name string
		s    *Signed
		want error
	}{
		{"tom", signed("tom", req(nil)), nil},
		{"bob may ask (policy decides)", signed("bob", req(nil)), nil},
		{"replayed", replayed, ErrReplay},
		{"tampered", tampered, ErrSignature},
		{"signer swapped", swapped, ErrSignature},
		{"unknown key", stranger, ErrUnknownPrincipal},
		{"host key", fromHost, ErrUnknownPrincipal},
		{"non-canonical", nonCanon, ErrInvalid},
		{"name in body", withName, ErrInvalid},
		{"wrong type", retyped, ErrInvalid},
		{"another host", signed("tom", req(func(r *Request) { r.Audience = w.tomDesktop.ID() })), ErrInvalid},
		{"too old", signed("tom", req(func(r *Request) { r.IssuedAt = now.Add(-61 * time.Second).Unix() })), ErrStale},
		{"from the future", signed("tom", req(func(r *Request) { r.IssuedAt = now.Add(11 * time.Second).Unix() })), ErrStale},
		{"oldest accepted", signed("tom", req(func(r *Request) { r.IssuedAt = now.Add(-time.Minute).Unix() })), nil},
		{"short nonce", resign(w.keys["tom"], TypeRequest, mustJSON(t, req(func(r *Request) { r.Nonce = make([]byte, 8) }))), ErrInvalid},
		{"migrate with document", resign(w.keys["tom"], TypeRequest, mustJSON(t, req(func(r *Request) { r.Nonce = make([]byte, 16); r.Document = digestHex(w.v15) }))), ErrInvalid},
		{"unknown action", resign(w.keys["tom"], TypeRequest, mustJSON(t, req(func(r *Request) { r.Nonce = make([]byte, 16); r.Action = "delete" }))), ErrInvalid},
		{"nil", nil, ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ar, err := a.Authenticate(tc.s)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if ar.Requester().ID() != tc.s.Signer || ar.Digest() == "" {
					t.Fatalf("requester %s, signer %s", ar.Requester().ID(), tc.s.Signer)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestReplayAfterExpiry: once a request is too old to be accepted its
// nonce may be forgotten; the request is then refused as stale, never
// accepted again.
func TestReplayAfterExpiry(t *testing.T) {
	w := newWorld(t)
	now := w.now
	cache := NewReplayCache(1)
	a, err := NewAuthenticator(AuthConfig{Directory: w.dir, Host: w.tomLaptop.ID(), MaxAge: time.Minute, Replay: cache, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	sign := func() *Signed {
		s, err := SignRequest(w.keys["tom"], Request{Action: ActionMigrate, Audience: w.tomLaptop.ID(), VM: "tom-vm", Destination: w.tomDesktop.ID(), IssuedAt: now.Unix()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := sign()
	if _, err := a.Authenticate(first); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(sign()); !errors.Is(err, ErrBusy) {
		t.Fatalf("full cache: err = %v, want ErrBusy", err)
	}
	now = now.Add(time.Minute)
	if _, err := a.Authenticate(first); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay at the edge of the window: err = %v", err)
	}
	now = now.Add(time.Second)
	if _, err := a.Authenticate(first); !errors.Is(err, ErrStale) {
		t.Fatalf("replay after the window: err = %v", err)
	}
	if _, err := a.Authenticate(sign()); err != nil {
		t.Fatalf("expired entry not reclaimed: %v", err)
	}
}

func TestReplayCacheConcurrent(t *testing.T) {
	c := NewReplayCache(1000)
	now := time.Unix(0, 0)
	errs := make(chan error, 8)
	for range 8 {
		go func() { errs <- c.Use("same", now.Add(time.Minute), now) }()
	}
	ok := 0
	for range 8 {
		if <-errs == nil {
			ok++
		}
	}
	if ok != 1 {
		t.Fatalf("%d of 8 concurrent uses of one nonce succeeded", ok)
	}
}
