package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// buildTimeout bounds one go build or go test -c (both cores are shared).
const buildTimeout = 15 * time.Minute

// goTool runs the go command of this toolchain in the repository root.
type goTool struct {
	bin  string // path of the go command
	repo string // module root, the working directory of every command
}

func findGo(repo string) (goTool, error) {
	if bin, err := exec.LookPath("go"); err == nil {
		return goTool{bin: bin, repo: repo}, nil
	}
	if _, err := os.Stat("/usr/local/go/bin/go"); err == nil {
		return goTool{bin: "/usr/local/go/bin/go", repo: repo}, nil
	}
	return goTool{}, fmt.Errorf("no go command in PATH or /usr/local/go/bin")
}

// run runs go with CGO_ENABLED=0, so that every binary is static and runs
// in L1's and the guest's bare initramfs.
func (g goTool) run(ctx context.Context, args ...string) (string, error) {
	return g.runEnv(ctx, "CGO_ENABLED=0", args...)
}

// runEnv runs go with one environment setting (CGO_ENABLED=...).
func (g goTool) runEnv(ctx context.Context, cgo string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.bin, args...)
	cmd.Dir = g.repo
	cmd.Env = append(os.Environ(), cgo)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return string(out), fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// build compiles the main package pkg into out.
//
// gvmm itself is built with cgo and linked statically when the host can
// (libcrypto.a, from libssl-dev): its embedded TPM simulator (--tpm
// sim?insecure-fixed-seed=N, one TPM per host in the migration scenario)
// is cgo, and L1's initramfs has no shared libraries. Without that it is
// built without cgo, and the simulator is unavailable in L1.
func (g goTool) build(ctx context.Context, out, pkg string) error {
	if pkg == "./cmd/gvmm" {
		_, err := g.runEnv(ctx, "CGO_ENABLED=1", "build", "-tags", "netgo,osusergo",
			"-ldflags", `-linkmode external -extldflags "-static"`, "-o", out, pkg)
		if err == nil {
			return nil
		}
		fmt.Fprintf(os.Stderr, "nested: gvmm without cgo (no TPM simulator in L1): the static cgo build failed: %v\n", err)
	}
	_, err := g.run(ctx, "build", "-o", out, pkg)
	return err
}

// testPkg is one package given on the command line and its test binary.
type testPkg struct {
	pkg      string // as given, e.g. ./kvm; the name in markers and summaries
	name     string // file-system-safe unique name, e.g. 01-kvm
	dir      string // source folder: the working directory of a direct run
	bin      string // compiled test binary; "" if none
	testdata string // the package's testdata folder, "" if none
	noTests  string // why there is no binary although nothing failed
	err      error  // build failure
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// buildTests compiles a test binary (go test -c) for each package into
// outDir. A package with no tests (or no Go files yet) gets noTests set; a
// package that does not compile gets err set. Neither stops the others.
func (g goTool) buildTests(ctx context.Context, p *progress, pkgs []string, outDir string) []testPkg {
	var res []testPkg
	for i, pkg := range pkgs {
		t := testPkg{pkg: pkg}
		t.name = fmt.Sprintf("%02d-%s", i+1, strings.Trim(unsafeChars.ReplaceAllString(pkg, "_"), "_."))
		out, err := g.run(ctx, "list", "-e", "-f",
			"{{.Dir}}\t{{len .TestGoFiles}}\t{{len .XTestGoFiles}}\t{{with .Error}}{{.Err}}{{end}}", pkg)
		if err != nil {
			t.err = err
			res = append(res, t)
			continue
		}
		f := strings.SplitN(strings.TrimRight(out, "\n"), "\t", 4)
		if len(f) != 4 {
			t.err = fmt.Errorf("go list %s: unexpected output %q", pkg, out)
			res = append(res, t)
			continue
		}
		t.dir = f[0]
		switch {
		case strings.HasPrefix(f[3], "no Go files"):
			t.noTests = "no Go files yet"
		case f[3] != "":
			t.err = fmt.Errorf("go list %s: %s", pkg, f[3])
		case f[1] == "0" && f[2] == "0":
			t.noTests = "no test files"
		}
		if t.err != nil || t.noTests != "" {
			res = append(res, t)
			continue
		}
		p.say("compiling tests of %s", pkg)
		t.bin = filepath.Join(outDir, t.name+".test")
		if _, err := g.run(ctx, "test", "-c", "-o", t.bin, pkg); err != nil {
			t.bin, t.err = "", err
		}
		if fi, err := os.Stat(filepath.Join(t.dir, "testdata")); err == nil && fi.IsDir() {
			t.testdata = filepath.Join(t.dir, "testdata")
		}
		res = append(res, t)
	}
	return res
}
