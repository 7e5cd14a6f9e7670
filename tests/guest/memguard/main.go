//go:build linux && amd64

// Command memguard-guest is the guest side of gvmm's protected-memory
// tests. It runs as root inside a gvmm guest; each subcommand prints one
// result line and exits 0 when what it checks holds.
//
//	roundtrip [-mode M] [-size N]   register, write a secret, read it back,
//	                                compare gvmm's digest, unregister, check the wipe
//	hold [-mode M] -secret S        register and keep a secret; prints
//	                                "held PID ADDR LEN ID GPA"; SIGUSR1 re-checks
//	                                the content ("owner ok"), SIGTERM checks,
//	                                unregisters and exits
//	peek -pid P -addr A -len N -secret S
//	                                read another process's memory through
//	                                /proc/P/mem and process_vm_readv; exit 0
//	                                and "no secret" when neither sees it
//	poke -pid P -addr A -data D     write another process's memory through
//	                                /proc/P/mem (the kernel writes it)
//	hostile                         hostile registrations, each refused with
//	                                its error code
//	iomem                           print the guest-physical ranges of the
//	                                kernel's code and data (/proc/iomem), for
//	                                the host to register for measurement
//	bench [-mb N] [-n N]            owner accesses per second (each one exit),
//	                                memory bandwidth outside regions without
//	                                and with a region registered
//	fill -mb N -secret S            touch N MiB of fresh memory (making the
//	                                kernel reuse a dead owner's pages) and
//	                                check none of it holds the secret
package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gvmm/gvmm/tests/guest/memguard/pvmem"
	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: memguard-guest roundtrip|hold|peek|poke|hostile|fill|bench|iomem [flags]")
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "roundtrip":
		err = roundtrip(args)
	case "hold":
		err = hold(args)
	case "peek":
		err = peek(args)
	case "poke":
		err = poke(args)
	case "hostile":
		err = hostile()
	case "fill":
		err = fill(args)
	case "bench":
		err = bench(args)
	case "iomem":
		err = iomem()
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		fmt.Printf("memguard %s: FAIL: %v\n", cmd, err)
		os.Exit(1)
	}
}

func parseMode(s string) (pvmem.Mode, error) {
	switch s {
	case "confidential":
		return pvmem.Confidential, nil
	case "integrity":
		return pvmem.Integrity, nil
	}
	return 0, fmt.Errorf("mode %q: want confidential or integrity", s)
}

