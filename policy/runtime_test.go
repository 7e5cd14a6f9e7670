package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gvmm/gvmm/tpm"
)

func hexSum(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func runtimeReport(vm, migID string) *RuntimeReport {
	return &RuntimeReport{
		Version: RuntimeReportVersion, VM: vm, MigrationID: migID, Time: time.Unix(1700000000, 0).UTC(),
		Violations: 3,
		Regions:    []RuntimeRegion{{ID: 1, Mode: "integrity", Owner: 0x1234000, Length: 4096, SHA256: hexSum("region")}},
		Ranges:     []RuntimeRange{{Name: "text", GPA: 0x1000000, Size: 1 << 20, SHA256: hexSum("text")}},
	}
}

// quoted is a verified result whose log ends with the run-time event of b.
func quoted(b []byte) *tpm.Result {
	exe := sha256.Sum256([]byte("gvmm"))
	ev := append(tpm.LaunchEvents(exe, nil, nil), tpm.ClosingEvent(), tpm.RuntimeEvent(sha256.Sum256(b)))
	return &tpm.Result{HostID: "h", Trust: tpm.TrustSoftware, Events: ev}
}

// TestRuntimeFromResult: a report is accepted only when the quoted log's
// last event measures its exact bytes and it is for this vm and migration.
func TestRuntimeFromResult(t *testing.T) {
	good, err := MarshalRuntimeReport(runtimeReport("tom-vm", "m1"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := MarshalRuntimeReport(runtimeReport("tom-vm", "m0"))
	if err != nil {
		t.Fatal(err)
	}
	noRuntime := quoted(good)
	noRuntime.Events = noRuntime.Events[:len(noRuntime.Events)-1]
	runtimeFirst := quoted(good)
	runtimeFirst.Events = append(runtimeFirst.Events, tpm.ClosingEvent())
	tampered := []byte(strings.Replace(string(good), `"violations":3`, `"violations":0`, 1))
	unknownField := []byte(strings.Replace(string(good), `{"version"`, `{"extra":1,"version"`, 1))
	tests := []struct {
		name   string
		res    *tpm.Result
		report []byte
		vm, id string
		ok     bool
	}{
		{"quoted report", quoted(good), good, "tom-vm", "m1", true},
		{"no report", quoted(good), nil, "tom-vm", "m1", false},
		{"no result", nil, good, "tom-vm", "m1", false},
		{"log without a run-time event", noRuntime, good, "tom-vm", "m1", false},
		{"run-time event not last", runtimeFirst, good, "tom-vm", "m1", false},
		{"report changed after quoting", quoted(good), tampered, "tom-vm", "m1", false},
		{"quote of the changed report", quoted(tampered), tampered, "tom-vm", "m1", true},
		{"earlier migration's report", quoted(other), other, "tom-vm", "m1", false},
		{"another vm's report", quoted(good), good, "bob-vm", "m1", false},
		{"unknown field", quoted(unknownField), unknownField, "tom-vm", "m1", false},
		{"trailing data", quoted(append(good, '{', '}')), append(good, '{', '}'), "tom-vm", "m1", false},
		{"not json", quoted([]byte("xx")), []byte("xx"), "tom-vm", "m1", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := RuntimeFromResult(tc.res, tc.report, tc.vm, tc.id)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, not ErrInvalid", err)
			}
			if tc.ok && (r.VM != tc.vm || r.MigrationID != tc.id || len(r.Regions) != 1 || len(r.Ranges) != 1) {
				t.Fatalf("decoded %+v", r)
			}
		})
	}
}

// TestMarshalRuntimeReportRefuses: a malformed report is never encoded.
func TestMarshalRuntimeReportRefuses(t *testing.T) {
	tests := []struct {
		name string
		edit func(r *RuntimeReport)
	}{
		{"version", func(r *RuntimeReport) { r.Version = 2 }},
		{"no vm", func(r *RuntimeReport) { r.VM = "" }},
		{"no migration", func(r *RuntimeReport) { r.MigrationID = "" }},
		{"mode", func(r *RuntimeReport) { r.Regions[0].Mode = "secret" }},
		{"region digest", func(r *RuntimeReport) { r.Regions[0].SHA256 = "ABCD" }},
		{"range digest upper case", func(r *RuntimeReport) { r.Ranges[0].SHA256 = strings.ToUpper(r.Ranges[0].SHA256) }},
		{"range name", func(r *RuntimeReport) { r.Ranges[0].Name = "" }},
		{"too many ranges", func(r *RuntimeReport) { r.Ranges = make([]RuntimeRange, maxRuntimeRanges+1) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runtimeReport("tom-vm", "m1")
			tc.edit(r)
			if _, err := MarshalRuntimeReport(r); !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
}

// TestEvaluateMigrateInRuntime: a host that requires the source's run-time
// measurement accepts only a report without unexpected changes and with
// the required ranges' digests.
func TestEvaluateMigrateInRuntime(t *testing.T) {
	w := newWorld(t)
	hostPol := func(h HostPolicy) *VerifiedHostPolicy {
		t.Helper()
		s, err := SignHostPolicy(w.keys["tom"], h)
		if err != nil {
			t.Fatal(err)
		}
		v, err := VerifyHostPolicy(s, w.dir)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	base := HostPolicy{Host: w.tomDesktop.ID(), Version: 1, AcceptOwners: []KeyID{w.id("tom")}, AcceptSources: []string{"group:tom-devices"},
		RequireSourceAttestation: true, RequireSourceRuntime: true}
	ranges := base
	ranges.RequireSourceRuntime = false
	ranges.RequireRanges = []RangeDigest{{Name: "text", SHA256: hexSum("text")}}
	good := runtimeReport("tom-vm", "m1")
	changed := runtimeReport("tom-vm", "m1")
	changed.Regions[0].Unexpected = true
	patched := runtimeReport("tom-vm", "m1")
	patched.Ranges[0].SHA256 = hexSum("patched text")
	noRange := runtimeReport("tom-vm", "m1")
	noRange.Ranges = nil
	srcAtt := att(w.tomLaptop, tpm.TrustSoftware, w.v15)

	tests := []struct {
		name  string
		hp    HostPolicy
		rt    *RuntimeReport
		allow bool
		rule  string
	}{
		{"clean report", base, good, true, ""},
		{"no report", base, nil, false, "host v1 require_source_runtime"},
		{"another vm's report", base, runtimeReport("bob-vm", "m1"), false, "host v1 require_source_runtime"},
		{"region changed unexpectedly", base, changed, false, "host v1 require_source_runtime"},
		{"required range matches", ranges, good, true, ""},
		{"required range patched", ranges, patched, false, "host v1 require_ranges"},
		{"required range not measured", ranges, noRange, false, "host v1 require_ranges"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := EvaluateMigrateIn(MigrateIn{Policy: hostPol(tc.hp), VM: w.policy(), Self: w.tomDesktop, Source: w.tomLaptop,
				SourceAttestation: srcAtt, SourceRuntime: tc.rt})
			t.Logf("%+v", d)
			if d.Allow != tc.allow || d.Rule == "" || d.Reason == "" || !strings.HasPrefix(d.Rule, tc.rule) {
				t.Fatalf("got %+v, want allow %v rule %q", d, tc.allow, tc.rule)
			}
			if tc.allow && !strings.Contains(d.Rule, "require_source_runtime") {
				t.Fatalf("allowing rule %q does not name the run-time check", d.Rule)
			}
		})
	}
}

// TestHostPolicyRuntimeNeedsAttestation: run-time rules without source
// attestation, or with a malformed digest, are not signed.
func TestHostPolicyRuntimeNeedsAttestation(t *testing.T) {
	w := newWorld(t)
	base := HostPolicy{Host: w.tomDesktop.ID(), Version: 1, AcceptOwners: []KeyID{w.id("tom")}, AcceptSources: []string{"group:tom-devices"}}
	tests := []struct {
		name string
		edit func(h *HostPolicy)
	}{
		{"runtime without attestation", func(h *HostPolicy) { h.RequireSourceRuntime = true }},
		{"ranges without attestation", func(h *HostPolicy) { h.RequireRanges = []RangeDigest{{Name: "text", SHA256: hexSum("x")}} }},
		{"range without a name", func(h *HostPolicy) {
			h.RequireSourceAttestation = true
			h.RequireRanges = []RangeDigest{{SHA256: hexSum("x")}}
		}},
		{"range digest not hex", func(h *HostPolicy) {
			h.RequireSourceAttestation = true
			h.RequireRanges = []RangeDigest{{Name: "text", SHA256: "zz"}}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := base
			tc.edit(&h)
			if _, err := SignHostPolicy(w.keys["tom"], h); !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
}
