package acpipm

import (
	"fmt"
	"sync"
)

// Register block layout and values, shared with the FADT and DSDT.
const (
	DefaultBase = 0x600 // where the machine places the block
	Size        = 3     // bytes of I/O port space to register

	SleepControlOffset = 0 // SLEEP_CONTROL_REG
	SleepStatusOffset  = 1 // SLEEP_STATUS_REG
	ResetOffset        = 2 // RESET_REG

	// Sleep control register bits (ACPI 6.4 §4.8.3.7.1).
	SleepTypeShift = 2        // SLP_TYPx, bits 2-4
	SleepTypeMask  = 0x7 << 2 // ACPI_X_SLEEP_TYPE_MASK
	SleepEnable    = 1 << 5   // SLP_EN, write-only
	SleepTypeS5    = 5        // SLP_TYP of S5 "soft off"; \_S5_ in the DSDT returns it

	// Sleep status register bits (ACPI 6.4 §4.8.3.7.2).
	WakeStatus = 1 << 7 // WAK_STS, write 1 to clear

	// ResetValue is FADT.RESET_VALUE: the byte that, written to RESET_REG,
	// resets the machine (ACPI 6.4 §4.8.3.6). The spec lets the platform
	// pick any byte; 1 is simply easy to spot in a trace.
	ResetValue = 0x01
)

// Handler receives the guest's power requests.
type Handler interface {
	PowerOff() // the guest entered S5
	Reset()    // the guest wrote ResetValue to RESET_REG
}

// Funcs adapts two functions to Handler; a nil field ignores that request.
type Funcs struct {
	OnPowerOff func()
	OnReset    func()
}

// PowerOff calls OnPowerOff.
func (f Funcs) PowerOff() {
	if f.OnPowerOff != nil {
		f.OnPowerOff()
	}
}

// Reset calls OnReset.
func (f Funcs) Reset() {
	if f.OnReset != nil {
		f.OnReset()
	}
}

// PM is the register block; it implements the bus's Device interface. Any
// vCPU thread may access it, hence the lock. Handler methods are called
// after the lock is released.
type PM struct {
	h Handler

	mu         sync.Mutex
	sleepType  uint8 // last SLP_TYP written
	wakeStatus bool  // WAK_STS
}

// New returns the register block, reporting requests to h (nil: ignore
// them).
func New(h Handler) *PM {
	if h == nil {
		h = Funcs{}
	}
	return &PM{h: h}
}

// Read returns the registers; SLP_EN and the reset register read as 0.
func (p *PM) Read(offset uint64, data []byte) {
	clear(data)
	// UNTRUSTED: offset < Size from the bus; only the first byte of a
	// wider read carries the register, the rest read as 0.
	if len(data) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch offset {
	case SleepControlOffset:
		data[0] = p.sleepType << SleepTypeShift
	case SleepStatusOffset:
		if p.wakeStatus {
			data[0] = WakeStatus
		}
	}
}

// Write acts on a guest write. ACPICA accesses these registers one byte at
// a time (the FADT declares them 8 bits wide); only data[0] is looked at.
func (p *PM) Write(offset uint64, data []byte) {
	// UNTRUSTED: any byte value at any offset < Size.
	if len(data) == 0 {
		return
	}
	v := data[0]
	var powerOff, reset bool
	p.mu.Lock()
	switch offset {
	case SleepControlOffset:
		p.sleepType = (v & SleepTypeMask) >> SleepTypeShift
		powerOff = v&SleepEnable != 0 && p.sleepType == SleepTypeS5
	case SleepStatusOffset:
		if v&WakeStatus != 0 {
			p.wakeStatus = false
		}
	case ResetOffset:
		reset = v == ResetValue
	}
	p.mu.Unlock()
	if powerOff {
		p.h.PowerOff()
	}
	if reset {
		p.h.Reset()
	}
}

// State is the block's saved state.
type State struct {
	SleepType  uint8 // SLP_TYP last written, 0-7
	WakeStatus bool  // WAK_STS
}

// SaveState returns the registers.
func (p *PM) SaveState() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return State{SleepType: p.sleepType, WakeStatus: p.wakeStatus}
}

// RestoreState loads registers saved by SaveState.
func (p *PM) RestoreState(s State) error {
	// UNTRUSTED: saved state from a file or the network.
	if s.SleepType > SleepTypeMask>>SleepTypeShift {
		return fmt.Errorf("acpipm: sleep type %d does not fit the 3-bit SLP_TYP field", s.SleepType)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sleepType, p.wakeStatus = s.SleepType, s.WakeStatus
	return nil
}
