package benchfmt

import (
	"encoding/base64"
	"fmt"
	"io"
	"os"
)

// Markers around a CPU profile printed on the console by DumpProfile.
// The harness relays them with the rest of the console; a person copies
// the lines between them and decodes them (base64 -d) for go tool pprof.
const (
	ProfileBegin = "=== GVMM-NESTED CPUPROFILE BEGIN"
	ProfileEnd   = "=== GVMM-NESTED CPUPROFILE END"
)

// DumpProfile prints the profile file at path base64-encoded, 76
// characters a line, between ProfileBegin and ProfileEnd (which name it),
// so that it survives a serial console; then removes the file.
func DumpProfile(w io.Writer, name, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(w, "cpu profile %s: %v\n", name, err)
		return
	}
	os.Remove(path)
	s := base64.StdEncoding.EncodeToString(b)
	fmt.Fprintf(w, "%s name=%s bytes=%d\n", ProfileBegin, name, len(b))
	for len(s) > 0 {
		n := min(len(s), 76)
		fmt.Fprintln(w, s[:n])
		s = s[n:]
	}
	fmt.Fprintf(w, "%s name=%s\n", ProfileEnd, name)
}
