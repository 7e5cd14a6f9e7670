package tpm

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// backend is one TPM backend a test runs against.
type backend struct {
	name string
	// open returns a fresh TPM. For swtpm each call is a new swtpm process
	// (a different TPM); for the simulator each call is a new simulator
	// with new seeds, but only one may be open at a time.
	open func(t testing.TB) *TPM
	// concurrent reports whether two TPMs from open may be open at once.
	concurrent bool
}

func backends(t testing.TB) []backend {
	bs := []backend{{name: "sim", open: openSim}}
	if swtpmAvailable(t) {
		bs = append(bs, backend{name: "swtpm", open: openSwtpm, concurrent: true})
	}
	return bs
}

// forEachBackend runs f as a subtest on every available backend.
func forEachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

func openSim(t testing.TB) *TPM {
	t.Helper()
	if !SimulatorAvailable {
		t.Skip(ErrSimulatorNeedsCgo.Error())
	}
	tp, err := OpenURI(context.Background(), "sim", nil)
	if err != nil {
		t.Fatalf("open simulator: %v", err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// swtpmAvailable reports whether swtpm is installed; without it swtpm
// tests skip, unless GVMM_REQUIRE_SWTPM=1 (CI) makes that a failure.
func swtpmAvailable(t testing.TB) bool {
	if _, err := exec.LookPath("swtpm"); err != nil {
		if os.Getenv("GVMM_REQUIRE_SWTPM") == "1" {
			t.Fatalf("swtpm not installed and GVMM_REQUIRE_SWTPM=1 (apt-get install swtpm swtpm-tools)")
		}
		t.Logf("swtpm not installed: skipping swtpm backends (apt-get install swtpm swtpm-tools; set GVMM_REQUIRE_SWTPM=1 to make this an error)")
		return false
	}
	return true
}

// startSwtpm starts a fresh swtpm on a unix socket in stateDir and returns
// its URI. The process is killed when the test ends. Unix sockets, unlike
// loopback ports picked in advance, cannot collide with a swtpm another
// test package starts at the same moment (which once made two tests share
// one TPM); startSwtpmTCP covers the TCP transport.
func startSwtpm(t testing.TB, stateDir string) string {
	t.Helper()
	sock := filepath.Join(stateDir, "swtpm.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+stateDir,
		"--server", "type=unixio,path="+sock,
		"--ctrl", "type=unixio,path="+sock+".ctrl",
		"--flags", "not-need-init,startup-clear")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			t.Fatalf("swtpm exited at start-up")
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return "swtpm+unix://" + sock
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("swtpm did not start within 10 s")
	return ""
}

// startSwtpmTCP starts a fresh swtpm on loopback TCP and returns its URI.
func startSwtpmTCP(t testing.TB, stateDir string) string {
	t.Helper()
	for attempt := 0; attempt < 5; attempt++ {
		port := freePortPair(t)
		cmd := exec.Command("swtpm", "socket", "--tpm2",
			"--tpmstate", "dir="+stateDir,
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--flags", "not-need-init,startup-clear")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("start swtpm: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				goto retry
			default:
			}
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				t.Cleanup(func() {
					cmd.Process.Kill()
					<-exited
				})
				return "swtpm+tcp://" + addr
			}
			time.Sleep(20 * time.Millisecond)
		}
		cmd.Process.Kill()
		<-exited
	retry:
	}
	t.Fatalf("swtpm did not start")
	return ""
}

// freePortPair finds a loopback port P with P+1 also free (best effort).
func freePortPair(t testing.TB) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find port: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	t.Fatalf("no free port pair")
	return 0
}

func openSwtpm(t testing.TB) *TPM {
	t.Helper()
	uri := startSwtpm(t, t.TempDir())
	tp, err := OpenURI(context.Background(), uri, nil)
	if err != nil {
		t.Fatalf("open %s: %v", uri, err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// launch measures a fake gvmm into tp and returns the log.
func launch(t testing.TB, tp *TPM, config string) *Log {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "gvmm")
	if err := os.WriteFile(exe, []byte("gvmm executable v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	log, err := tp.MeasureLaunch(context.Background(), LaunchInputs{Executable: exe, Config: []byte(config), Policy: []byte("policy v1")}, nil)
	if err != nil {
		t.Fatalf("measure launch: %v", err)
	}
	return log
}
