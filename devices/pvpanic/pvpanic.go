package pvpanic

import (
	"fmt"
	"sync"
)

// Device constants (QEMU include/hw/misc/pvpanic.h and Linux
// include/uapi/misc/pvpanic.h).
const (
	DefaultPort = 0x505      // QEMU's PVPANIC_IOPORT default
	Size        = 1          // bytes of I/O port space to register
	HID         = "QEMU0001" // ACPI _HID the Linux driver matches

	EventPanicked    = 1 << 0 // PVPANIC_PANICKED
	EventCrashLoaded = 1 << 1 // PVPANIC_CRASH_LOADED
	SupportedEvents  = EventPanicked | EventCrashLoaded
)

// Handler receives the guest's events.
type Handler interface {
	Panicked()    // the guest kernel panicked
	CrashLoaded() // the guest kernel is handing over to a kdump kernel
}

// Funcs adapts two functions to Handler; a nil field ignores that event.
type Funcs struct {
	OnPanicked    func()
	OnCrashLoaded func()
}

// Panicked calls OnPanicked.
func (f Funcs) Panicked() {
	if f.OnPanicked != nil {
		f.OnPanicked()
	}
}

// CrashLoaded calls OnCrashLoaded.
func (f Funcs) CrashLoaded() {
	if f.OnCrashLoaded != nil {
		f.OnCrashLoaded()
	}
}

// Device is the pvpanic port; it implements the bus's Device interface.
// Handler methods are called without the lock held.
type Device struct {
	h Handler

	mu       sync.Mutex
	reported uint8 // events seen so far
}

// New returns a pvpanic device reporting to h (nil: only record events).
func New(h Handler) *Device {
	if h == nil {
		h = Funcs{}
	}
	return &Device{h: h}
}

// Read returns SupportedEvents in the first byte.
func (d *Device) Read(offset uint64, data []byte) {
	clear(data)
	if len(data) > 0 && offset == 0 {
		data[0] = SupportedEvents
	}
}

// Write reports the events in data[0].
func (d *Device) Write(offset uint64, data []byte) {
	// UNTRUSTED: any byte; bits the device does not support are ignored,
	// as QEMU does.
	if len(data) == 0 || offset != 0 {
		return
	}
	ev := data[0] & SupportedEvents
	d.mu.Lock()
	d.reported |= ev
	d.mu.Unlock()
	if ev&EventPanicked != 0 {
		d.h.Panicked()
	}
	if ev&EventCrashLoaded != 0 {
		d.h.CrashLoaded()
	}
}

// Reported returns the events the guest has sent so far.
func (d *Device) Reported() uint8 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reported
}

// State is the device's saved state.
type State struct {
	Reported uint8 // events the guest has sent, a subset of SupportedEvents
}

// SaveState returns the device's state.
func (d *Device) SaveState() State { return State{Reported: d.Reported()} }

// RestoreState loads a state saved by SaveState.
func (d *Device) RestoreState(s State) error {
	// UNTRUSTED: saved state from a file or the network.
	if s.Reported&^SupportedEvents != 0 {
		return fmt.Errorf("pvpanic: reported events %#02x include unsupported bits", s.Reported)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reported = s.Reported
	return nil
}
