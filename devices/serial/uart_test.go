package serial

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fakeIRQ records every level the UART sends.
type fakeIRQ struct{ levels []bool }

func (f *fakeIRQ) SetLevel(high bool) { f.levels = append(f.levels, high) }

func (f *fakeIRQ) high() bool { return len(f.levels) > 0 && f.levels[len(f.levels)-1] }

func newTest() (*UART, *bytes.Buffer, *fakeIRQ) {
	var out bytes.Buffer
	irq := &fakeIRQ{}
	return New(&out, irq), &out, irq
}

func in(u *UART, reg uint64) byte {
	b := []byte{0}
	u.Read(reg, b)
	return b[0]
}

func out(u *UART, reg uint64, v byte) { u.Write(reg, []byte{v}) }

func TestResetState(t *testing.T) {
	u, _, irq := newTest()
	for _, c := range []struct {
		reg  uint64
		want byte
	}{
		{regIER, 0}, {regIIR, iirNoInt}, {regLCR, 0}, {regMCR, 0},
		{regLSR, lsrTHRE | lsrTEMT}, {regMSR, msrIdleLines}, {regSCR, 0},
	} {
		if got := in(u, c.reg); got != c.want {
			t.Errorf("reg %d after reset = %#02x, want %#02x", c.reg, got, c.want)
		}
	}
	if len(irq.levels) != 0 {
		t.Errorf("reset UART drove its IRQ line: %v", irq.levels)
	}
}

func TestTransmit(t *testing.T) {
	u, o, _ := newTest()
	for _, c := range []byte("hi\n") {
		out(u, regTHR, c)
	}
	if o.String() != "hi\n" {
		t.Fatalf("terminal got %q, want %q", o.String(), "hi\n")
	}
	if lsr := in(u, regLSR); lsr&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT {
		t.Errorf("LSR after transmit = %#02x, want THRE|TEMT", lsr)
	}
}

func TestRegisterMasksAndScratch(t *testing.T) {
	u, _, _ := newTest()
	out(u, regIER, 0xff)
	if got := in(u, regIER); got != 0x0f {
		t.Errorf("IER = %#02x after writing 0xff, want 0x0f", got)
	}
	out(u, regMCR, 0xff)
	if got := in(u, regMCR); got != 0x1f {
		t.Errorf("MCR = %#02x after writing 0xff, want 0x1f", got)
	}
	out(u, regSCR, 0x5a)
	if got := in(u, regSCR); got != 0x5a {
		t.Errorf("SCR = %#02x, want 0x5a", got)
	}
	out(u, regLCR, 0x1b)
	if got := in(u, regLCR); got != 0x1b {
		t.Errorf("LCR = %#02x, want 0x1b", got)
	}
}

func TestDivisorLatch(t *testing.T) {
	u, o, _ := newTest()
	out(u, regIER, ierRDI)
	out(u, regLCR, lcrDLAB|0x03)
	out(u, regDLL, 0x01) // 115200 baud
	out(u, regDLM, 0x00)
	if got := in(u, regDLL); got != 0x01 {
		t.Errorf("DLL = %#02x, want 0x01", got)
	}
	if got := in(u, regDLM); got != 0x00 {
		t.Errorf("DLM = %#02x, want 0", got)
	}
	if o.Len() != 0 {
		t.Errorf("DLL write with DLAB set reached the terminal: %q", o.String())
	}
	out(u, regLCR, 0x03)
	if got := in(u, regIER); got != ierRDI {
		t.Errorf("IER = %#02x after DLAB cleared, want %#02x (DLM write must not touch IER)", got, ierRDI)
	}
	out(u, regTHR, 'x')
	if o.String() != "x" {
		t.Errorf("THR write with DLAB clear: terminal got %q", o.String())
	}
	s := u.SaveState()
	if s.DLL != 1 || s.DLM != 0 {
		t.Errorf("saved divisor %#x:%#x, want 0x00:0x01", s.DLM, s.DLL)
	}
}

