package integration

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gvmm/gvmm/vmm/vmmtest"
)

var (
	codeTripleFault = vmmtest.CodeTripleFault
	codeExecMMIO    = vmmtest.CodeExecMMIO
	codePowerOff    = vmmtest.CodePowerOff
)

// writeKernel writes a synthetic bzImage running code to a temporary file.
func writeKernel(t *testing.T, code []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(p, vmmtest.BzImage(code, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