func roundtrip(args []string) error {
	fs := flag.NewFlagSet("roundtrip", flag.ContinueOnError)
	modeName := fs.String("mode", "confidential", "confidential or integrity")
	size := fs.Int("size", 2*4096, "buffer size in bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	mode, err := parseMode(*modeName)
	if err != nil {
		return err
	}
	d, err := pvmem.Open()
	if err != nil {
		return err
	}
	defer d.Close()
	if v, _, _, err := d.Version(); err != nil || v != 1 {
		return fmt.Errorf("version %d: %v", v, err)
	}
	buf, err := pvmem.Alloc(*size)
	if err != nil {
		return err
	}
	defer buf.Free()
	id, err := d.Register(buf, mode)
	if err != nil {
		return err
	}
	secret := []byte("the owner's secret, 0123456789abcdef")
	// Straddle a page boundary when there are two pages.
	off := 0
	if buf.Len() > 4096 {
		off = 4096 - 7
	}
	if err := buf.WriteAt(secret, off); err != nil {
		return err
	}
	got := make([]byte, len(secret))
	if err := buf.ReadAt(got, off); err != nil {
		return err
	}
	if !bytes.Equal(got, secret) {
		return fmt.Errorf("read back %q", got)
	}
	all := make([]byte, buf.Len())
	if err := buf.ReadAt(all, 0); err != nil {
		return err
	}
	digest, err := d.Measure(id)
	if err != nil {
		return err
	}
	if digest != sha256.Sum256(all) {
		return fmt.Errorf("gvmm's digest %x differs from the content's", digest)
	}
	if err := d.Unregister(id); err != nil {
		return err
	}
	if err := buf.ReadAt(all, 0); err != nil {
		return err
	}
	if bytes.Contains(all, secret[:8]) {
		return errors.New("secret left in the pages after unregister")
	}
	fmt.Printf("memguard roundtrip: ok (%s, %d bytes, region %d)\n", mode2s(mode), buf.Len(), id)
	return nil
}

func mode2s(m pvmem.Mode) string {
	if m == pvmem.Integrity {
		return "integrity"
	}
	return "confidential"
}

func hold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	modeName := fs.String("mode", "confidential", "confidential or integrity")
	secret := fs.String("secret", "", "the secret")
	if err := fs.Parse(args); err != nil {
		return err
	}
	mode, err := parseMode(*modeName)
	if err != nil {
		return err
	}
	if *secret == "" || len(*secret) > 4096 {
		return errors.New("-secret: 1 to 4096 bytes")
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGTERM)
	d, err := pvmem.Open()
	if err != nil {
		return err
	}
	defer d.Close()
	buf, err := pvmem.Alloc(4096)
	if err != nil {
		return err
	}
	// For integrity the content is there before registration; for
	// confidential it is written after, through gvmm.
	if mode == pvmem.Integrity {
		if err := buf.WriteAt([]byte(*secret), 0); err != nil {
			return err
		}
	}
	id, err := d.Register(buf, mode)
	if err != nil {
		return err
	}
	if mode == pvmem.Confidential {
		if err := buf.WriteAt([]byte(*secret), 0); err != nil {
			return err
		}
	}
	gpa, err := buf.PhysAddr(0)
	if err != nil {
		return err
	}
	fmt.Printf("held %d %#x %d %d %#x\n", os.Getpid(), buf.Addr(), buf.Len(), id, gpa)
	check := func() error {
		got := make([]byte, len(*secret))
		if err := buf.ReadAt(got, 0); err != nil {
			return err
		}
		if string(got) != *secret {
			return fmt.Errorf("content is now %q", got)
		}
		return nil
	}
	for s := range sigs {
		if err := check(); err != nil {
			return err
		}
		if s == syscall.SIGUSR1 {
			fmt.Println("owner ok")
			continue
		}
		if err := d.Unregister(id); err != nil {
			return err
		}
		fmt.Println("memguard hold: ok")
		return nil
	}
	return nil
}

type target struct {
	pid  int
	addr uint64
	n    int
}

func targetFlags(fs *flag.FlagSet) (*int, *string, *int) {
	return fs.Int("pid", 0, "target process"), fs.String("addr", "", "virtual address (0x...)"), fs.Int("len", 4096, "bytes")
}

func parseTarget(pid *int, addr *string, n *int) (target, error) {
	a, err := strconv.ParseUint(*addr, 0, 64)
	if err != nil || *pid <= 0 || *n <= 0 || *n > 1<<20 {
		return target{}, fmt.Errorf("need -pid, -addr and -len (1..1 MiB): %v", err)
	}
	return target{*pid, a, *n}, nil
}

func peek(args []string) error {
	fs := flag.NewFlagSet("peek", flag.ContinueOnError)
	pid, addr, n := targetFlags(fs)
	secret := fs.String("secret", "", "what must not be seen")
	if err := fs.Parse(args); err != nil {
		return err
	}
	t, err := parseTarget(pid, addr, n)
	if err != nil || *secret == "" {
		return fmt.Errorf("peek: %v (and -secret)", err)
	}
	var leaks []string
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", t.pid))
	if err != nil {
		return err
	}
	b := make([]byte, t.n)
	_, rerr := f.ReadAt(b, int64(t.addr))
	f.Close()
	if bytes.Contains(b, []byte(*secret)) {
		leaks = append(leaks, "/proc/PID/mem")
	}
	b2 := make([]byte, t.n)
	_, verr := unix.ProcessVMReadv(t.pid, []unix.Iovec{{Base: &b2[0], Len: uint64(t.n)}},
		[]unix.RemoteIovec{{Base: uintptr(t.addr), Len: t.n}}, 0)
	if bytes.Contains(b2, []byte(*secret)) {
		leaks = append(leaks, "process_vm_readv")
	}
	if len(leaks) > 0 {
		return fmt.Errorf("secret leaked through %v", leaks)
	}
	fmt.Printf("memguard peek: no secret (/proc/PID/mem err %v, process_vm_readv err %v)\n", rerr, verr)
	return nil
}

