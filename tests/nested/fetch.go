package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// aptTimeout bounds each apt or dpkg command (the kernel package is ~70 MB).
const aptTimeout = 10 * time.Minute

// debPackages are the Debian packages the harness takes files from.
type debPackages struct {
	kernel  string // unpacked linux-image-<version>-amd64
	kver    string // its kernel release, e.g. 6.1.0-56-amd64
	busybox string // unpacked busybox-static
}

// vmlinuz is the kernel image, used for L1 and for guests.
func (d debPackages) vmlinuz() string {
	return filepath.Join(d.kernel, "boot", "vmlinuz-"+d.kver)
}

// module is the path of a kernel module, given relative to kernel/.
func (d debPackages) module(rel string) string {
	return filepath.Join(d.kernel, "lib", "modules", d.kver, "kernel", rel)
}

func (d debPackages) busyboxBin() string { return filepath.Join(d.busybox, "bin", "busybox") }

// fetchPackages resolves, downloads and unpacks the kernel and busybox
// packages into cache, reusing what is already there.
func fetchPackages(ctx context.Context, p *progress, cache string) (debPackages, error) {
	var d debPackages
	want, err := resolvePackages(ctx, p)
	if err != nil {
		return d, err
	}
	d.kver = strings.TrimPrefix(want.kernel, "linux-image-")
	if d.kernel, err = fetchDeb(ctx, p, cache, want.kernel, want.kernelVersion); err != nil {
		return d, err
	}
	if d.busybox, err = fetchDeb(ctx, p, cache, "busybox-static", want.busyboxVersion); err != nil {
		return d, err
	}
	for _, f := range []string{d.vmlinuz(), d.busyboxBin()} {
		if _, err := os.Stat(f); err != nil {
			return d, fmt.Errorf("unpacked package lacks a file: %w", err)
		}
	}
	return d, nil
}

// wanted names the exact packages and versions to use.
type wanted struct {
	kernel, kernelVersion string // e.g. linux-image-6.1.0-56-amd64, 6.1.192-2
	busyboxVersion        string
}

// kernelDep finds the versioned kernel package in the Depends field of the
// linux-image-amd64 metapackage, e.g. "linux-image-6.1.0-56-amd64 (=
// 6.1.192-2)"; the version pin may be absent.
var kernelDep = regexp.MustCompile(`(linux-image-[0-9]\S*-amd64)(?:\s*\(=\s*([^)\s]+)\))?`)

// resolvePackages asks apt, in one query, which kernel package the
// linux-image-amd64 metapackage stands for and which busybox-static
// version is current.
func resolvePackages(ctx context.Context, p *progress) (wanted, error) {
	var w wanted
	out, err := aptQuery(ctx, p, "apt-cache", "show", "--no-all-versions", "linux-image-amd64", "busybox-static")
	if err != nil {
		return w, err
	}
	st := controlStanzas(out)
	m := kernelDep.FindStringSubmatch(st["linux-image-amd64"]["Depends"])
	if m == nil {
		return w, fmt.Errorf("apt-cache show linux-image-amd64: no linux-image-*-amd64 in Depends %q", st["linux-image-amd64"]["Depends"])
	}
	w.kernel, w.kernelVersion = m[1], m[2]
	if w.kernelVersion == "" {
		out, err := aptQuery(ctx, p, "apt-cache", "show", "--no-all-versions", w.kernel)
		if err != nil {
			return w, err
		}
		w.kernelVersion = controlStanzas(out)[w.kernel]["Version"]
	}
	w.busyboxVersion = st["busybox-static"]["Version"]
	if w.kernelVersion == "" || w.busyboxVersion == "" {
		return w, fmt.Errorf("apt-cache show: no version for %s or busybox-static", w.kernel)
	}
	return w, nil
}

// controlStanzas parses Debian control paragraphs (as apt-cache show prints
// them) into package -> field -> value, keeping single-line fields only.
func controlStanzas(s string) map[string]map[string]string {
	res := map[string]map[string]string{}
	for _, para := range strings.Split(s, "\n\n") {
		f := map[string]string{}
		for _, line := range strings.Split(para, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
				f[k] = strings.TrimSpace(v)
			}
		}
		if f["Package"] != "" {
			res[f["Package"]] = f
		}
	}
	return res
}

// aptQuery runs an apt-cache query; if it fails (typically because the
// package lists were never downloaded), it runs apt-get update once and
// tries again.
func aptQuery(ctx context.Context, p *progress, name string, args ...string) (string, error) {
	out, err := runOutput(ctx, aptTimeout, "", name, args...)
	if err == nil {
		return out, nil
	}
	p.say("%s %s failed (%v); running apt-get update once", name, strings.Join(args, " "), err)
	if uerr := aptUpdate(ctx); uerr != nil {
		return "", errors.Join(err, uerr)
	}
	return runOutput(ctx, aptTimeout, "", name, args...)
}

func aptUpdate(ctx context.Context) error {
	_, err := runOutput(ctx, aptTimeout, "", "apt-get", "update", "-qq")
	return err
}

// fetchDeb makes sure cache/pkgs/<pkg>_<ver> holds pkg unpacked with
// dpkg -x and returns that folder. A folder is complete once it has the
// stamp file; a half-done one from an interrupted run is replaced.
func fetchDeb(ctx context.Context, p *progress, cache, pkg, ver string) (string, error) {
	dir := filepath.Join(cache, "pkgs", pkg+"_"+strings.ReplaceAll(ver, ":", "%3a"))
	stamp := filepath.Join(dir, ".gvmm-unpacked")
	if _, err := os.Stat(stamp); err == nil {
		return dir, nil
	}
	p.say("downloading %s %s", pkg, ver)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".fetch-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)

	// Download as root without apt's _apt sandbox user, which cannot write
	// into our folder; that is only a warning, but a noisy one.
	dl := []string{"-o", "APT::Sandbox::User=root", "download", pkg + "=" + ver}
	if _, err := runOutput(ctx, aptTimeout, tmp, "apt-get", dl...); err != nil {
		p.say("apt-get download %s failed (%v); running apt-get update once", pkg, err)
		if uerr := aptUpdate(ctx); uerr != nil {
			return "", errors.Join(err, uerr)
		}
		if _, err := runOutput(ctx, aptTimeout, tmp, "apt-get", dl...); err != nil {
			return "", err
		}
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s: expected one .deb, found %d", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if _, err := runOutput(ctx, aptTimeout, "", "dpkg", "-x", debs[0], root); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, ".gvmm-unpacked"), []byte(ver+"\n"), 0o644); err != nil {
		return "", err
	}
	if _, err := os.Stat(stamp); err == nil {
		return dir, nil // another run finished the same package meanwhile
	}
	os.RemoveAll(dir) // an incomplete folder from an interrupted run
	if err := os.Rename(root, dir); err != nil {
		// Another run may have finished the same package first.
		if _, serr := os.Stat(stamp); serr == nil {
			return dir, nil
		}
		return "", fmt.Errorf("install %s into the cache: %w", pkg, err)
	}
	return dir, nil
}

// runOutput runs a command with a timeout and returns its stdout; on
// failure the error carries the command line and its stderr.
func runOutput(ctx context.Context, timeout time.Duration, dir, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
