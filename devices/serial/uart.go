package serial

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// Where a PC puts its first serial port. Linux's 8250 driver finds COM1 here
// without being told (arch/x86/include/asm/serial.h SERIAL_PORT_DFNS).
const (
	COM1Base      = 0x3f8
	COM1IRQ       = 4
	RegisterCount = 8 // size of the port-I/O range to register
)

// RXQueueSize bounds the bytes Input may queue for the guest. A real 16550A
// holds 16; a deeper queue lets a paste arrive faster than the guest reads
// without Input having to block on every 16 bytes.
const RXQueueSize = 4096

// hwFIFOSize is the real 16550A's receive FIFO depth. It only matters in
// loopback mode, where the guest can measure it: Linux's size_fifo() in
// 8250_port.c sends 256 bytes to itself and counts what arrives.
const hwFIFOSize = 16

// Register offsets (16550A datasheet, Table II "Register Summary"; the
// names are Linux's include/uapi/linux/serial_reg.h UART_*).
const (
	regRBR = 0 // read, DLAB=0: receiver buffer          (UART_RX)
	regTHR = 0 // write, DLAB=0: transmitter holding    (UART_TX)
	regDLL = 0 // DLAB=1: divisor latch low             (UART_DLL)
	regIER = 1 // DLAB=0: interrupt enable              (UART_IER)
	regDLM = 1 // DLAB=1: divisor latch high            (UART_DLM)
	regIIR = 2 // read: interrupt identification        (UART_IIR)
	regFCR = 2 // write: FIFO control                   (UART_FCR)
	regLCR = 3 // line control                          (UART_LCR)
	regMCR = 4 // modem control                         (UART_MCR)
	regLSR = 5 // line status                           (UART_LSR)
	regMSR = 6 // modem status                          (UART_MSR)
	regSCR = 7 // scratch                               (UART_SCR)
)

// Register bits used by the model.
const (
	ierRDI  = 0x01 // received data available     (UART_IER_RDI)
	ierTHRI = 0x02 // THR empty                   (UART_IER_THRI)
	ierRLSI = 0x04 // receiver line status        (UART_IER_RLSI)
	ierMSI  = 0x08 // modem status                (UART_IER_MSI)
	ierMask = 0x0f // bits 4-7 are always 0 on a 16550A; Linux's probe checks

	iirNoInt   = 0x01 // no interrupt pending     (UART_IIR_NO_INT)
	iirMSI     = 0x00 // modem status             (UART_IIR_MSI)
	iirTHRI    = 0x02 // THR empty                (UART_IIR_THRI)
	iirRDI     = 0x04 // received data            (UART_IIR_RDI)
	iirRLSI    = 0x06 // receiver line status     (UART_IIR_RLSI)
	iirFIFOsOn = 0xc0 // both FIFO-enabled bits: "16550A", not the buggy 16550

	fcrEnable    = 0x01 // UART_FCR_ENABLE_FIFO
	fcrClearRX   = 0x02 // UART_FCR_CLEAR_RCVR (self-clearing)
	fcrClearTX   = 0x04 // UART_FCR_CLEAR_XMIT (self-clearing)
	fcrDMA       = 0x08 // UART_FCR_DMA_SELECT
	fcrTrigger   = 0xc0 // UART_FCR_TRIGGER_MASK
	fcrStoreMask = fcrEnable | fcrDMA | fcrTrigger

	lcrDLAB = 0x80 // divisor latch access bit (UART_LCR_DLAB)

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10
	mcrMask = 0x1f // bits 5-7 are always 0 on a 16550A

	lsrDR    = 0x01 // data ready
	lsrOE    = 0x02 // overrun error
	lsrPE    = 0x04 // parity error
	lsrFE    = 0x08 // framing error
	lsrBI    = 0x10 // break interrupt
	lsrTHRE  = 0x20 // THR empty
	lsrTEMT  = 0x40 // transmitter empty
	lsrFIFOE = 0x80 // error in RX FIFO

	// Error bits, cleared by reading LSR.
	lsrErrors = lsrOE | lsrPE | lsrFE | lsrBI | lsrFIFOE

	msrDCTS   = 0x01 // delta CTS
	msrDDSR   = 0x02 // delta DSR
	msrTERI   = 0x04 // trailing edge of RI
	msrDDCD   = 0x08 // delta DCD
	msrDeltas = 0x0f // cleared by reading MSR
	msrCTS    = 0x10
	msrDSR    = 0x20
	msrRI     = 0x40
	msrDCD    = 0x80
	msrLines  = 0xf0

	// Outside loopback mode the modem inputs are wired as a terminal that
	// is always there and always ready (QEMU does the same): carrier
	// detect, data set ready, clear to send.
	msrIdleLines = msrDCD | msrDSR | msrCTS

	resetDivisor = 12 // 9600 baud from the PC's 1.8432 MHz clock, as QEMU
)

