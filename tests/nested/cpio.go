package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// File type bits of a cpio mode (the same values as in struct stat).
const (
	cpioTypeDir     = 0o040000
	cpioTypeRegular = 0o100000
	cpioTypeSymlink = 0o120000
	cpioTypeChar    = 0o020000
	cpioTrailer     = "TRAILER!!!"
	cpioNewcMagic   = "070701"
	cpioHeaderLen   = 110 // magic + 13 fields of 8 hex digits
)

// cpioWriter writes a cpio archive in the "newc" format (magic 070701), the
// one the Linux kernel unpacks as an initramfs
// (Documentation/driver-api/early-userspace/buffer-format.rst).
//
// Names are stored without a leading slash. The kernel does not create
// missing parent directories while unpacking, so the writer adds each
// parent directory (mode 0755) before the first entry below it. Every
// entry gets mtime 0, uid and gid 0 and its own inode number, so the same
// inputs give the same archive.
//
// The first error sticks: later calls return it and write nothing.
type cpioWriter struct {
	w    io.Writer
	ino  uint32          // last inode number handed out
	dirs map[string]bool // directories already written
	done bool            // trailer written
	err  error
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: w, dirs: map[string]bool{}}
}

// cleanName turns "/a//b/" into "a/b" and rejects names that leave the root.
func cleanName(name string) (string, error) {
	n := strings.TrimPrefix(path.Clean("/"+name), "/")
	if n == "" || n == "." {
		return "", fmt.Errorf("cpio: empty entry name %q", name)
	}
	return n, nil
}

// Dir adds a directory (and its missing parents).
func (c *cpioWriter) Dir(name string, perm uint32) error {
	n, err := cleanName(name)
	if err != nil {
		return c.fail(err)
	}
	if err := c.parents(n); err != nil {
		return err
	}
	if c.dirs[n] {
		return nil
	}
	c.dirs[n] = true
	return c.entry(n, cpioTypeDir|perm&0o7777, 2, 0, 0, 0, nil)
}

// File adds a regular file with the given contents.
func (c *cpioWriter) File(name string, perm uint32, data []byte) error {
	return c.FileFrom(name, perm, bytes.NewReader(data), int64(len(data)))
}

// FileFrom adds a regular file of exactly size bytes read from r.
func (c *cpioWriter) FileFrom(name string, perm uint32, r io.Reader, size int64) error {
	if size < 0 || size > 0xffffffff {
		return c.fail(fmt.Errorf("cpio: %s: size %d does not fit the newc format", name, size))
	}
	n, err := c.prepare(name)
	if err != nil {
		return err
	}
	return c.entry(n, cpioTypeRegular|perm&0o7777, 1, 0, 0, size, r)
}

// Symlink adds a symbolic link name -> target.
func (c *cpioWriter) Symlink(name, target string) error {
	n, err := c.prepare(name)
	if err != nil {
		return err
	}
	return c.entry(n, cpioTypeSymlink|0o777, 1, 0, 0, int64(len(target)), strings.NewReader(target))
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) error {
	n, err := c.prepare(name)
	if err != nil {
		return err
	}
	return c.entry(n, cpioTypeChar|perm&0o7777, 1, major, minor, 0, nil)
}

// Close writes the trailer entry. It does not close the underlying writer.
func (c *cpioWriter) Close() error {
	if c.err != nil {
		return c.err
	}
	if c.done {
		return nil
	}
	c.done = true
	c.ino = 0 // the trailer has inode 0, like GNU cpio writes it
	return c.entry(cpioTrailer, 0, 1, 0, 0, 0, nil)
}

func (c *cpioWriter) prepare(name string) (string, error) {
	n, err := cleanName(name)
	if err != nil {
		return "", c.fail(err)
	}
	return n, c.parents(n)
}

// parents writes every missing parent directory of n.
func (c *cpioWriter) parents(n string) error {
	d := path.Dir(n)
	if d == "." || c.dirs[d] {
		return c.err
	}
	return c.Dir(d, 0o755)
}

func (c *cpioWriter) fail(err error) error {
	if c.err == nil {
		c.err = err
	}
	return c.err
}

// pad4 is how many zero bytes bring n up to a multiple of 4.
func pad4(n int64) int64 { return (4 - n%4) % 4 }

func (c *cpioWriter) entry(name string, mode, nlink, rmajor, rminor uint32, size int64, r io.Reader) error {
	if c.err != nil {
		return c.err
	}
	if c.done && name != cpioTrailer {
		return c.fail(errors.New("cpio: entry after Close"))
	}
	ino := uint32(0)
	if name != cpioTrailer {
		c.ino++
		ino = c.ino
	}
	var hdr strings.Builder
	hdr.WriteString(cpioNewcMagic)
	for _, v := range []uint32{
		ino, mode, 0 /* uid */, 0 /* gid */, nlink, 0, /* mtime */
		uint32(size), 0 /* devmajor */, 0 /* devminor */, rmajor, rminor,
		uint32(len(name) + 1), 0, /* check */
	} {
		fmt.Fprintf(&hdr, "%08x", v)
	}
	hdr.WriteString(name)
	hdr.WriteByte(0)
	hdr.WriteString(strings.Repeat("\x00", int(pad4(int64(cpioHeaderLen+len(name)+1)))))
	if _, err := io.WriteString(c.w, hdr.String()); err != nil {
		return c.fail(fmt.Errorf("cpio: write header of %s: %w", name, err))
	}
	if size > 0 {
		n, err := io.CopyN(c.w, r, size)
		if err != nil {
			return c.fail(fmt.Errorf("cpio: write %s (%d of %d bytes): %w", name, n, size, err))
		}
		if _, err := c.w.Write(make([]byte, pad4(size))); err != nil {
			return c.fail(fmt.Errorf("cpio: pad %s: %w", name, err))
		}
	}
	return nil
}
