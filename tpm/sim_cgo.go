//go:build cgo

package tpm

import (
	"fmt"

	"github.com/google/go-tpm-tools/simulator"
)

// openSimulator starts the embedded reference TPM. Only one exists per
// process: a second call blocks until the first is closed.
func openSimulator(fixedSeed *int64) (Transport, error) {
	var (
		s   *simulator.Simulator
		err error
	)
	if fixedSeed != nil {
		s, err = simulator.GetWithFixedSeedInsecure(*fixedSeed)
	} else {
		s, err = simulator.Get()
	}
	if err != nil {
		return nil, fmt.Errorf("start simulator: %w", err)
	}
	return &rwTransport{rwc: s}, nil
}

// SimulatorAvailable reports whether this binary includes the simulator.
const SimulatorAvailable = true