// IRQLine is the UART's INTR output pin. SetLevel is called with the mutex
// of the UART held, so it must not call back into the UART.
type IRQLine interface {
	SetLevel(high bool)
}

type noIRQ struct{}

func (noIRQ) SetLevel(bool) {}

// ErrClosed is returned by Input once Close has been called.
var ErrClosed = errors.New("serial: UART closed")

// UART is one 16550A. It is safe for concurrent use by vCPU threads
// (Read/Write) and input goroutines (Input).
type UART struct {
	out io.Writer // transmitted bytes go here
	irq IRQLine

	mu      sync.Mutex
	notFull *sync.Cond // signalled when the guest takes bytes from rx
	closed  bool

	ier, lcr, mcr, scr, dll, dlm, fcr byte
	lsrErrors                         byte // OE/PE/FE/BI/FIFOE; DR, THRE, TEMT are derived
	msr                               byte // line bits and sticky delta bits

	// thrPending is the "THR empty" interrupt latch. It is set when the
	// transmitter becomes empty (instantly, after each THR write) or when
	// the guest enables IER.THRI while THR is empty, and cleared by
	// writing THR or by reading IIR while IIR reports THRE (datasheet,
	// Table IV "Interrupt Control Functions", reset column).
	thrPending bool

	rx      [RXQueueSize]byte // ring buffer: the receive "FIFO"
	rxHead  int               // index of the oldest byte
	rxCount int

	irqLevel bool // last level sent to irq
}

// New returns a UART in its power-on state that transmits to out and
// signals interrupts on irq. Write errors from out are ignored: a UART has
// no way to tell the guest that the far end is gone. A nil out discards
// output; a nil irq leaves INTR unconnected (the guest can still poll).
func New(out io.Writer, irq IRQLine) *UART {
	if out == nil {
		out = io.Discard
	}
	if irq == nil {
		irq = noIRQ{}
	}
	u := &UART{out: out, irq: irq}
	u.notFull = sync.NewCond(&u.mu)
	u.dll = resetDivisor
	u.msr = u.modemLines()
	return u
}

// Read handles a guest IN from the UART's port range.
func (u *UART) Read(offset uint64, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	// UNTRUSTED: offset (< RegisterCount, guaranteed by the bus) and
	// len(data) come from the guest. Linux uses 1-byte accesses; a wider
	// one is split into consecutive byte registers as the ISA bus would,
	// and bytes past the last register read as an unclaimed port (0xff).
	for i := range data {
		reg := offset + uint64(i)
		if offset >= RegisterCount || reg >= RegisterCount {
			data[i] = 0xff
			continue
		}
		data[i] = u.readReg(int(reg))
	}
	u.updateIRQ()
}

// Write handles a guest OUT to the UART's port range.
func (u *UART) Write(offset uint64, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	// UNTRUSTED: as in Read; bytes past the last register are dropped.
	for i, v := range data {
		reg := offset + uint64(i)
		if offset >= RegisterCount || reg >= RegisterCount {
			break
		}
		u.writeReg(int(reg), v)
	}
	u.updateIRQ()
}

func (u *UART) dlab() bool { return u.lcr&lcrDLAB != 0 }
func (u *UART) loop() bool { return u.mcr&mcrLoop != 0 }