func poke(args []string) error {
	fs := flag.NewFlagSet("poke", flag.ContinueOnError)
	pid, addr, n := targetFlags(fs)
	data := fs.String("data", "overwritten by the kernel", "bytes to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	t, err := parseTarget(pid, addr, n)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", t.pid), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	w, werr := f.WriteAt([]byte(*data), int64(t.addr))
	// The kernel reports success: gvmm dropped the write underneath it.
	fmt.Printf("memguard poke: wrote %d bytes (err %v)\n", w, werr)
	return nil
}

func hostile() error {
	d, err := pvmem.Open()
	if err != nil {
		return err
	}
	defer d.Close()
	_, maxRegions, maxPages, err := d.Version()
	if err != nil {
		return err
	}
	buf, err := pvmem.Alloc(2 * 4096)
	if err != nil {
		return err
	}
	defer buf.Free()
	ro, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return err
	}
	gone, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	goneAddr := addrOf(gone)
	_ = unix.Munmap(gone)
	va := uint64(buf.Addr())
	cases := []struct {
		name   string
		va, n  uint64
		mode   pvmem.Mode
		errno  syscall.Errno
		before func() (uint64, error)
	}{
		{name: "unaligned", va: va + 1, n: 4096, mode: pvmem.Confidential, errno: unix.EINVAL},
		{name: "empty", va: va, n: 0, mode: pvmem.Confidential, errno: unix.EINVAL},
		{name: "bad mode", va: va, n: 4096, mode: 9, errno: unix.EINVAL},
		{name: "wraps", va: 0xfffffffffffff000, n: 0x2000, mode: pvmem.Confidential, errno: unix.EOVERFLOW},
		{name: "kernel address", va: 0xffffffff81000000, n: 4096, mode: pvmem.Integrity, errno: unix.EOVERFLOW},
		{name: "unmapped", va: uint64(goneAddr), n: 4096, mode: pvmem.Confidential, errno: unix.EFAULT},
		{name: "read-only", va: uint64(addrOf(ro)), n: 4096, mode: pvmem.Integrity, errno: unix.EFAULT},
		{name: "too many pages", va: va, n: (maxPages + 1) * 4096, mode: pvmem.Confidential, errno: unix.ENOSPC},
		{name: "overlap", va: va + 4096, n: 4096, mode: pvmem.Integrity, errno: unix.EBUSY,
			before: func() (uint64, error) { return d.Register(buf, pvmem.Confidential) }},
		{name: "unregister unknown", errno: unix.ENOENT},
	}
	failed := 0
	for _, c := range cases {
		var held uint64
		if c.before != nil {
			if held, err = c.before(); err != nil {
				return fmt.Errorf("%s: setup: %w", c.name, err)
			}
		}
		if c.name == "unregister unknown" {
			err = d.Unregister(1 << 40)
		} else {
			var id uint64
			id, err = d.RegisterRaw(c.va, c.n, c.mode)
			if err == nil {
				_ = d.Unregister(id)
			}
		}
		if held != 0 {
			_ = d.Unregister(held)
		}
		var pe *pvmem.Error
		if !errors.As(err, &pe) || pe.Errno != c.errno {
			fmt.Printf("hostile %s: got %v, want %v\n", c.name, err, c.errno)
			failed++
			continue
		}
		fmt.Printf("hostile %s: refused (%v)\n", c.name, c.errno)
	}
	// The region limit: one-page regions until ENOSPC, which must come
	// no later than maxRegions+1.
	var ids []uint64
	var lerr error
	for i := uint64(0); i <= maxRegions; i++ {
		b, err := pvmem.Alloc(4096)
		if err != nil {
			return err
		}
		defer b.Free()
		id, err := d.Register(b, pvmem.Integrity)
		if err != nil {
			lerr = err
			break
		}
		ids = append(ids, id)
	}
	for _, id := range ids {
		_ = d.Unregister(id)
	}
	if !errors.Is(lerr, unix.ENOSPC) {
		fmt.Printf("hostile region limit: got %v after %d regions, want ENOSPC\n", lerr, len(ids))
		failed++
	} else {
		fmt.Printf("hostile region limit: refused after %d regions (%v)\n", len(ids), lerr)
	}
	if failed > 0 {
		return fmt.Errorf("%d hostile requests not refused as they should be", failed)
	}
	fmt.Println("memguard hostile: ok")
	return nil
}