// TestLinuxAutoconfig replays what autoconfig() and autoconfig_16550a() in
// Linux 6.1 drivers/tty/serial/8250/8250_port.c do to a port, and applies
// the same decisions, so a regression shows up as the type Linux would
// print instead of "16550A".
func TestLinuxAutoconfig(t *testing.T) {
	u, o, _ := newTest()

	// IER probe: bits 0-3 writable, 4-7 read as 0.
	scratch := in(u, regIER)
	out(u, regIER, 0)
	scratch2 := in(u, regIER) & 0x0f
	out(u, regIER, 0x0f)
	scratch3 := in(u, regIER) & 0x0f
	out(u, regIER, scratch)
	if scratch2 != 0 || scratch3 != 0x0f {
		t.Fatalf("IER test failed (%#02x, %#02x): Linux would find no UART", scratch2, scratch3)
	}

	saveMCR := in(u, regMCR)
	saveLCR := in(u, regLCR)

	// Loopback test: UART_MCR_LOOP|0x0A, then MSR status bits must be DCD|CTS.
	out(u, regMCR, mcrLoop|0x0a)
	status1 := in(u, regMSR) & 0xb0 // UART_MSR_STATUS_BITS
	out(u, regMCR, saveMCR)
	if status1 != msrDCD|msrCTS {
		t.Fatalf("loopback MSR = %#02x, want %#02x: Linux would find no UART", status1, msrDCD|msrCTS)
	}

	// FIFO test.
	out(u, regLCR, 0xbf) // UART_LCR_CONF_MODE_B
	out(u, 2, 0)         // UART_EFR, which is FCR on a 16550A
	out(u, regLCR, 0)
	out(u, regFCR, fcrEnable)
	switch in(u, regIIR) >> 6 {
	case 0:
		t.Fatal("IIR FIFO bits 00: Linux would say 8250/16450")
	case 1:
		t.Fatal("IIR FIFO bits 01: Linux would say unknown")
	case 2:
		t.Fatal("IIR FIFO bits 10: Linux would say 16550 (buggy FIFO)")
	}

	// autoconfig_16550a(): a 16550A must fail every test for a later part.
	out(u, regLCR, 0x80) // UART_LCR_CONF_MODE_A
	if in(u, 2) == 0 {
		t.Fatal("EFR read as 0 with DLAB set: Linux would probe for a ST16C650V1")
	}
	out(u, regLCR, 0xbf)
	if in(u, 2) == 0 {
		t.Fatal("EFR read as 0 with LCR=0xbf: Linux would say ST16650V2")
	}
	out(u, regLCR, 0)
	st1 := in(u, regMCR)
	out(u, regLCR, 0xe0)
	st2 := in(u, 2) // EXCR1 on National SuperIO parts
	if (st2^st1)&mcrLoop == 0 {
		out(u, regLCR, 0)
		out(u, regMCR, st1^mcrLoop)
		out(u, regLCR, 0xe0)
		st2 = in(u, 2)
		out(u, regLCR, 0)
		out(u, regMCR, st1)
		if (st2^st1)&mcrLoop != 0 {
			t.Fatal("Linux would say NS16550A (SuperIO)")
		}
	}
	out(u, regLCR, 0)
	out(u, regFCR, fcrEnable|0x20) // UART_FCR7_64BYTE
	s1 := in(u, regIIR) & 0xe0
	out(u, regFCR, fcrEnable)
	out(u, regLCR, 0x80)
	out(u, regFCR, fcrEnable|0x20)
	s2 := in(u, regIIR) & 0xe0
	out(u, regFCR, fcrEnable)
	out(u, regLCR, 0)
	if s1 == 0xc0 && s2 == 0xe0 {
		t.Fatal("Linux would say TI16750")
	}
	ierSave := in(u, regIER)
	out(u, regIER, ierSave|0x40) // UART_IER_UUE
	if in(u, regIER)&0x40 != 0 {
		t.Fatal("Linux would say XScale")
	}
	out(u, regIER, ierSave)
	out(u, regLCR, saveLCR)

	// serial8250_do_startup(): the THRE re-assertion test.
	out(u, regIER, ierTHRI)
	iir1 := in(u, regIIR)
	out(u, regIER, 0)
	out(u, regIER, ierTHRI)
	iir := in(u, regIIR)
	out(u, regIER, 0)
	if iir1&iirNoInt == 0 && iir&iirNoInt != 0 {
		t.Fatal("THRE not re-asserted when THRI toggles: Linux would set UART_BUG_THRE")
	}
	if o.Len() != 0 {
		t.Errorf("probe leaked %q to the terminal", o.String())
	}
}

