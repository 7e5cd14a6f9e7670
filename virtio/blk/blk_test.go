package blk_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gvmm/gvmm/virtio"
	"github.com/gvmm/gvmm/virtio/blk"
	"github.com/gvmm/gvmm/virtio/virtiotest"
)

const diskSectors = 256 // 128 KiB

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

func newImage(t *testing.T) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	img := pattern(diskSectors*blk.SectorSize, 1)
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, img
}

// req is one request: its header, the data it carries or receives, and
// where its status byte is.
type req struct {
	typ      uint32
	sector   uint64
	out      []byte // device-readable data after the header
	inLen    uint32 // device-writable data before the status byte
	split    bool   // spread data over two descriptors
	noStatus bool   // hostile: no writable byte at all
	shortHdr bool   // hostile: an 8-byte header

	wantStatus byte
	wantLen    uint32
	inAddr     uint64
	statusAddr uint64
}

func (r *req) add(d *virtiotest.Driver) {
	hdr := make([]byte, 16)
	binary.LittleEndian.PutUint32(hdr, r.typ)
	binary.LittleEndian.PutUint64(hdr[8:], r.sector)
	if r.shortHdr {
		hdr = hdr[:8]
	}
	h := d.Alloc(uint64(len(hdr)))
	d.Mem.GuestWrite(h, hdr)
	bufs := []virtiotest.Buf{{Addr: h, Len: uint32(len(hdr))}}
	addData := func(addr uint64, n uint32, write bool) {
		if n == 0 {
			return
		}
		if r.split && n > 1 {
			bufs = append(bufs, virtiotest.Buf{Addr: addr, Len: n / 2, Write: write},
				virtiotest.Buf{Addr: addr + uint64(n/2), Len: n - n/2, Write: write})
			return
		}
		bufs = append(bufs, virtiotest.Buf{Addr: addr, Len: n, Write: write})
	}
	if len(r.out) > 0 {
		a := d.Alloc(uint64(len(r.out)))
		d.Mem.GuestWrite(a, r.out)
		addData(a, uint32(len(r.out)), false)
	}
	r.inAddr = d.Alloc(uint64(r.inLen))
	addData(r.inAddr, r.inLen, true)
	if !r.noStatus {
		r.statusAddr = d.Alloc(1)
		d.Mem.GuestWrite(r.statusAddr, []byte{0xee})
		bufs = append(bufs, virtiotest.Buf{Addr: r.statusAddr, Len: 1, Write: true})
	}
	d.AddChain(bufs...)
}

func discardSeg(sector uint64, num, flags uint32) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, sector)
	binary.LittleEndian.PutUint32(b[8:], num)
	binary.LittleEndian.PutUint32(b[12:], flags)
	return b
}