// bench prints the cost of mediated owner accesses (each 8-byte load
// from a confidential page exits to gvmm) and the guest's memory bandwidth
// outside protected regions, best of three copies of -mb MiB, without and
// with a region registered.
func bench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	mb := fs.Int("mb", 16, "MiB copied per bandwidth sample")
	n := fs.Int("n", 20000, "owner accesses")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *mb <= 0 || *n <= 0 {
		return errors.New("need -mb > 0 and -n > 0")
	}
	src, dst := make([]byte, *mb<<20), make([]byte, *mb<<20)
	for i := range src {
		src[i] = byte(i)
	}
	bandwidth := func() float64 {
		best := 0.0
		for range 3 {
			t0 := time.Now()
			copy(dst, src)
			if v := float64(len(src)) / (1 << 20) / time.Since(t0).Seconds(); v > best {
				best = v
			}
		}
		return best
	}
	without := bandwidth()
	d, err := pvmem.Open()
	if err != nil {
		return err
	}
	defer d.Close()
	buf, err := pvmem.Alloc(4096)
	if err != nil {
		return err
	}
	defer buf.Free()
	id, err := d.Register(buf, pvmem.Confidential)
	if err != nil {
		return err
	}
	word := make([]byte, 8)
	t0 := time.Now()
	for range *n {
		if err := buf.ReadAt(word, 0); err != nil {
			return err
		}
	}
	owner := time.Since(t0)
	with := bandwidth()
	if err := d.Unregister(id); err != nil {
		return err
	}
	fmt.Printf("memguard bench: %d owner accesses in %v (%.0f/s, %.1f us each); bandwidth outside regions %.0f MiB/s without, %.0f MiB/s with a region (%+.1f%%)\n",
		*n, owner.Round(time.Millisecond), float64(*n)/owner.Seconds(), owner.Seconds()*1e6/float64(*n), without, with, (with-without)/without*100)
	fmt.Println("memguard bench: ok")
	return nil
}

func fill(args []string) error {
	fs := flag.NewFlagSet("fill", flag.ContinueOnError)
	mb := fs.Int("mb", 64, "MiB to touch")
	secret := fs.String("secret", "", "what must not be seen")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *secret == "" || *mb <= 0 {
		return errors.New("need -mb > 0 and -secret")
	}
	b, err := unix.Mmap(-1, 0, *mb<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(b)
	if bytes.Contains(b, []byte(*secret)) {
		return errors.New("secret found in fresh memory")
	}
	for i := range b {
		b[i] = byte(i)
	}
	fmt.Printf("memguard fill: ok (%d MiB, no secret)\n", *mb)
	return nil
}

// iomem prints "NAME START END" for the kernel's own ranges in
// /proc/iomem (addresses are shown only to root).
func iomem() error {
	b, err := os.ReadFile("/proc/iomem")
	if err != nil {
		return err
	}
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		rng, name, ok := strings.Cut(strings.TrimSpace(line), " : ")
		if !ok || !strings.HasPrefix(name, "Kernel ") {
			continue
		}
		start, end, ok := strings.Cut(rng, "-")
		if !ok {
			continue
		}
		fmt.Printf("%s 0x%s 0x%s\n", strings.ReplaceAll(strings.ToLower(name), " ", "-"), start, end)
		found++
	}
	if found == 0 {
		return errors.New("no kernel ranges in /proc/iomem (not root?)")
	}
	return nil
}
