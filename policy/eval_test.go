package policy

import (
	"strings"
	"testing"

	"github.com/gvmm/gvmm/tpm"
)

func TestEvaluateMigrateOut(t *testing.T) {
	w := newWorld(t)
	pol := w.policy()
	pinned := w.ownerRules()
	pinned.Pinned = true
	// Tom tries to loosen IT: Bob's machine and the outdated 1.4 in his
	// own layer, without any enterprise change.
	loose := w.ownerRules()
	loose.Destinations = append(loose.Destinations, "host:"+string(w.bob.ID()))
	strictIT := w.entRules()
	strictIT.MinTrust = "hardware-tpm-ek-cert"
	adminOK := w.ownerRules()
	adminOK.Migrators = append(adminOK.Migrators, "role:admin")
	noMeasure := w.ownerRules()
	noMeasure.Measurements = nil
	noMeasureIT := w.entRules()
	noMeasureIT.Measurements = nil

	tests := []struct {
		name      string
		pol       *VMPolicy
		req       *Authenticated
		from, to  Principal
		att       *Attestation
		allow     bool
		rule      string // prefix of Decision.Rule
		remediate bool
	}{
		{name: "tom laptop to desktop, attested", pol: pol, req: w.migrate("tom", w.tomLaptop, w.tomDesktop),
			from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v15), allow: true, rule: "owner v1 migrators role:owner, enterprise v1 destinations group:tom-devices"},
		{name: "tom desktop to office, hardware", pol: pol, req: w.migrate("tom", w.tomDesktop, w.office),
			from: w.tomDesktop, to: w.office, att: att(w.office, tpm.TrustHardwareBootLog, w.v15), allow: true},
		{name: "precheck allows going on to attest", pol: pol, req: w.migrate("tom", w.tomLaptop, w.tomDesktop),
			from: w.tomLaptop, to: w.tomDesktop, allow: true},
		{name: "bob lacks the role", pol: pol, req: w.migrate("bob", w.tomLaptop, w.tomDesktop),
			from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v15), rule: "owner v1 migrators"},
		{name: "it is not a migrator unless a layer says so", pol: pol, req: w.migrate("it", w.tomLaptop, w.office),
			from: w.tomLaptop, to: w.office, att: att(w.office, tpm.TrustSoftware, w.v15), rule: "owner v1 migrators"},
		{name: "it allowed by role:admin", pol: w.verify(w.doc(w.ownerLayer("tom", 2, adminOK), w.entLayer("it", 1, w.entRules()))),
			req: w.migrate("it", w.tomLaptop, w.office), from: w.tomLaptop, to: w.office, att: att(w.office, tpm.TrustSoftware, w.v15), allow: true},
		{name: "destination outside allowed hosts", pol: pol, req: w.migrate("tom", w.tomLaptop, w.bob),
			from: w.tomLaptop, to: w.bob, att: att(w.bob, tpm.TrustHardwareEKCert, w.v15), rule: "enterprise v1 destinations"},
		{name: "destination outside allowed hosts, precheck", pol: pol, req: w.migrate("tom", w.tomLaptop, w.bob),
			from: w.tomLaptop, to: w.bob, rule: "enterprise v1 destinations"},
		{name: "destination below trust level", pol: w.verify(w.doc(w.ownerLayer("tom", 1, w.ownerRules()), w.entLayer("it", 2, strictIT))),
			req: w.migrate("tom", w.tomLaptop, w.tomDesktop), from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v15), rule: "enterprise v2 min_trust"},
		{name: "unattested trust none", pol: pol, req: w.migrate("tom", w.tomLaptop, w.tomDesktop),
			from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustNone, w.v15), rule: "enterprise v1 min_trust"},
		{name: "vm pinned", pol: w.verify(w.doc(w.ownerLayer("tom", 1, pinned), nil)), req: w.migrate("tom", w.tomLaptop, w.tomDesktop),
			from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v15), rule: "owner v1 pinned"},
		{name: "vm pinned by IT", pol: w.verify(w.doc(w.ownerLayer("tom", 1, w.ownerRules()), w.entLayer("it", 1, Rules{Pinned: true}))),
			req: w.migrate("tom", w.tomLaptop, w.tomDesktop), from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v15), rule: "enterprise v1 pinned"},
		{name: "owner cannot loosen IT destinations", pol: w.verify(w.doc(w.ownerLayer("tom", 2, loose), w.entLayer("it", 1, w.entRules()))),
			req: w.migrate("tom", w.tomLaptop, w.bob), from: w.tomLaptop, to: w.bob, att: att(w.bob, tpm.TrustSoftware, w.v15), rule: "enterprise v1 destinations"},
		{name: "owner cannot loosen IT measurements", pol: pol, req: w.migrate("tom", w.tomLaptop, w.tomDesktop),
			from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v14), rule: "enterprise v1 measurements", remediate: true},
		{name: "outdated measurement, owner only", pol: w.verify(w.doc(w.ownerLayer("tom", 1, Rules{Migrators: []string{"role:owner"}, Destinations: []string{"group:tom-devices"}, Measurements: []Measurement{w.m15()}}), nil)),
			req: w.migrate("tom", w.tomLaptop, w.tomDesktop), from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v14), rule: "owner v1 measurements", remediate: true},
		{name: "outdated measurement and low trust: no remediation", pol: w.verify(w.doc(w.ownerLayer("tom", 1, w.ownerRules()), w.entLayer("it", 2, strictIT))),
			req: w.migrate("tom", w.tomLaptop, w.tomDesktop), from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v14), rule: "enterprise v2 min_trust"},
		{name: "no layer lists measurements", pol: w.verify(w.doc(w.ownerLayer("tom", 1, noMeasure), w.entLayer("it", 1, noMeasureIT))),
			req: w.migrate("tom", w.tomLaptop, w.tomDesktop), from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v15), rule: "default-deny measurements"},
		{name: "no layer lists migrators", pol: w.verify(w.doc(w.ownerLayer("tom", 1, Rules{Destinations: []string{"group:tom-devices"}, Measurements: []Measurement{w.m15()}}), nil)),
			req: w.migrate("tom", w.tomLaptop, w.tomDesktop), from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v15), rule: "default-deny migrators"},
		{name: "attestation from another host", pol: pol, req: w.migrate("tom", w.tomLaptop, w.tomDesktop),
			from: w.tomLaptop, to: w.tomDesktop, att: att(w.office, tpm.TrustHardwareBootLog, w.v15), rule: "attestation host"},
		{name: "peer is not the requested destination", pol: pol, req: w.migrate("tom", w.tomLaptop, w.tomDesktop),
			from: w.tomLaptop, to: w.office, att: att(w.office, tpm.TrustSoftware, w.v15), rule: "request"},
		{name: "request for another host", pol: pol, req: w.migrate("tom", w.tomDesktop, w.office),
			from: w.tomLaptop, to: w.office, att: att(w.office, tpm.TrustSoftware, w.v15), rule: "request"},
		{name: "request is not a migration", pol: pol, req: w.auth("tom", w.tomLaptop, Request{Action: ActionSetVMPolicy, VM: "tom-vm", Document: digestHex(w.v15)}),
			from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v15), rule: "request"},
		{name: "request for another vm", pol: pol, req: w.auth("tom", w.tomLaptop, Request{Action: ActionMigrate, VM: "other-vm", Destination: w.tomDesktop.ID()}),
			from: w.tomLaptop, to: w.tomDesktop, att: att(w.tomDesktop, tpm.TrustSoftware, w.v15), rule: "request"},
		{name: "no request", pol: pol, from: w.tomLaptop, to: w.tomDesktop, rule: "request"},
		{name: "no policy", req: w.migrate("tom", w.tomLaptop, w.tomDesktop), from: w.tomLaptop, to: w.tomDesktop, rule: "policy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := EvaluateMigrateOut(MigrateOut{Request: tc.req, Policy: tc.pol, Source: tc.from, Destination: tc.to, Attestation: tc.att})
			t.Logf("%+v", d)
			if d.Allow != tc.allow {
				t.Fatalf("allow = %v, want %v: %s (%s)", d.Allow, tc.allow, d.Reason, d.Rule)
			}
			if d.Rule == "" || d.Reason == "" {
				t.Fatalf("unexplained decision %+v", d)
			}
			if !strings.HasPrefix(d.Rule, tc.rule) {
				t.Errorf("rule = %q, want prefix %q", d.Rule, tc.rule)
			}
			if wantFinal := tc.allow && tc.att != nil; d.Final() != wantFinal {
				t.Errorf("Final() = %v, want %v", d.Final(), wantFinal)
			}
			if (d.Remediation != nil) != tc.remediate {
				t.Errorf("remediation = %+v, want %v", d.Remediation, tc.remediate)
			}
		})
	}
}

