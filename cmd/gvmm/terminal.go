package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// terminal remembers a terminal's settings so they can be restored.
type terminal struct {
	fd  int
	old unix.Termios
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// makeRaw puts f in raw mode (as cfmakeraw does): no echo, no line
// editing, no signals from keys, no output processing. The guest's own
// line discipline does all of that.
func makeRaw(f *os.File) (*terminal, error) {
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("get terminal settings: %w", err)
	}
	saved := &terminal{fd: fd, old: *t}
	raw := *t
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, fmt.Errorf("set raw mode: %w", err)
	}
	return saved, nil
}

func (t *terminal) restore() {
	_ = unix.IoctlSetTermios(t.fd, unix.TCSETS, &t.old)
}
