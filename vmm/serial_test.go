package vmm

import (
	"bytes"
	"testing"
)

type uartHarness struct {
	s      *serial
	out    bytes.Buffer
	levels []bool
}

func newUART() *uartHarness {
	h := &uartHarness{}
	h.s = newSerial(&h.out, func(l bool) { h.levels = append(h.levels, l) })
	return h
}

func (h *uartHarness) in(off uint16) uint8 {
	b := []byte{0}
	h.s.PortRead(off, b)
	return b[0]
}

func (h *uartHarness) outb(off uint16, v uint8) { h.s.PortWrite(off, []byte{v}) }

// TestSerialProbe replays the checks of Linux's 8250 autoconfig: IER keeps
// its low four bits, loopback mirrors MCR into MSR, the scratch register
// stores, and FIFOs report as a 16550A.
func TestSerialProbe(t *testing.T) {
	h := newUART()
	h.outb(uartIER, 0)
	if got := h.in(uartIER) & 0x0f; got != 0 {
		t.Fatalf("IER after writing 0 = %#x", got)
	}
	h.outb(uartIER, 0x0f)
	if got := h.in(uartIER) & 0x0f; got != 0x0f {
		t.Fatalf("IER after writing 0x0f = %#x", got)
	}
	h.outb(uartIER, 0)
	h.outb(uartMCR, mcrLoop|0x0a)
	if got := h.in(uartMSR) & 0xf0; got != msrDCD|msrCTS {
		t.Fatalf("MSR in loopback = %#x, want %#x", got, msrDCD|msrCTS)
	}
	h.outb(uartMCR, 0)
	h.outb(uartSCR, 0xa5)
	if h.in(uartSCR) != 0xa5 {
		t.Fatal("scratch register does not store")
	}
	h.outb(uartIIR, fcrEnable)
	if got := h.in(uartIIR) >> 6; got != 3 {
		t.Fatalf("IIR FIFO bits = %d, want 3 (16550A)", got)
	}
	// DLAB switches RBR/IER to the divisor latch.
	h.outb(uartLCR, lcrDLAB)
	h.outb(uartRBR, 0x01)
	h.outb(uartIER, 0x00)
	if h.in(uartRBR) != 0x01 || h.in(uartIER) != 0 {
		t.Fatal("divisor latch does not store")
	}
	h.outb(uartLCR, 0x03)
	if h.out.Len() != 0 {
		t.Fatalf("divisor writes reached the console: %q", h.out.String())
	}
}

func TestSerialTransmitInterrupt(t *testing.T) {
	h := newUART()
	h.outb(uartMCR, mcrOut2)
	h.outb(uartIER, ierTHRI)
	if len(h.levels) != 1 || !h.levels[0] {
		t.Fatalf("enabling THRI did not raise the line: %v", h.levels)
	}
	if got := h.in(uartIIR) & 0x0f; got != iirTHRI {
		t.Fatalf("IIR = %#x, want THRI", got)
	}
	if h.levels[len(h.levels)-1] {
		t.Fatal("reading IIR did not lower the line")
	}
	if got := h.in(uartIIR) & 0x0f; got != iirNone {
		t.Fatalf("IIR after acknowledge = %#x", got)
	}
	for _, c := range []byte("hi\n") {
		h.outb(uartRBR, c)
	}
	if h.out.String() != "hi\n" {
		t.Fatalf("console got %q", h.out.String())
	}
	h.outb(uartRBR, 'x')
	h.s.Flush()
	if h.out.String() != "hi\nx" {
		t.Fatalf("after flush console got %q", h.out.String())
	}
}

func TestSerialReceive(t *testing.T) {
	h := newUART()
	h.outb(uartIER, ierRDI)
	if n := h.s.Input([]byte("ab")); n != 2 {
		t.Fatalf("Input took %d", n)
	}
	if len(h.levels) != 0 {
		t.Fatal("interrupt raised with OUT2 clear")
	}
	h.outb(uartMCR, mcrOut2)
	if len(h.levels) != 1 || !h.levels[0] {
		t.Fatalf("setting OUT2 with data pending did not raise the line: %v", h.levels)
	}
	if h.in(uartLSR)&lsrDR == 0 || h.in(uartIIR)&0x0f != iirRDI {
		t.Fatal("data ready not reported")
	}
	if a, b := h.in(uartRBR), h.in(uartRBR); a != 'a' || b != 'b' {
		t.Fatalf("read %q %q", a, b)
	}
	if h.in(uartLSR)&lsrDR != 0 || h.levels[len(h.levels)-1] {
		t.Fatal("drained UART still reports data or holds the line")
	}
	big := make([]byte, serialInputMax+10)
	if n := h.s.Input(big); n != serialInputMax {
		t.Fatalf("Input took %d of an oversize write, want %d", n, serialInputMax)
	}
	if n := h.s.Input([]byte("z")); n != 0 {
		t.Fatalf("full queue took %d", n)
	}
}

// TestSerialHeldOutput checks that a partial line waits for Flush and says
// so on held, and that whole lines are written at once.
func TestSerialHeldOutput(t *testing.T) {
	h := newUART()
	held := func() bool {
		select {
		case <-h.s.held:
			return true
		default:
			return false
		}
	}
	if held() {
		t.Fatal("held signalled with no output")
	}
	for _, c := range []byte("guest# ") {
		h.outb(uartRBR, c) // THR, at offset 0 too
	}
	if sig := held(); h.out.Len() != 0 || !sig {
		t.Fatalf("a prompt: written %q, held signalled %v; want nothing written, held signalled", h.out.String(), sig)
	}
	if held() {
		t.Fatal("held signalled again for the same partial line")
	}
	h.s.Flush()
	if h.out.String() != "guest# " {
		t.Fatalf("after Flush: %q", h.out.String())
	}
	for _, c := range []byte("ls\n") {
		h.outb(uartRBR, c) // THR, at offset 0 too
	}
	if h.out.String() != "guest# ls\n" {
		t.Fatalf("a whole line: %q", h.out.String())
	}
}