// TestRemediationThenAccepted: Tom's laptop runs gvmm 1.4; it is refused
// and told to update to 1.5, updates, attests again and is accepted.
func TestRemediationThenAccepted(t *testing.T) {
	w := newWorld(t)
	pol := w.policy()
	in := MigrateOut{Request: w.migrate("tom", w.tomDesktop, w.tomLaptop), Policy: pol, Source: w.tomDesktop, Destination: w.tomLaptop,
		Attestation: att(w.tomLaptop, tpm.TrustSoftware, w.v14)}
	d := EvaluateMigrateOut(in)
	if d.Allow || d.Remediation == nil {
		t.Fatalf("outdated destination: %+v", d)
	}
	// Tom's layer accepts 1.4 and 1.5, IT's only 1.5: the intersection.
	if len(d.Remediation.Acceptable) != 1 || d.Remediation.Acceptable[0] != w.m15() || d.Remediation.Have != digestHex(w.v14) {
		t.Fatalf("remediation %+v, want only %v", d.Remediation, w.m15())
	}
	if !strings.Contains(d.Reason, "gvmm-1.5") {
		t.Errorf("reason does not name the update: %s", d.Reason)
	}
	in.Attestation = att(w.tomLaptop, tpm.TrustSoftware, w.v15)
	if d := EvaluateMigrateOut(in); !d.Final() {
		t.Fatalf("updated destination refused: %+v", d)
	}
}