func (u *UART) readReg(reg int) byte {
	switch reg {
	case regRBR:
		if u.dlab() {
			return u.dll
		}
		return u.popRX()
	case regIER:
		if u.dlab() {
			return u.dlm
		}
		return u.ier
	case regIIR:
		iir := u.iir()
		// Reading IIR is how the driver acknowledges a THRE interrupt;
		// any other source stays until its own cause is removed.
		if iir&0x0f == iirTHRI {
			u.thrPending = false
		}
		return iir
	case regLCR:
		return u.lcr
	case regMCR:
		return u.mcr
	case regLSR:
		v := u.lsr()
		u.lsrErrors = 0
		return v
	case regMSR:
		v := u.msr
		u.msr &^= msrDeltas
		return v
	default: // regSCR
		return u.scr
	}
}

func (u *UART) writeReg(reg int, v byte) {
	switch reg {
	case regTHR:
		if u.dlab() {
			u.dll = v
			return
		}
		u.transmit(v)
	case regIER:
		if u.dlab() {
			u.dlm = v
			return
		}
		u.writeIER(v)
	case regFCR:
		u.writeFCR(v)
	case regLCR:
		u.lcr = v
	case regMCR:
		u.writeMCR(v)
	case regLSR, regMSR:
		// Writable only for factory testing on real parts; ignored, as
		// in QEMU.
	default: // regSCR
		u.scr = v
	}
}

// transmit sends one byte: to the terminal, or in loopback mode back into
// the receiver (datasheet, MCR bit 4: "the transmitter Serial Output is
// looped back to the Receiver Serial Input").
func (u *UART) transmit(v byte) {
	u.thrPending = false
	if u.loop() {
		// The receiver holds a FIFO's worth (one byte with the FIFO
		// off); one more is an overrun and is lost.
		limit := 1
		if u.fcr&fcrEnable != 0 {
			limit = hwFIFOSize
		}
		if u.rxCount >= limit {
			u.lsrErrors |= lsrOE
		} else {
			u.pushRX(v)
		}
	} else {
		_, _ = u.out.Write([]byte{v})
	}
	// The byte has left; THR (and the shift register) are empty again.
	u.thrPending = true
}

func (u *UART) writeIER(v byte) {
	old := u.ier
	u.ier = v & ierMask
	// Enabling THRI while THR is empty raises the THRE interrupt even if
	// an earlier one was acknowledged by reading IIR. The datasheet is
	// silent; real parts, QEMU and Bochs do it on the 0→1 edge, and
	// Linux's startup test (serial8250_do_startup, UART_BUG_THRE) expects
	// the interrupt to be re-asserted when THRI is toggled off and on.
	if (old^u.ier)&ierTHRI != 0 {
		u.thrPending = u.ier&ierTHRI != 0 // THR is always empty here
	}
}

func (u *UART) writeFCR(v byte) {
	// Changing the FIFO enable bit resets both FIFOs (datasheet, FCR bit
	// 0); bits 1 and 2 reset them on demand and clear themselves. The
	// transmit FIFO is always empty in this model.
	if (v^u.fcr)&fcrEnable != 0 || v&fcrClearRX != 0 {
		u.clearRX()
	}
	if v&fcrEnable == 0 {
		u.fcr = 0 // the other bits only take effect with the FIFO on
		return
	}
	u.fcr = v & fcrStoreMask
}

func (u *UART) writeMCR(v byte) {
	before := u.modemLines()
	u.mcr = v & mcrMask
	after := u.modemLines()
	u.msr = after | u.msr&msrDeltas | deltas(before, after)
}

// modemLines returns the MSR input-line bits (CTS, DSR, RI, DCD). In
// loopback mode they are wired to the MCR outputs (datasheet, MCR bit 4:
// RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD); Linux's autoconfig() probes for a
// UART by setting LOOP|OUT2|RTS and expecting to read back DCD|CTS.
func (u *UART) modemLines() byte {
	if !u.loop() {
		return msrIdleLines
	}
	var m byte
	if u.mcr&mcrRTS != 0 {
		m |= msrCTS
	}
	if u.mcr&mcrDTR != 0 {
		m |= msrDSR
	}
	if u.mcr&mcrOUT1 != 0 {
		m |= msrRI
	}
	if u.mcr&mcrOUT2 != 0 {
		m |= msrDCD
	}
	return m
}