func TestFIFOBits(t *testing.T) {
	u, _, _ := newTest()
	if got := in(u, regIIR) & 0xc0; got != 0 {
		t.Errorf("IIR FIFO bits with FIFO off = %#02x, want 0", got)
	}
	out(u, regFCR, fcrEnable|0x80)
	if got := in(u, regIIR) & 0xc0; got != 0xc0 {
		t.Errorf("IIR FIFO bits with FIFO on = %#02x, want 0xc0", got)
	}
	if s := u.SaveState(); s.FCR != fcrEnable|0x80 {
		t.Errorf("saved FCR = %#02x, want %#02x", s.FCR, fcrEnable|0x80)
	}
	out(u, regFCR, 0x80) // trigger bits without enable do not stick
	if s := u.SaveState(); s.FCR != 0 {
		t.Errorf("saved FCR = %#02x after disabling, want 0", s.FCR)
	}
}

func TestLoopbackTransmitsToReceiver(t *testing.T) {
	u, o, _ := newTest()
	out(u, regMCR, mcrLoop)
	out(u, regTHR, 'A')
	if o.Len() != 0 {
		t.Errorf("loopback byte reached the terminal: %q", o.String())
	}
	if lsr := in(u, regLSR); lsr&lsrDR == 0 {
		t.Fatalf("LSR = %#02x, want DR after loopback write", lsr)
	}
	if got := in(u, regRBR); got != 'A' {
		t.Errorf("RBR = %q, want 'A'", got)
	}
}

// TestLoopbackFIFOSize replays Linux's size_fifo(), which must measure the
// 16 bytes of a 16550A (64 would make it a "U6_16550A").
func TestLoopbackFIFOSize(t *testing.T) {
	u, _, _ := newTest()
	out(u, regFCR, fcrEnable|fcrClearRX|fcrClearTX)
	out(u, regMCR, mcrLoop)
	out(u, regLCR, 0x03)
	for i := 0; i < 256; i++ {
		out(u, regTHR, byte(i))
	}
	count := 0
	for ; in(u, regLSR)&lsrDR != 0 && count < 256; count++ {
		if got := in(u, regRBR); got != byte(count) {
			t.Fatalf("byte %d read back as %d", count, got)
		}
	}
	if count != hwFIFOSize {
		t.Errorf("size_fifo() would measure %d bytes, want %d", count, hwFIFOSize)
	}
}

func TestModemStatusDeltasAndInterrupt(t *testing.T) {
	u, _, irq := newTest()
	out(u, regMCR, mcrLoop) // all lines drop from the idle DCD|DSR|CTS
	out(u, regIER, ierMSI)
	if !irq.high() {
		t.Fatal("modem-status change with MSI enabled did not raise the IRQ")
	}
	if got := in(u, regIIR) & 0x0f; got != iirMSI {
		t.Errorf("IIR = %#x, want modem status (0)", got)
	}
	msr := in(u, regMSR)
	if msr != msrDCTS|msrDDSR|msrDDCD {
		t.Errorf("MSR = %#02x, want DCTS|DDSR|DDCD", msr)
	}
	if irq.high() {
		t.Error("reading MSR did not clear the modem-status interrupt")
	}
	out(u, regMCR, mcrLoop|mcrOUT1)
	out(u, regMCR, mcrLoop)
	if msr := in(u, regMSR); msr&msrTERI == 0 {
		t.Errorf("MSR = %#02x, want TERI after RI fell", msr)
	}
}

func TestTHREClearedByIIRRead(t *testing.T) {
	u, _, irq := newTest()
	out(u, regIER, ierTHRI)
	if !irq.high() {
		t.Fatal("enabling THRI with THR empty did not raise the IRQ")
	}
	if got := in(u, regIIR); got != iirTHRI {
		t.Fatalf("IIR = %#02x, want THRE (0x02)", got)
	}
	if irq.high() {
		t.Error("IRQ still high after reading IIR acknowledged THRE")
	}
	if got := in(u, regIIR); got != iirNoInt {
		t.Errorf("second IIR read = %#02x, want no interrupt", got)
	}
	out(u, regTHR, 'x')
	if !irq.high() {
		t.Error("THRE not raised again after the transmitted byte left")
	}
}

func TestIIRReadDoesNotClearOtherSources(t *testing.T) {
	u, _, _ := newTest()
	out(u, regIER, ierRDI|ierTHRI)
	if _, err := u.Input([]byte("k")); err != nil {
		t.Fatal(err)
	}
	if got := in(u, regIIR); got != iirRDI {
		t.Fatalf("IIR = %#02x, want RDI", got)
	}
	in(u, regRBR)
	// THRE was hidden behind RDI and must still be pending.
	if got := in(u, regIIR); got != iirTHRI {
		t.Errorf("IIR after draining RX = %#02x, want THRE", got)
	}
}