func TestRemediationNoneInCommon(t *testing.T) {
	w := newWorld(t)
	owner := w.ownerRules()
	owner.Measurements = []Measurement{w.m14()}
	pol := w.verify(w.doc(w.ownerLayer("tom", 1, owner), w.entLayer("it", 1, w.entRules())))
	d := EvaluateMigrateOut(MigrateOut{Request: w.migrate("tom", w.tomLaptop, w.tomDesktop), Policy: pol, Source: w.tomLaptop,
		Destination: w.tomDesktop, Attestation: att(w.tomDesktop, tpm.TrustSoftware, w.v14)})
	if d.Allow || d.Remediation != nil {
		t.Fatalf("layers share no build, no update can help: %+v", d)
	}
}

func TestEvaluateMigrateIn(t *testing.T) {
	w := newWorld(t)
	hostPol := func(signer string, h HostPolicy) *VerifiedHostPolicy {
		t.Helper()
		s, err := SignHostPolicy(w.keys[signer], h)
		if err != nil {
			t.Fatal(err)
		}
		v, err := VerifyHostPolicy(s, w.dir)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	base := HostPolicy{Host: w.tomDesktop.ID(), Version: 1, AcceptOwners: []KeyID{w.id("tom")}, AcceptSources: []string{"group:tom-devices"}}
	attested := base
	attested.RequireSourceAttestation, attested.MinSourceTrust = true, "hardware-tpm-ek-cert"
	bobOnly := base
	bobOnly.AcceptOwners = []KeyID{w.id("bob")}
	byVM := bobOnly
	byVM.AcceptVMs = []string{"tom-vm"}
	office := HostPolicy{Host: w.office.ID(), Version: 1, AcceptOwners: []KeyID{w.id("tom")}, AcceptSources: []string{"group:tom-devices"}}
	pinned := w.ownerRules()
	pinned.Pinned = true

	tests := []struct {
		name  string
		hp    *VerifiedHostPolicy
		vm    *VMPolicy
		self  Principal
		src   Principal
		att   *Attestation
		allow bool
		rule  string
	}{
		{"tom's vm from tom's laptop", hostPol("tom", base), w.policy(), w.tomDesktop, w.tomLaptop, nil, true, "host v1 accept_owners"},
		{"accepted by vm id", hostPol("tom", byVM), w.policy(), w.tomDesktop, w.tomLaptop, nil, true, "host v1 accept_vms"},
		{"office signed by it", hostPol("it", office), w.policy(), w.office, w.tomLaptop, nil, true, ""},
		{"owner not accepted", hostPol("tom", bobOnly), w.policy(), w.tomDesktop, w.tomLaptop, nil, false, "host v1 accept"},
		{"source not accepted", hostPol("tom", base), w.policy(), w.tomDesktop, w.office, nil, false, "host v1 accept_sources"},
		{"source must attest", hostPol("tom", attested), w.policy(), w.tomDesktop, w.tomLaptop, nil, false, "host v1 require_source_attestation"},
		{"source attested too low", hostPol("tom", attested), w.policy(), w.tomDesktop, w.tomLaptop, att(w.tomLaptop, tpm.TrustSoftware, w.v15), false, "host v1 min_source_trust"},
		{"source attestation of another host", hostPol("tom", attested), w.policy(), w.tomDesktop, w.tomLaptop, att(w.office, tpm.TrustHardwareEKCert, w.v15), false, "host v1 require_source_attestation"},
		{"source attested", hostPol("tom", attested), w.policy(), w.tomDesktop, w.tomLaptop, att(w.tomLaptop, tpm.TrustHardwareEKCert, w.v15), true, ""},
		{"vm pinned", hostPol("tom", base), w.verify(w.doc(w.ownerLayer("tom", 1, pinned), nil)), w.tomDesktop, w.tomLaptop, nil, false, "owner v1 pinned"},
		{"policy for another host", hostPol("tom", base), w.policy(), w.tomLaptop, w.tomDesktop, nil, false, "host-policy"},
		{"vm policy does not list this host", hostPol("it", HostPolicy{Host: w.bob.ID(), Version: 1, AcceptOwners: []KeyID{w.id("tom")}, AcceptSources: []string{"group:tom-devices"}}),
			w.policy(), w.bob, w.tomLaptop, nil, false, "enterprise v1 destinations"},
		{"no policy", nil, w.policy(), w.tomDesktop, w.tomLaptop, nil, false, "host-policy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := EvaluateMigrateIn(MigrateIn{Policy: tc.hp, VM: tc.vm, Self: tc.self, Source: tc.src, SourceAttestation: tc.att})
			t.Logf("%+v", d)
			if d.Allow != tc.allow || d.Rule == "" || d.Reason == "" || !strings.HasPrefix(d.Rule, tc.rule) {
				t.Fatalf("got %+v, want allow %v rule %q", d, tc.allow, tc.rule)
			}
		})
	}
}

func TestVerifyHostPolicySigner(t *testing.T) {
	w := newWorld(t)
	h := HostPolicy{Host: w.bob.ID(), Version: 1, AcceptOwners: []KeyID{w.id("bob")}, AcceptSources: []string{"group:bob-devices"}}
	// bob-pc has no owner in the directory: only an admin may sign.
	for signer, ok := range map[string]bool{"bob": false, "tom": false, "it": true} {
		s, err := SignHostPolicy(w.keys[signer], h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := VerifyHostPolicy(s, w.dir); (err == nil) != ok {
			t.Errorf("signed by %s: err = %v, want ok %v", signer, err, ok)
		}
	}
}

func BenchmarkEvaluateMigrateOut(b *testing.B) {
	w := newWorld(b)
	in := MigrateOut{Request: w.migrate("tom", w.tomLaptop, w.tomDesktop), Policy: w.policy(), Source: w.tomLaptop,
		Destination: w.tomDesktop, Attestation: att(w.tomDesktop, tpm.TrustSoftware, w.v15)}
	b.ReportAllocs()
	for b.Loop() {
		if d := EvaluateMigrateOut(in); !d.Final() {
			b.Fatal(d)
		}
	}
}