// deltas returns the MSR change bits for a transition of the input lines.
// RI only reports its trailing edge (1→0), per the datasheet's TERI bit.
func deltas(before, after byte) byte {
	changed := before ^ after
	var d byte
	if changed&msrCTS != 0 {
		d |= msrDCTS
	}
	if changed&msrDSR != 0 {
		d |= msrDDSR
	}
	if before&msrRI != 0 && after&msrRI == 0 {
		d |= msrTERI
	}
	if changed&msrDCD != 0 {
		d |= msrDDCD
	}
	return d
}

// lsr composes the line status register.
func (u *UART) lsr() byte {
	v := u.lsrErrors | lsrTHRE | lsrTEMT
	if u.rxCount > 0 {
		v |= lsrDR
	}
	return v
}

// iir returns the highest-priority pending, enabled interrupt (datasheet,
// Table IV): receiver line status, then received data, then THR empty,
// then modem status.
func (u *UART) iir() byte {
	var fifo byte
	if u.fcr&fcrEnable != 0 {
		fifo = iirFIFOsOn
	}
	switch {
	case u.ier&ierRLSI != 0 && u.lsrErrors&(lsrOE|lsrPE|lsrFE|lsrBI) != 0:
		return fifo | iirRLSI
	case u.ier&ierRDI != 0 && u.rxCount > 0:
		return fifo | iirRDI
	case u.ier&ierTHRI != 0 && u.thrPending:
		return fifo | iirTHRI
	case u.ier&ierMSI != 0 && u.msr&msrDeltas != 0:
		return fifo | iirMSI
	}
	return fifo | iirNoInt
}

// updateIRQ drives INTR from the current state, telling the line only about
// changes.
func (u *UART) updateIRQ() {
	level := u.iir()&iirNoInt == 0
	if level != u.irqLevel {
		u.irqLevel = level
		u.irq.SetLevel(level)
	}
}

func (u *UART) pushRX(v byte) {
	u.rx[(u.rxHead+u.rxCount)%RXQueueSize] = v
	u.rxCount++
}

func (u *UART) popRX() byte {
	if u.rxCount == 0 {
		return 0 // reading an empty RBR returns stale data; 0 is as good
	}
	v := u.rx[u.rxHead]
	u.rxHead = (u.rxHead + 1) % RXQueueSize
	u.rxCount--
	u.notFull.Broadcast()
	return v
}

func (u *UART) clearRX() {
	u.rxHead, u.rxCount = 0, 0
	u.notFull.Broadcast()
}

// Input queues bytes typed by the user for the guest to read from RBR. It
// blocks while the queue is full until the guest has read enough, and
// returns early with ErrClosed if the UART is closed meanwhile. It has the
// shape of io.Writer.Write (the name Write is taken by the bus interface);
// wrap it with InputWriter to io.Copy from stdin.
//
// A guest FCR write that resets the receive FIFO discards what is queued,
// as on the chip.
func (u *UART) Input(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for n < len(p) {
		for u.rxCount == RXQueueSize && !u.closed {
			u.notFull.Wait()
		}
		if u.closed {
			return n, ErrClosed
		}
		for n < len(p) && u.rxCount < RXQueueSize {
			u.pushRX(p[n])
			n++
		}
		u.updateIRQ()
	}
	return n, nil
}

// InputWriter adapts Input to io.Writer.
func (u *UART) InputWriter() io.Writer { return inputWriter{u} }

type inputWriter struct{ u *UART }

func (w inputWriter) Write(p []byte) (int, error) { return w.u.Input(p) }

// Close wakes any Input blocked on a full queue and makes Input fail from
// now on. Register accesses keep working.
func (u *UART) Close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	u.notFull.Broadcast()
}

