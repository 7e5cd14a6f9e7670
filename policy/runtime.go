package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/gvmm/gvmm/tpm"
)

// RuntimeReport is what a source measured in a running VM's memory for
// one migration (memguard's protected regions and measured guest ranges),
// made just before it attested. The source extends the SHA-256 of the
// report's exact bytes into its measured PCR as a tpm.EventRuntime event,
// so its quote covers the report; RuntimeFromResult checks that.
type RuntimeReport struct {
	// Version is RuntimeReportVersion.
	Version int `json:"version"`
	// VM and MigrationID bind the report to one migration of one VM: a
	// report made for an earlier attempt does not verify for this one.
	VM          string    `json:"vm"`
	MigrationID string    `json:"migration_id"`
	Time        time.Time `json:"time"`
	// Violations counts, since the VM started, every access memguard
	// refused and every unexpected change it found.
	Violations uint64          `json:"violations"`
	Regions    []RuntimeRegion `json:"regions"`
	Ranges     []RuntimeRange  `json:"ranges"`
}

// RuntimeReportVersion is the report format this package writes and reads.
const RuntimeReportVersion = 1

// RuntimeRegion is one protected region, measured for the report.
type RuntimeRegion struct {
	ID uint64 `json:"id"`
	// Mode is "integrity" or "confidential".
	Mode string `json:"mode"`
	// Owner is the owner's address space (its top-level page table's
	// guest-physical address).
	Owner  uint64 `json:"owner"`
	Length uint64 `json:"length"`
	// SHA256 is the region's digest (hex), in virtual-address order.
	SHA256 string `json:"sha256"`
	// Unexpected says the region changed although its owner wrote
	// nothing through gvmm since the measurement before.
	Unexpected bool `json:"unexpected,omitempty"`
}

// RuntimeRange is one guest-physical range measured since boot (a part of
// the guest kernel, say).
type RuntimeRange struct {
	Name   string `json:"name"`
	GPA    uint64 `json:"gpa"`
	Size   uint64 `json:"size"`
	SHA256 string `json:"sha256"`
}

// Bounds on a report from the network.
const (
	maxRuntimeReport  = 512 << 10
	maxRuntimeRegions = 4096
	maxRuntimeRanges  = 256
	maxRangeName      = 64
)

// check validates a report's fields.
func (r *RuntimeReport) check() error {
	if r.Version != RuntimeReportVersion {
		return fmt.Errorf("%w: run-time report version %d, want %d", ErrInvalid, r.Version, RuntimeReportVersion)
	}
	if !validName(r.VM) || r.MigrationID == "" || len(r.MigrationID) > 128 {
		return fmt.Errorf("%w: run-time report names no vm or migration", ErrInvalid)
	}
	if len(r.Regions) > maxRuntimeRegions || len(r.Ranges) > maxRuntimeRanges {
		return fmt.Errorf("%w: run-time report too long", ErrInvalid)
	}
	for _, g := range r.Regions {
		if g.Mode != "integrity" && g.Mode != "confidential" {
			return fmt.Errorf("%w: run-time region %d mode %q", ErrInvalid, g.ID, g.Mode)
		}
		if !validDigest(g.SHA256) {
			return fmt.Errorf("%w: run-time region %d digest", ErrInvalid, g.ID)
		}
	}
	for _, m := range r.Ranges {
		if m.Name == "" || len(m.Name) > maxRangeName || !validDigest(m.SHA256) {
			return fmt.Errorf("%w: run-time range %q", ErrInvalid, m.Name)
		}
	}
	return nil
}

// Range returns the named range, if the report holds it.
func (r *RuntimeReport) Range(name string) (RuntimeRange, bool) {
	for _, m := range r.Ranges {
		if m.Name == name {
			return m, true
		}
	}
	return RuntimeRange{}, false
}

// MarshalRuntimeReport checks a report and encodes it: these exact bytes
// are what the source measures and sends.
func MarshalRuntimeReport(r *RuntimeReport) ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("encode run-time report: %w", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode run-time report: %w", err)
	}
	if len(b) > maxRuntimeReport {
		return nil, fmt.Errorf("encode run-time report: %w: %d bytes exceed %d", ErrInvalid, len(b), maxRuntimeReport)
	}
	return b, nil
}

// RuntimeFromResult returns the run-time report a peer sent with its
// evidence, after checking it against the verified attestation result:
// the last event of the verified log must be a run-time event whose data
// is the SHA-256 of report's bytes, and the report must be for vm and
// migrationID. Anything else, an empty report included, is refused.
func RuntimeFromResult(res *tpm.Result, report []byte, vm, migrationID string) (*RuntimeReport, error) {
	if res == nil {
		return nil, fmt.Errorf("run-time report: %w: no verified attestation", ErrInvalid)
	}
	if len(report) == 0 {
		return nil, fmt.Errorf("run-time report: %w: the source sent none", ErrInvalid)
	}
	if len(report) > maxRuntimeReport {
		return nil, fmt.Errorf("run-time report: %w: %d bytes exceed %d", ErrInvalid, len(report), maxRuntimeReport)
	}
	n := len(res.Events)
	if n == 0 || res.Events[n-1].Type != tpm.EventRuntime {
		return nil, fmt.Errorf("run-time report: %w: the quoted log does not end with a run-time measurement", ErrInvalid)
	}
	sum := sha256.Sum256(report)
	if !bytes.Equal(res.Events[n-1].Data, sum[:]) {
		return nil, fmt.Errorf("run-time report: %w: it is not the report the quote covers", ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(report))
	dec.DisallowUnknownFields()
	var r RuntimeReport
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("run-time report: %w: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("run-time report: %w: trailing data", ErrInvalid)
	}
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("run-time report: %w", err)
	}
	if r.VM != vm || r.MigrationID != migrationID {
		return nil, fmt.Errorf("run-time report: %w: made for vm %s migration %s, not vm %s migration %s",
			ErrInvalid, r.VM, r.MigrationID, vm, migrationID)
	}
	return &r, nil
}
