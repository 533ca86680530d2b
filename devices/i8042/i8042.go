package i8042

// Port addresses of the controller on a PC (IBM PC/AT Technical Reference,
// "Keyboard Controller"), and the command that pulses the reset line.
const (
	DataPortAddr    = 0x60 // data register
	CommandPortAddr = 0x64 // read: status register; write: command register
	CmdResetCPU     = 0xfe // pulse output-port bit 0 (CPU reset) low
)

// Handler receives the controller's request to reset the machine.
type Handler interface {
	ResetRequested()
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func()

// ResetRequested calls f.
func (f HandlerFunc) ResetRequested() { f() }

// Controller is the 8042. It holds no mutable state, so it needs no lock.
type Controller struct {
	h Handler
}

// New returns a controller that reports reset requests to h (nil: ignore
// them).
func New(h Handler) *Controller {
	if h == nil {
		h = HandlerFunc(func() {})
	}
	return &Controller{h: h}
}

// Data returns the device for DataPortAddr (register with size 1).
func (c *Controller) Data() *Port { return &Port{c: c, command: false} }

// Command returns the device for CommandPortAddr (register with size 1).
func (c *Controller) Command() *Port { return &Port{c: c, command: true} }

// Port is one of the controller's two I/O ports; it implements the bus's
// Device interface.
type Port struct {
	c       *Controller
	command bool
}

// Read returns 0 for every byte: the status register says both buffers are
// empty (Linux's kb_wait() polls status bit 1 before writing a command), and
// the data register has nothing to give.
func (p *Port) Read(offset uint64, data []byte) {
	clear(data)
}

// Write acts on the reset command and ignores everything else.
func (p *Port) Write(offset uint64, data []byte) {
	// UNTRUSTED: a guest write of any width; only a single byte 0xFE at
	// the command port means "reset", anything else is ignored.
	if p.command && offset == 0 && len(data) == 1 && data[0] == CmdResetCPU {
		p.c.h.ResetRequested()
	}
}

// State is the controller's saved state. The model has none: a reset request
// is acted on at once and leaves nothing behind. The type exists so that
// every device follows the same SaveState/RestoreState convention.
type State struct{}

// SaveState returns the (empty) state.
func (c *Controller) SaveState() State { return State{} }

// RestoreState accepts the (empty) state.
func (c *Controller) RestoreState(State) error { return nil }
