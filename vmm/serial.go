package vmm

import (
	"fmt"
	"io"
	"sync"
)

// 8250/16550A register offsets and bits (see the National Semiconductor
// PC16550D data sheet). Only what Linux's 8250 driver uses.
const (
	uartRBR = 0 // receive buffer (read), THR transmit holding (write), DLL with DLAB
	uartIER = 1 // interrupt enable, DLM with DLAB
	uartIIR = 2 // interrupt identification (read), FCR FIFO control (write)
	uartLCR = 3
	uartMCR = 4
	uartLSR = 5
	uartMSR = 6
	uartSCR = 7

	ierRDI  = 0x01 // received data available
	ierTHRI = 0x02 // transmit holding register empty
	ierRLSI = 0x04
	ierMSI  = 0x08

	iirNone  = 0x01
	iirTHRI  = 0x02
	iirRDI   = 0x04
	iirFIFOs = 0xc0

	fcrEnable = 0x01

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOut1 = 0x04
	mcrOut2 = 0x08
	mcrLoop = 0x10

	lsrDR   = 0x01
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrCTS = 0x10
	msrDSR = 0x20
	msrRI  = 0x40
	msrDCD = 0x80

	// serialInputMax bounds the bytes queued for the guest; the feeder
	// waits when the guest does not read.
	serialInputMax = 4096
	// serialFlushAt is how much output is buffered before a write.
	serialFlushAt = 512
)

// serial is a 16550A UART. Output goes to out, input is queued by Input.
// The interrupt line is driven through raise, which is called with the
// new line level whenever it changes (edge-triggered ISA semantics: a new
// interrupt is a 0->1 transition).
type serial struct {
	mu    sync.Mutex
	out   io.Writer
	raise func(level bool)
	// held is signalled (capacity 1) when output starts waiting in obuf
	// for a Flush: a partial line, such as a shell prompt. Whole lines
	// are written at once.
	held chan struct{}

	// Guarded by mu.
	in         []byte
	obuf       []byte
	ier, lcr   uint8
	mcr, scr   uint8
	dll, dlm   uint8
	fcr        uint8
	thrPending bool // THR-empty interrupt is pending until IIR is read
	level      bool
	outErr     error
}

func newSerial(out io.Writer, raise func(level bool)) *serial {
	return &serial{out: out, raise: raise, dll: 0x0c, held: make(chan struct{}, 1)}
}

// Input queues bytes for the guest and returns how many were taken.
func (s *serial) Input(p []byte) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := serialInputMax - len(s.in)
	if n > len(p) {
		n = len(p)
	}
	if n <= 0 {
		return 0
	}
	s.in = append(s.in, p[:n]...)
	s.updateIRQ()
	return n
}

// Flush writes buffered output.
func (s *serial) Flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushLocked()
}

func (s *serial) flushLocked() {
	if len(s.obuf) == 0 {
		return
	}
	if _, err := s.out.Write(s.obuf); err != nil && s.outErr == nil {
		s.outErr = err
	}
	s.obuf = s.obuf[:0]
}

// PortRead handles a guest read of the register at offset off.
func (s *serial) PortRead(off uint16, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.read(off)
	for i := range data {
		data[i] = v
	}
	s.updateIRQ()
}

// PortWrite handles a guest write to the register at offset off.
func (s *serial) PortWrite(off uint16, data []byte) {
	if len(data) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.write(off, data[0])
	s.updateIRQ()
}

func (s *serial) read(off uint16) uint8 {
	switch off {
	case uartRBR:
		if s.lcr&lcrDLAB != 0 {
			return s.dll
		}
		if len(s.in) == 0 {
			return 0
		}
		b := s.in[0]
		s.in = s.in[1:]
		if len(s.in) == 0 {
			s.in = nil
		}
		return b
	case uartIER:
		if s.lcr&lcrDLAB != 0 {
			return s.dlm
		}
		return s.ier
	case uartIIR:
		iir := s.iir()
		if iir&0x0f == iirTHRI {
			s.thrPending = false
		}
		if s.fcr&fcrEnable != 0 {
			iir |= iirFIFOs
		}
		return iir
	case uartLCR:
		return s.lcr
	case uartMCR:
		return s.mcr
	case uartLSR:
		lsr := uint8(lsrTHRE | lsrTEMT)
		if len(s.in) > 0 {
			lsr |= lsrDR
		}
		return lsr
	case uartMSR:
		if s.mcr&mcrLoop != 0 {
			var m uint8
			if s.mcr&mcrRTS != 0 {
				m |= msrCTS
			}
			if s.mcr&mcrDTR != 0 {
				m |= msrDSR
			}
			if s.mcr&mcrOut1 != 0 {
				m |= msrRI
			}
			if s.mcr&mcrOut2 != 0 {
				m |= msrDCD
			}
			return m
		}
		return msrDCD | msrDSR | msrCTS
	case uartSCR:
		return s.scr
	}
	return 0xff
}