// run sends reqs to a fresh device over the image and checks each status
// and used length, and that every byte written into guest RAM is dirty.
func run(t *testing.T, path string, opts blk.Options, features uint64, reqs []*req) *virtiotest.Memory {
	t.Helper()
	dev, err := blk.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	mem := virtiotest.NewMemory(0x100000, 4<<20)
	d := virtiotest.NewDriver(mem, 64)
	for _, r := range reqs {
		r.add(d)
	}
	mem.Undirtied(0)
	h, err := virtiotest.Activate(dev, mem, features, d)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.WaitUsed(d, uint16(len(reqs)), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	dev.Reset()
	used := d.TakeUsed()
	for i, r := range reqs {
		if used[i].Len != r.wantLen {
			t.Errorf("request %d (type %d): used len %d, want %d", i, r.typ, used[i].Len, r.wantLen)
		}
		if r.noStatus {
			continue
		}
		if got := mem.GuestRead(r.statusAddr, 1)[0]; got != r.wantStatus {
			t.Errorf("request %d (type %d sector %d): status %d, want %d", i, r.typ, r.sector, got, r.wantStatus)
		}
	}
	if bad, _ := mem.Undirtied(8); len(bad) > 0 {
		t.Fatalf("bytes written without dirty marking: %#x", bad)
	}
	return mem
}

func TestReadWriteFlushID(t *testing.T) {
	path, img := newImage(t)
	newData := pattern(3*blk.SectorSize, 99)
	reqs := []*req{
		{typ: blk.TypeIn, sector: 2, inLen: 2 * blk.SectorSize, wantLen: 2*blk.SectorSize + 1},
		{typ: blk.TypeIn, sector: diskSectors - 1, inLen: blk.SectorSize, split: true, wantLen: blk.SectorSize + 1},
		{typ: blk.TypeOut, sector: 10, out: newData, split: true, wantLen: 1},
		{typ: blk.TypeFlush, wantLen: 1},
		{typ: blk.TypeGetID, inLen: blk.IDBytes, wantLen: blk.IDBytes + 1},
		{typ: blk.TypeGetID, inLen: 4, wantLen: 5},
	}
	for _, features := range []uint64{
		virtio.FVersion1 | blk.FFlush,
		virtio.FVersion1 | virtio.FEventIdx | virtio.FIndirectDesc, // write-through
	} {
		mem := run(t, path, blk.Options{Serial: "gvmm-disk-0"}, features, reqs)
		if got := mem.GuestRead(reqs[0].inAddr, 1024); !bytes.Equal(got, img[1024:2048]) {
			t.Fatal("read 0: wrong data")
		}
		if got := mem.GuestRead(reqs[1].inAddr, 512); !bytes.Equal(got, img[len(img)-512:]) {
			t.Fatal("read 1: wrong data")
		}
		file, _ := os.ReadFile(path)
		if !bytes.Equal(file[10*512:13*512], newData) || !bytes.Equal(file[:10*512], img[:10*512]) || !bytes.Equal(file[13*512:], img[13*512:]) {
			t.Fatal("write landed wrong")
		}
		want := make([]byte, blk.IDBytes)
		copy(want, "gvmm-disk-0")
		if got := mem.GuestRead(reqs[4].inAddr, blk.IDBytes); !bytes.Equal(got, want) {
			t.Fatalf("id = %q", got)
		}
		if got := mem.GuestRead(reqs[5].inAddr, 4); string(got) != "gvmm" {
			t.Fatalf("short id = %q", got)
		}
	}
}

func TestDiscard(t *testing.T) {
	path, img := newImage(t)
	seg := append(discardSeg(8, 16, 0), discardSeg(64, 8, 0)...)
	reqs := []*req{
		{typ: blk.TypeDiscard, out: seg, wantStatus: blk.StatusOK, wantLen: 1},
		{typ: blk.TypeDiscard, out: discardSeg(0, 8, 1), wantStatus: blk.StatusUnsupp, wantLen: 1},
		{typ: blk.TypeDiscard, out: discardSeg(diskSectors-4, 8, 0), wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: blk.TypeDiscard, out: discardSeg(1<<63, 8, 0), wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: blk.TypeDiscard, out: []byte{1, 2, 3}, wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: blk.TypeDiscard, wantStatus: blk.StatusIOErr, wantLen: 1},
	}
	run(t, path, blk.Options{}, virtio.FVersion1|blk.FFlush|blk.FDiscard, reqs)
	file, _ := os.ReadFile(path)
	want := append([]byte(nil), img...)
	clear(want[8*512 : 24*512])
	clear(want[64*512 : 72*512])
	if !bytes.Equal(file, want) {
		t.Fatal("discard did not zero exactly the ranges asked")
	}
}

func TestBadRequests(t *testing.T) {
	path, img := newImage(t)
	reqs := []*req{
		{typ: blk.TypeIn, sector: diskSectors, inLen: 512, wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: blk.TypeIn, sector: diskSectors - 1, inLen: 1024, wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: blk.TypeIn, sector: 1<<64 - 1, inLen: 512, wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: blk.TypeIn, sector: 1<<55 + 1, inLen: 512, wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: blk.TypeIn, sector: 0, inLen: 100, wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: blk.TypeOut, sector: diskSectors, out: make([]byte, 512), wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: blk.TypeOut, sector: 0, out: make([]byte, 511), wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: 77, wantStatus: blk.StatusUnsupp, wantLen: 1},
		{typ: blk.TypeIn, shortHdr: true, wantStatus: blk.StatusIOErr, wantLen: 1},
		// No writable byte at all: no status can be given, nothing is done.
		{typ: blk.TypeOut, out: pattern(512, 5), noStatus: true, wantLen: 0},
	}
	run(t, path, blk.Options{}, virtio.FVersion1|blk.FFlush, reqs)
	if file, _ := os.ReadFile(path); !bytes.Equal(file, img) {
		t.Fatal("a refused request changed the image")
	}
}

func TestReadOnly(t *testing.T) {
	path, img := newImage(t)
	dev, err := blk.Open(path, blk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if f := dev.Features(); f&blk.FRO == 0 || f&blk.FDiscard != 0 {
		t.Fatalf("read-only features %#x", f)
	}
	dev.Close()
	reqs := []*req{
		{typ: blk.TypeOut, sector: 0, out: make([]byte, 512), wantStatus: blk.StatusIOErr, wantLen: 1},
		{typ: blk.TypeDiscard, out: discardSeg(0, 8, 0), wantStatus: blk.StatusUnsupp, wantLen: 1},
		{typ: blk.TypeIn, sector: 0, inLen: 512, wantLen: 513},
		{typ: blk.TypeFlush, wantLen: 1},
	}
	mem := run(t, path, blk.Options{ReadOnly: true}, virtio.FVersion1|blk.FFlush|blk.FRO, reqs)
	if file, _ := os.ReadFile(path); !bytes.Equal(file, img) {
		t.Fatal("read-only image changed")
	}
	if got := mem.GuestRead(reqs[2].inAddr, 512); !bytes.Equal(got, img[:512]) {
		t.Fatal("read on read-only disk")
	}
}

func TestConfig(t *testing.T) {
	path, _ := newImage(t)
	dev, err := blk.Open(path, blk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	b := make([]byte, 8)
	dev.ReadConfig(0, b)
	if got := binary.LittleEndian.Uint64(b); got != diskSectors {
		t.Fatalf("capacity %d", got)
	}
	dev.ReadConfig(20, b[:4])
	if got := binary.LittleEndian.Uint32(b); got != 512 {
		t.Fatalf("blk_size %d", got)
	}
	dev.ReadConfig(1000, b)
	if !bytes.Equal(b, make([]byte, 8)) {
		t.Fatal("config past the end is not zero")
	}
	if _, err := blk.Open(filepath.Join(t.TempDir(), "missing"), blk.Options{}); err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := blk.Open(path, blk.Options{Serial: "this serial is far too long"}); err == nil {
		t.Fatal("long serial accepted")
	}
}

func unwrapAll(err error) error {
	for {
		type unwrapper interface{ Unwrap() error }
		u, ok := err.(unwrapper)
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