func TestIIRPriority(t *testing.T) {
	u, _, _ := newTest()
	out(u, regMCR, mcrLoop) // creates modem-status deltas
	out(u, regIER, ierMask)
	// Fill the receiver and overrun it: RLS, RDI, THRE and MSI all pending.
	for i := 0; i <= hwFIFOSize; i++ {
		out(u, regTHR, 'z')
	}
	want := []byte{iirRLSI, iirRDI, iirTHRI, iirMSI, iirNoInt}
	for i, w := range want {
		got := in(u, regIIR) & 0x0f
		if got != w {
			t.Fatalf("step %d: IIR = %#x, want %#x", i, got, w)
		}
		switch w { // remove the cause, uncovering the next source
		case iirRLSI:
			if lsr := in(u, regLSR); lsr&lsrOE == 0 {
				t.Fatalf("LSR = %#02x, want OE", lsr)
			}
		case iirRDI:
			for in(u, regLSR)&lsrDR != 0 {
				in(u, regRBR)
			}
		case iirTHRI:
			// The IIR read above acknowledged it.
		case iirMSI:
			in(u, regMSR)
		}
	}
}

func TestInputRaisesRXInterrupt(t *testing.T) {
	u, _, irq := newTest()
	out(u, regIER, ierRDI)
	if irq.high() {
		t.Fatal("IRQ high with nothing to receive")
	}
	if n, err := u.Input([]byte("ok")); n != 2 || err != nil {
		t.Fatalf("Input = %d, %v", n, err)
	}
	if !irq.high() {
		t.Fatal("Input did not raise the RX interrupt")
	}
	if got := in(u, regIIR); got != iirRDI {
		t.Errorf("IIR = %#02x, want RDI", got)
	}
	got := []byte{in(u, regRBR), in(u, regRBR)}
	if string(got) != "ok" {
		t.Errorf("RBR gave %q, want %q", got, "ok")
	}
	if irq.high() {
		t.Error("IRQ still high after the guest drained RX")
	}
	if lsr := in(u, regLSR); lsr&lsrDR != 0 {
		t.Errorf("LSR = %#02x, DR still set", lsr)
	}
}

func TestIRQLevelOnlyOnChange(t *testing.T) {
	u, _, irq := newTest()
	out(u, regIER, ierRDI)
	u.Input([]byte("a"))
	u.Input([]byte("b")) // already high: no second call
	in(u, regLSR)
	in(u, regRBR)
	in(u, regRBR) // goes low here
	in(u, regRBR)
	if want := []bool{true, false}; !reflect.DeepEqual(irq.levels, want) {
		t.Errorf("IRQ levels = %v, want %v", irq.levels, want)
	}
}

