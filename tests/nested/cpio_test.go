package main

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"testing"
)

// newcEntry is one entry as read back by readNewc.
type newcEntry struct {
	name         string
	ino, mode    uint32
	nlink        uint32
	rmaj, rmin   uint32
	data         string
	headerOffset int
}

// readNewc parses a newc archive independently of cpioWriter, following
// the kernel's buffer-format.rst: 110-byte header of "070701" and 13
// eight-digit hex fields, the name with its NUL padded to 4 bytes (counting
// from the start of the header), the data padded to 4 bytes. It stops at
// TRAILER!!! and insists that nothing but padding follows.
func readNewc(t *testing.T, b []byte) []newcEntry {
	t.Helper()
	var out []newcEntry
	off := 0
	for {
		if off%4 != 0 {
			t.Fatalf("header at offset %d is not 4-byte aligned", off)
		}
		if len(b)-off < 110 {
			t.Fatalf("truncated header at offset %d", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic %q at offset %d", h[:6], off)
		}
		field := func(i int) uint32 {
			s := string(h[6+8*i : 14+8*i])
			v, err := strconv.ParseUint(s, 16, 32)
			if err != nil {
				t.Fatalf("field %d %q at offset %d: %v", i, s, off, err)
			}
			return uint32(v)
		}
		e := newcEntry{ino: field(0), mode: field(1), nlink: field(4), rmaj: field(9), rmin: field(10), headerOffset: off}
		if uid, gid, mtime, check := field(2), field(3), field(5), field(12); uid|gid|mtime|check != 0 {
			t.Fatalf("uid/gid/mtime/check not zero: %d %d %d %d", uid, gid, mtime, check)
		}
		size, namesize := int(field(6)), int(field(11))
		nameEnd := off + 110 + namesize
		if nameEnd > len(b) || namesize == 0 || b[nameEnd-1] != 0 {
			t.Fatalf("bad name (size %d) at offset %d", namesize, off)
		}
		e.name = string(b[off+110 : nameEnd-1])
		dataOff := nameEnd + (4-nameEnd%4)%4
		if dataOff+size > len(b) {
			t.Fatalf("%s: data runs past the end", e.name)
		}
		for _, c := range b[nameEnd:dataOff] {
			if c != 0 {
				t.Fatalf("%s: non-zero name padding", e.name)
			}
		}
		e.data = string(b[dataOff : dataOff+size])
		off = dataOff + size
		off += (4 - off%4) % 4
		if e.name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestCPIOWriterRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("dev", 0o755))
	must(w.CharDev("/dev/console", 0o600, 5, 1))
	must(w.File("/init", 0o755, []byte("#!/bin/sh\necho hi\n")))
	must(w.File("gvmm/guest/empty", 0o644, nil))
	must(w.Symlink("bin/sh", "busybox"))
	// Names of every length mod 4 exercise the padding.
	for i := 1; i <= 4; i++ {
		must(w.File(fmt.Sprintf("p/%s", "abcd"[:i]), 0o600, []byte("xyz"[:i%4])))
	}
	must(w.Dir("gvmm", 0o700)) // already written as a parent: no duplicate
	must(w.Close())

	got := readNewc(t, buf.Bytes())
	want := []struct {
		name string
		mode uint32
		data string
	}{
		{"dev", 0o040755, ""},
		{"dev/console", 0o020600, ""},
		{"init", 0o100755, "#!/bin/sh\necho hi\n"},
		{"gvmm", 0o040755, ""},
		{"gvmm/guest", 0o040755, ""},
		{"gvmm/guest/empty", 0o100644, ""},
		{"bin", 0o040755, ""},
		{"bin/sh", 0o120777, "busybox"},
		{"p", 0o040755, ""},
		{"p/a", 0o100600, "x"},
		{"p/ab", 0o100600, "xy"},
		{"p/abc", 0o100600, "xyz"},
		{"p/abcd", 0o100600, ""},
	}
	if len(got) != len(want) {
		for _, e := range got {
			t.Logf("got %s %o", e.name, e.mode)
		}
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	inos := map[uint32]bool{}
	for i, w := range want {
		g := got[i]
		if g.name != w.name || g.mode != w.mode || g.data != w.data {
			t.Errorf("entry %d: got %q mode %o data %q, want %q mode %o data %q", i, g.name, g.mode, g.data, w.name, w.mode, w.data)
		}
		if inos[g.ino] || g.ino == 0 {
			t.Errorf("entry %d (%s): inode %d reused or zero", i, g.name, g.ino)
		}
		inos[g.ino] = true
	}
	if c := got[1]; c.rmaj != 5 || c.rmin != 1 {
		t.Errorf("dev/console: rdev %d:%d, want 5:1", c.rmaj, c.rmin)
	}
	if d := got[0]; d.nlink != 2 {
		t.Errorf("dir nlink %d, want 2", d.nlink)
	}
}

// TestCPIOWriterGolden pins the exact bytes of a one-file archive, written
// out by hand from the newc spec.
func TestCPIOWriterGolden(t *testing.T) {
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	if err := w.File("a", 0o644, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := "070701" + "00000001" + "000081a4" + "00000000" + "00000000" + "00000001" + "00000000" +
		"00000002" + "00000000" + "00000000" + "00000000" + "00000000" + "00000002" + "00000000" +
		"a\x00" + "hi\x00\x00" +
		"070701" + "00000000" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" +
		"00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "0000000b" + "00000000" +
		"TRAILER!!!\x00" + "\x00\x00\x00" // trailer at 116: 116+110+11 = 237, padded to 240
	if got := buf.String(); got != want {
		t.Fatalf("archive bytes:\n got %q\nwant %q", got, want)
	}
}

func TestCPIOWriterErrors(t *testing.T) {
	w := newCPIOWriter(io.Discard)
	if err := w.File("/", 0o644, nil); err == nil {
		t.Fatal("empty name accepted")
	}
	// The first error sticks.
	if err := w.File("ok", 0o644, nil); err == nil {
		t.Fatal("write after error accepted")
	}

	w = newCPIOWriter(io.Discard)
	if err := w.FileFrom("short", 0o644, bytes.NewReader([]byte("ab")), 3); err == nil {
		t.Fatal("short reader accepted")
	}

	w = newCPIOWriter(io.Discard)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.File("late", 0o644, nil); err == nil {
		t.Fatal("entry after Close accepted")
	}
}