func (s *serial) write(off uint16, v uint8) {
	switch off {
	case uartRBR:
		if s.lcr&lcrDLAB != 0 {
			s.dll = v
			return
		}
		if s.mcr&mcrLoop != 0 {
			if len(s.in) < serialInputMax {
				s.in = append(s.in, v)
			}
		} else {
			s.obuf = append(s.obuf, v)
			if v == '\n' || len(s.obuf) >= serialFlushAt {
				s.flushLocked()
			} else if len(s.obuf) == 1 {
				select {
				case s.held <- struct{}{}:
				default:
				}
			}
		}
		s.thrPending = true
	case uartIER:
		if s.lcr&lcrDLAB != 0 {
			s.dlm = v
			return
		}
		if v&ierTHRI != 0 && s.ier&ierTHRI == 0 {
			// Enabling the THR-empty interrupt while THR is empty
			// raises it, as on the real part.
			s.thrPending = true
		}
		s.ier = v & (ierRDI | ierTHRI | ierRLSI | ierMSI)
	case uartIIR:
		s.fcr = v
		if v&0x02 != 0 { // clear receive FIFO
			s.in = nil
		}
	case uartLCR:
		s.lcr = v
	case uartMCR:
		s.mcr = v & 0x1f
	case uartSCR:
		s.scr = v
	}
}

// iir returns the highest-priority pending interrupt, or iirNone.
func (s *serial) iir() uint8 {
	if s.ier&ierRDI != 0 && len(s.in) > 0 {
		return iirRDI
	}
	if s.ier&ierTHRI != 0 && s.thrPending {
		return iirTHRI
	}
	return iirNone
}

// updateIRQ drives the line; on a PC the UART's interrupt reaches the
// interrupt controller only while MCR.OUT2 is set.
func (s *serial) updateIRQ() {
	level := s.iir() != iirNone && s.mcr&mcrOut2 != 0
	if level != s.level {
		s.level = level
		if s.raise != nil {
			s.raise(level)
		}
	}
}

// serialState is the UART's guest-visible state, for snapshots and
// migration. Output already written by the guest is flushed, not saved.
type serialState struct {
	IER, LCR, MCR, SCR, DLL, DLM, FCR uint8
	THRPending                        bool
	In                                []byte
}

// save flushes pending output and returns the registers and the input
// the guest has not read yet.
func (s *serial) save() serialState {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushLocked()
	return serialState{
		IER: s.ier, LCR: s.lcr, MCR: s.mcr, SCR: s.scr, DLL: s.dll, DLM: s.dlm, FCR: s.fcr,
		THRPending: s.thrPending, In: append([]byte(nil), s.in...),
	}
}

// restore puts saved registers back, refusing values a 16550A cannot
// hold, and drives the interrupt line to match.
func (s *serial) restore(st serialState) error {
	if len(st.In) > serialInputMax {
		return fmt.Errorf("serial state: %d bytes of input, at most %d", len(st.In), serialInputMax)
	}
	if st.IER&^(ierRDI|ierTHRI|ierRLSI|ierMSI) != 0 || st.MCR&^0x1f != 0 {
		return fmt.Errorf("serial state: reserved bits set (IER %#x, MCR %#x)", st.IER, st.MCR)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ier, s.lcr, s.mcr, s.scr, s.dll, s.dlm, s.fcr = st.IER, st.LCR, st.MCR, st.SCR, st.DLL, st.DLM, st.FCR
	s.thrPending = st.THRPending
	s.in = append([]byte(nil), st.In...)
	s.level = false
	s.updateIRQ()
	return nil
}