func TestInputBlocksWhenFullAndNothingIsLost(t *testing.T) {
	u, _, _ := newTest()
	msg := bytes.Repeat([]byte("0123456789abcdef"), RXQueueSize/16+10) // more than fits
	done := make(chan error, 1)
	go func() {
		_, err := u.Input(msg)
		done <- err
	}()
	// The writer must block once the queue is full...
	deadline := time.Now().Add(5 * time.Second)
	for u.SaveState().LSR&lsrDR == 0 || len(u.SaveState().RX) < RXQueueSize {
		if time.Now().After(deadline) {
			t.Fatal("queue never filled")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("Input returned (%v) although the queue was full", err)
	case <-time.After(20 * time.Millisecond):
	}
	// ...and every byte must arrive, in order, as the guest reads.
	var got []byte
	for len(got) < len(msg) {
		if in(u, regLSR)&lsrDR != 0 {
			got = append(got, in(u, regRBR))
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d bytes", len(got), len(msg))
		}
		time.Sleep(time.Millisecond)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("received bytes differ from the input")
	}
	if err := <-done; err != nil {
		t.Fatalf("Input: %v", err)
	}
}

func TestCloseUnblocksInput(t *testing.T) {
	u, _, _ := newTest()
	done := make(chan error, 1)
	go func() {
		_, err := u.Input(make([]byte, RXQueueSize+1))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	u.Close()
	select {
	case err := <-done:
		if err != ErrClosed {
			t.Fatalf("Input after Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Input")
	}
}

func TestWideAccessSplitsIntoByteRegisters(t *testing.T) {
	u, _, _ := newTest()
	u.Write(regLCR, []byte{0x03, 0x0b}) // LCR, MCR
	if in(u, regLCR) != 0x03 || in(u, regMCR) != 0x0b {
		t.Errorf("2-byte write: LCR=%#02x MCR=%#02x", in(u, regLCR), in(u, regMCR))
	}
	b := make([]byte, 4)
	u.Read(6, b) // MSR, SCR, then past the end
	if b[2] != 0xff || b[3] != 0xff {
		t.Errorf("bytes past the register block read %#x, want 0xff", b[2:])
	}
}

func TestStateRoundTrip(t *testing.T) {
	u, _, _ := newTest()
	out(u, regLCR, lcrDLAB)
	out(u, regDLL, 0x01)
	out(u, regDLM, 0x02)
	out(u, regLCR, 0x03)
	out(u, regFCR, fcrEnable|0x40)
	out(u, regMCR, mcrDTR|mcrRTS|mcrOUT2)
	out(u, regSCR, 0x77)
	out(u, regIER, ierRDI|ierTHRI)
	u.Input([]byte("queued"))

	s := u.SaveState()
	if !s.IRQLevel || string(s.RX) != "queued" {
		t.Fatalf("saved state %+v", s)
	}
	// Through JSON, as a migration stream would carry it.
	j, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var s2 State
	if err := json.Unmarshal(j, &s2); err != nil {
		t.Fatal(err)
	}
	v, o, irq := newTest()
	if err := v.RestoreState(s2); err != nil {
		t.Fatalf("RestoreState: %v", err)
	}
	if got := v.SaveState(); !reflect.DeepEqual(got, s) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, s)
	}
	if len(irq.levels) != 0 {
		t.Errorf("RestoreState drove the IRQ line: %v", irq.levels)
	}
	// The restored UART behaves like the original.
	if got := in(v, regIIR); got != 0xc0|iirRDI {
		t.Errorf("restored IIR = %#02x, want %#02x", got, 0xc0|iirRDI)
	}
	var rx []byte
	for in(v, regLSR)&lsrDR != 0 {
		rx = append(rx, in(v, regRBR))
	}
	if string(rx) != "queued" {
		t.Errorf("restored RX = %q", rx)
	}
	out(v, regTHR, '!')
	if o.String() != "!" {
		t.Errorf("restored UART transmitted %q", o.String())
	}
}

func TestRestoreStateRejectsBadState(t *testing.T) {
	good := New(&bytes.Buffer{}, &fakeIRQ{}).SaveState()
	cases := map[string]func(*State){
		"IER reserved":     func(s *State) { s.IER = 0x10 },
		"MCR reserved":     func(s *State) { s.MCR = 0x20 },
		"FCR clear bit":    func(s *State) { s.FCR = fcrEnable | fcrClearRX },
		"FCR without FIFO": func(s *State) { s.FCR = 0x80 },
		"queue too long":   func(s *State) { s.RX = make([]byte, RXQueueSize+1); s.LSR |= lsrDR },
		"busy transmitter": func(s *State) { s.LSR &^= lsrTEMT },
		"DR without data":  func(s *State) { s.LSR |= lsrDR },
		"data without DR":  func(s *State) { s.RX = []byte("x") },
		"MSR lines vs MCR": func(s *State) { s.MCR = mcrLoop },
		"IRQ level high":   func(s *State) { s.IRQLevel = true },
		"IRQ level low":    func(s *State) { s.IER = ierTHRI; s.THRPending = true },
	}
	for name, mutate := range cases {
		s := good
		mutate(&s)
		u, _, _ := newTest()
		u.Write(regSCR, []byte{0x42})
		err := u.RestoreState(s)
		if err == nil {
			t.Errorf("%s: RestoreState accepted %+v", name, s)
			continue
		}
		if !strings.HasPrefix(err.Error(), "serial: ") {
			t.Errorf("%s: error %q lacks the package prefix", name, err)
		}
		if in(u, regSCR) != 0x42 {
			t.Errorf("%s: a rejected state modified the UART", name)
		}
	}
	if err := New(&bytes.Buffer{}, &fakeIRQ{}).RestoreState(good); err != nil {
		t.Errorf("RestoreState(reset state) = %v", err)
	}
}

func TestNilOutputAndIRQ(t *testing.T) {
	u := New(nil, nil)
	out(u, regIER, ierTHRI)
	out(u, regTHR, 'x')
	if got := in(u, regIIR); got != iirTHRI {
		t.Errorf("IIR = %#02x with no IRQ line connected, want THRE", got)
	}
}