// State is the UART's saved state. IIR is not stored: it is computed from
// the other registers and THRPending. LSR is the value a read would return
// (before its error bits are cleared); MSR includes the sticky delta bits.
type State struct {
	IER, LCR, MCR, LSR, MSR, SCR uint8
	DLL, DLM                     uint8 // divisor latch
	FCR                          uint8 // FIFO control as last written (enable, DMA, trigger bits)
	THRPending                   bool  // THR-empty interrupt latched, not yet acknowledged
	RX                           []byte
	IRQLevel                     bool // INTR output last sent to the IRQ line
}

// SaveState returns a copy of the UART's state.
func (u *UART) SaveState() State {
	u.mu.Lock()
	defer u.mu.Unlock()
	rx := make([]byte, u.rxCount)
	for i := range rx {
		rx[i] = u.rx[(u.rxHead+i)%RXQueueSize]
	}
	return State{
		IER: u.ier, LCR: u.lcr, MCR: u.mcr, LSR: u.lsr(), MSR: u.msr, SCR: u.scr,
		DLL: u.dll, DLM: u.dlm, FCR: u.fcr,
		THRPending: u.thrPending,
		RX:         rx,
		IRQLevel:   u.irqLevel,
	}
}

// RestoreState loads a state produced by SaveState, rejecting values no
// 16550A in this model can hold. It does not drive the IRQ line: the level
// the guest has already seen travels with the interrupt controller's own
// state (KVM_SET_IRQCHIP), and the UART only remembers it so that the next
// change is reported correctly.
func (u *UART) RestoreState(s State) error {
	// UNTRUSTED: a saved state comes from a file or the network.
	switch {
	case s.IER&^ierMask != 0:
		return fmt.Errorf("serial: IER %#02x has reserved bits set", s.IER)
	case s.MCR&^mcrMask != 0:
		return fmt.Errorf("serial: MCR %#02x has reserved bits set", s.MCR)
	case s.FCR&^fcrStoreMask != 0:
		return fmt.Errorf("serial: FCR %#02x has bits that do not stick", s.FCR)
	case s.FCR != 0 && s.FCR&fcrEnable == 0:
		return fmt.Errorf("serial: FCR %#02x has settings without the FIFO enabled", s.FCR)
	case len(s.RX) > RXQueueSize:
		return fmt.Errorf("serial: %d queued bytes exceed the %d-byte queue", len(s.RX), RXQueueSize)
	case s.LSR&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT:
		return fmt.Errorf("serial: LSR %#02x says the transmitter is busy, which this UART never is", s.LSR)
	case (s.LSR&lsrDR != 0) != (len(s.RX) > 0):
		return fmt.Errorf("serial: LSR %#02x data-ready bit disagrees with %d queued bytes", s.LSR, len(s.RX))
	}

	// Validate the derived parts on a scratch copy before touching u.
	var n UART
	n.ier, n.lcr, n.mcr, n.scr = s.IER, s.LCR, s.MCR, s.SCR
	n.dll, n.dlm, n.fcr = s.DLL, s.DLM, s.FCR
	n.lsrErrors = s.LSR & lsrErrors
	n.msr = s.MSR
	n.thrPending = s.THRPending
	n.rxCount = copy(n.rx[:], s.RX)
	if lines := n.modemLines(); s.MSR&msrLines != lines {
		return fmt.Errorf("serial: MSR %#02x lines disagree with MCR %#02x (want %#02x)", s.MSR, s.MCR, lines)
	}
	if level := n.iir()&iirNoInt == 0; level != s.IRQLevel {
		return fmt.Errorf("serial: IRQ level %v disagrees with the pending interrupts (IIR %#02x)", s.IRQLevel, n.iir())
	}

	u.mu.Lock()
	defer u.mu.Unlock()
	u.ier, u.lcr, u.mcr, u.scr = n.ier, n.lcr, n.mcr, n.scr
	u.dll, u.dlm, u.fcr = n.dll, n.dlm, n.fcr
	u.lsrErrors, u.msr, u.thrPending = n.lsrErrors, n.msr, n.thrPending
	u.rx, u.rxHead, u.rxCount = n.rx, 0, n.rxCount
	u.irqLevel = s.IRQLevel
	u.notFull.Broadcast() // the queue may have more room than before
	return nil
}
