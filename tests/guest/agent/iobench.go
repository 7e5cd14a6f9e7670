package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// ioChunk is the size of every read, write and send of the I/O
// benchmark commands (dd's bs=1M).
const ioChunk = 1 << 20

// ioLine is what the I/O benchmark commands print on success; the
// benchmark (tests/nested/iobench) parses it.
func ioLine(op string, bytes int64, d time.Duration) string {
	return fmt.Sprintf("gvmm-iobench: op=%s bytes=%d ns=%d", op, bytes, d.Nanoseconds())
}

// diskBench runs "agent disk read|write DEV MIB": MIB MiB of sequential
// 1 MiB transfers at the start of DEV with O_DIRECT, so that the guest's
// page cache measures nothing; a write ends with fdatasync (a virtio-blk
// flush), inside the timed span.
func diskBench(args []string) (string, error) {
	if len(args) != 3 || (args[0] != "read" && args[0] != "write") {
		return "", errors.New("usage: agent disk read|write DEV MIB")
	}
	mib, err := strconv.Atoi(args[2])
	if err != nil || mib < 1 {
		return "", fmt.Errorf("MIB %q: want a positive number", args[2])
	}
	write := args[0] == "write"
	flag := unix.O_RDONLY
	if write {
		flag = unix.O_WRONLY
	}
	fd, err := unix.Open(args[1], flag|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open %s O_DIRECT: %w", args[1], err)
	}
	defer unix.Close(fd)
	// O_DIRECT wants an aligned buffer: an anonymous mapping is
	// page-aligned. Written data is not all zeros, in case a layer
	// below ever treats zeros specially.
	buf, err := unix.Mmap(-1, 0, ioChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return "", fmt.Errorf("mmap a buffer: %w", err)
	}
	defer unix.Munmap(buf)
	for i := range buf {
		buf[i] = byte(i*7 + i>>12)
	}
	start := time.Now()
	var done int64
	for i := 0; i < mib; i++ {
		var n int
		if write {
			n, err = unix.Pwrite(fd, buf, done)
		} else {
			n, err = unix.Pread(fd, buf, done)
		}
		if err != nil {
			return "", fmt.Errorf("%s %s at %d: %w", args[0], args[1], done, err)
		}
		if n != len(buf) {
			return "", fmt.Errorf("%s %s at %d: %d of %d bytes (is the disk smaller than %d MiB?)", args[0], args[1], done, n, len(buf), mib)
		}
		done += int64(n)
	}
	if write {
		if err := unix.Fdatasync(fd); err != nil {
			return "", fmt.Errorf("fdatasync %s: %w", args[1], err)
		}
	}
	return ioLine("blk-"+args[0], done, time.Since(start)), nil
}

// tcpSend runs "agent tcpsend HOST:PORT MIB": it connects, sends MIB MiB,
// closes its sending side and waits for the receiver to close, so that the
// time it prints covers delivery, not just filling the socket buffer. (The
// receiver's own timing is the benchmark's figure; this one is for the log.)
func tcpSend(args []string) (string, error) {
	if len(args) != 2 {
		return "", errors.New("usage: agent tcpsend HOST:PORT MIB")
	}
	mib, err := strconv.Atoi(args[1])
	if err != nil || mib < 1 {
		return "", fmt.Errorf("MIB %q: want a positive number", args[1])
	}
	buf := make([]byte, ioChunk)
	for i := range buf {
		buf[i] = byte(i*7 + i>>12)
	}
	start := time.Now()
	c, err := net.DialTimeout("tcp", args[0], 30*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	var done int64
	for i := 0; i < mib; i++ {
		n, err := c.Write(buf)
		done += int64(n)
		if err != nil {
			return "", fmt.Errorf("send to %s after %d bytes: %w", args[0], done, err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", fmt.Errorf("close sending side: %w", err)
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		return "", fmt.Errorf("wait for %s to close: %w", args[0], err)
	}
	return ioLine("net-tx", done, time.Since(start)), nil
}

// runIOCommand runs one of the I/O benchmark commands and prints its line,
// or the error; it returns the exit status.
func runIOCommand(f func([]string) (string, error), args []string) int {
	line, err := f(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gvmm-agent: %v\n", err)
		return 1
	}
	fmt.Println(line)
	return 0
}
