//go:build !cgo

package tpm

// openSimulator fails at once: the reference TPM is C code, and without
// cgo go-tpm-tools' simulator builds but fails obscurely at run time.
func openSimulator(*int64) (Transport, error) { return nil, ErrSimulatorNeedsCgo }

// SimulatorAvailable reports whether this binary includes the simulator.
const SimulatorAvailable = false
