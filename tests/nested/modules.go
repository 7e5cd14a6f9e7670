package main

import (
	"debug/elf"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
)

// guestModuleGroup is a set of kernel modules the guest image carries and
// loads together: tests/guest/modules (in the guest: gvmm-modules GROUP)
// insmods the group's modules in the order of guestModOrder(group), which
// puts every module after the modules it depends on.
type guestModuleGroup struct {
	name  string
	roots []string // module names (with "_", as in /proc/modules)
}

// guestModuleGroups are the modules of the guest image. The Debian kernel
// builds every virtio driver as a module (see
// /work/shared/notes/nested-kvm.md); the dependencies come from each
// module's .modinfo "depends=" field, not from a list written here.
//
//   - boot: loaded by /init right after "gvmm-guest: userspace up": the
//     virtio-pci transport, virtio-blk, virtio-rng (the hwrng core is built
//     in), and for later work virtio-net, virtio-console and the vsock
//     transport.
//   - ext4: loaded on demand (gvmm-modules ext4) by tests that format and
//     mount a disk; ext4.ko also mounts ext2, which busybox's mke2fs
//     writes. crc32c_generic is ext4's and jbd2's softdep
//     ("pre: crypto-crc32c"), which the guest has no modprobe to follow.
var guestModuleGroups = []guestModuleGroup{
	{"boot", []string{"virtio_pci", "virtio_blk", "virtio_rng", "virtio_net", "virtio_console", "vmw_vsock_virtio_transport"}},
	{"ext4", []string{"crc32c_generic", "ext4"}},
}

// Paths inside the guest image.
const (
	guestModDir    = "lib/modules/gvmm" // <name>.ko and <group>.order
	guestModScript = "bin/gvmm-modules" // tests/guest/modules
)

func guestModOrder(group string) string { return guestModDir + "/" + group + ".order" }

// kmod is one module to put into the guest image.
type kmod struct {
	name string // as in /proc/modules: "-" in file names becomes "_"
	path string // host file
	deps []string
}

// modName is the module name for a file name under kernel/.
func modName(file string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(file), ".ko"), "-", "_")
}

// moduleIndex maps every module name in the kernel package to its file.
func moduleIndex(d debPackages) (map[string]string, error) {
	root := filepath.Join(d.kernel, "lib", "modules", d.kver, "kernel")
	idx := map[string]string{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() || !strings.HasSuffix(p, ".ko") {
			// Debian 12 ships modules uncompressed; a .ko.xz would
			// need unpacking, and would then be missing here.
			return nil
		}
		name := modName(p)
		if other, dup := idx[name]; dup {
			return fmt.Errorf("module %s twice: %s and %s", name, other, p)
		}
		idx[name] = p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	return idx, nil
}

// modinfo reads a module's .modinfo section: NUL-separated key=value
// strings. A key may repeat (alias=, parm=); the last value wins, which is
// fine for name= and depends=.
func modinfo(path string) (map[string]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("%s: no .modinfo section", path)
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("%s: .modinfo: %w", path, err)
	}
	info := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			info[k] = v
		}
	}
	return info, nil
}

// resolveModules returns roots and everything they depend on, each module
// after its dependencies, leaving out the names in skip (modules an
// earlier group loads).
func resolveModules(idx map[string]string, roots []string, skip map[string]bool) ([]kmod, error) {
	var order []kmod
	state := map[string]int{} // 1: being visited, 2: done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		chain = append(chain, name)
		switch {
		case skip[name] || state[name] == 2:
			return nil
		case state[name] == 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(chain, " -> "))
		}
		state[name] = 1
		path, ok := idx[name]
		if !ok {
			return fmt.Errorf("module %s (%s) is not in the kernel package; built in, or renamed?", name, strings.Join(chain, " -> "))
		}
		info, err := modinfo(path)
		if err != nil {
			return err
		}
		if info["name"] != "" && info["name"] != name {
			return fmt.Errorf("%s: .modinfo says name=%s, want %s", path, info["name"], name)
		}
		m := kmod{name: name, path: path}
		for _, dep := range strings.Split(info["depends"], ",") {
			if dep = strings.TrimSpace(dep); dep != "" {
				m.deps = append(m.deps, dep)
				if err := visit(dep, chain); err != nil {
					return err
				}
			}
		}
		state[name] = 2
		order = append(order, m)
		return nil
	}
	for _, r := range roots {
		if err := visit(r, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// guestModules adds the modules of guestModuleGroups to the guest image:
// lib/modules/gvmm/<name>.ko, and per group <group>.order, one name a
// line, in load order. It returns the order per group, for the log.
func (im *image) guestModules(d debPackages, groups []guestModuleGroup) (map[string][]string, error) {
	idx, err := moduleIndex(d)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	orders := map[string][]string{}
	for _, g := range groups {
		mods, err := resolveModules(idx, g.roots, have)
		if err != nil {
			return nil, fmt.Errorf("guest modules, group %s: %w", g.name, err)
		}
		var names []string
		for _, m := range mods {
			if err := im.hostFile(guestModDir+"/"+m.name+".ko", m.path, 0o644); err != nil {
				return nil, err
			}
			have[m.name] = true
			names = append(names, m.name)
		}
		var b strings.Builder
		for _, n := range names {
			b.WriteString(n + "\n")
		}
		if err := im.File(guestModOrder(g.name), 0o644, []byte(b.String())); err != nil {
			return nil, err
		}
		orders[g.name] = slices.Clip(names)
	}
	return orders, nil
}
