package machine

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"govmm/boot/acpi"
	"govmm/devices/virtio"
	"govmm/vmm"
)

// Virtio devices plug into the board at numbered slots. Slot n is a
// virtio-mmio register block at VirtioMMIOBase + n*VirtioMMIOStride with
// interrupt GSI VirtioFirstGSI+n, described to the guest in the DSDT
// (boot/acpi). The machine knows a device only as a virtio.Device plus a
// DeviceSpec that says how to build it again: the kind ("blk", "net") and
// the user's spec ("nbd://host/export"). That spec travels in the machine
// state, so a migration destination rebuilds the same devices through its
// DeviceFactory without this package ever naming a device type.
const (
	VirtioMMIOBase   vmm.GPA = 0xd0000000 // in the MMIO hole, clear of the IOAPIC and LAPIC
	VirtioMMIOStride         = 0x1000     // one page per device
	VirtioFirstGSI           = 16         // IOAPIC pins 16-23: above every ISA IRQ
	MaxVirtioDevices         = 8          // pins left on KVM's 24-pin IOAPIC
)

// DeviceSpec says how to build a device: Kind picks the device type,
// Spec is the user's description of its backend.
type DeviceSpec struct {
	Kind string
	Spec string
}

func (d DeviceSpec) String() string { return d.Kind + " " + d.Spec }

// DeviceFactory builds a virtio device from its spec. cmd/govmm provides
// one that knows every device type; tests provide fakes.
type DeviceFactory func(DeviceSpec) (virtio.Device, error)

// virtioSlot is one plugged device and the KVM plumbing around it.
type virtioSlot struct {
	spec      DeviceSpec
	device    virtio.Device
	transport *virtio.MMIO
	base      vmm.GPA
	gsi       uint32
	irq       *vmm.EventFD   // KVM_IRQFD: Signal raises gsi
	notify    []*vmm.EventFD // KVM_IOEVENTFD per queue: the guest's QueueNotify write
	wg        sync.WaitGroup // the notify goroutines
	paused    bool
}

// AddVirtio plugs dev into the next free slot. It must be called before
// LoadLinux, which describes the slots in ACPI, or before RestoreState.
func (m *Machine) AddVirtio(spec DeviceSpec, dev virtio.Device) error {
	if m.origin != "" {
		return fmt.Errorf("adding %s: this machine already %s", spec, m.origin)
	}
	n := len(m.virtio)
	if n == MaxVirtioDevices {
		return fmt.Errorf("adding %s: the board has %d virtio slots, all taken", spec, MaxVirtioDevices)
	}
	s := &virtioSlot{
		spec:   spec,
		device: dev,
		base:   VirtioMMIOBase + vmm.GPA(n*VirtioMMIOStride),
		gsi:    uint32(VirtioFirstGSI + n),
	}
	if err := m.plug(s, dev); err != nil {
		s.unplug(m.VM)
		return fmt.Errorf("adding %s: %w", spec, err)
	}
	m.virtio = append(m.virtio, s)
	return nil
}

// plug wires a slot: an irqfd for its interrupt, the transport on the MMIO
// bus, and one ioeventfd per queue whose signals a goroutine turns into
// Notify calls. With these, neither the guest's notification nor the
// device's interrupt stops a vCPU.
func (m *Machine) plug(s *virtioSlot, dev virtio.Device) error {
	var err error
	if s.irq, err = vmm.NewEventFD(); err != nil {
		return err
	}
	if err := m.VM.AttachIRQFD(s.irq, s.gsi); err != nil {
		return err
	}
	s.transport = virtio.NewMMIO(dev, virtio.MMIOConfig{
		Memory:    m.VM.Memory,
		Interrupt: func() { _ = s.irq.Signal() },
		Log:       m.logf,
	})
	if err := m.VM.MMIO.Register(uint64(s.base), virtio.MMIOSize, "virtio-"+s.spec.Kind, s.transport); err != nil {
		return err
	}
	for q := range s.transport.NumQueues() {
		e, err := vmm.NewEventFD()
		if err != nil {
			return err
		}
		s.notify = append(s.notify, e)
		if err := m.VM.AttachIOEventFD(e, s.notifyMatch(q)); err != nil {
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				if _, err := e.Wait(); err != nil {
					return // closed by unplug
				}
				s.transport.Notify(q)
			}
		}()
	}
	return nil
}

// notifyMatch is the guest write that notifies queue q: the queue's index,
// 4 bytes, at QueueNotify (virtio 1.2 §4.2.2).
func (s *virtioSlot) notifyMatch(q int) vmm.IOEventFD {
	return vmm.IOEventFD{Addr: uint64(s.base) + virtio.QueueNotifyOffset, Len: 4, DataMatch: uint64(q)}
}

// unplug stops the slot's goroutines and releases its eventfds and device.
func (s *virtioSlot) unplug(vm *vmm.VM) {
	for q, e := range s.notify {
		_ = vm.DetachIOEventFD(e, s.notifyMatch(q))
		e.Close()
	}
	s.wg.Wait()
	if s.transport != nil {
		s.transport.Close()
	}
	// The device's backend (a disk file, an NBD connection) goes with it.
	if c, ok := s.device.(io.Closer); ok {
		c.Close()
	}
	if s.irq != nil {
		_ = vm.DetachIRQFD(s.irq, s.gsi)
		s.irq.Close()
	}
}

// acpiVirtio lists the slots for the DSDT.
func (m *Machine) acpiVirtio() []acpi.VirtioMMIO {
	var out []acpi.VirtioMMIO
	for _, s := range m.virtio {
		out = append(out, acpi.VirtioMMIO{Base: uint64(s.base), Size: virtio.MMIOSize, GSI: s.gsi})
	}
	return out
}

// VirtioDevices lists the plugged devices' specs, in slot order.
func (m *Machine) VirtioDevices() []DeviceSpec {
	out := make([]DeviceSpec, len(m.virtio))
	for i, s := range m.virtio {
		out[i] = s.spec
	}
	return out
}

// pauseDevices quiesces every virtio device after the vCPUs stopped: no
// new requests, and every request in flight completed into guest RAM (and
// so into the dirty log) before the final pass of a migration reads it.
func (m *Machine) pauseDevices() {
	for _, s := range m.virtio {
		if !s.paused {
			s.transport.Pause()
			s.paused = true
		}
	}
}

// resumeDevices undoes pauseDevices; a restored machine's devices start
// paused and are resumed here by Run.
func (m *Machine) resumeDevices() {
	for _, s := range m.virtio {
		if s.paused {
			s.transport.Resume()
			s.paused = false
		}
	}
}

// virtioState is one slot in the machine state: how to rebuild the device,
// and its transport and device state.
type virtioState struct {
	Device DeviceSpec
	State  virtio.MMIOState
}

// saveVirtio encodes every slot. The devices must be paused.
func (m *Machine) saveVirtio() ([]virtioState, error) {
	var out []virtioState
	for _, s := range m.virtio {
		st, err := s.transport.SaveState()
		if err != nil {
			return nil, fmt.Errorf("saving virtio slot %d (%s): %w", len(out), s.spec, err)
		}
		out = append(out, virtioState{Device: s.spec, State: st})
	}
	return out, nil
}

// rebuildVirtio plugs, on a migration destination, the devices the source
// had, built by the factory from their specs, in the same slots.
func (m *Machine) rebuildVirtio(saved []virtioState) error {
	if len(saved) > MaxVirtioDevices {
		return fmt.Errorf("machine state has %d virtio devices, the board has %d slots", len(saved), MaxVirtioDevices)
	}
	if len(m.virtio) != 0 {
		return errors.New("restoring virtio devices: this machine already has some; a destination starts without")
	}
	if len(saved) > 0 && m.cfg.Devices == nil {
		return errors.New("the machine state has virtio devices but this govmm was given no way to build them")
	}
	for _, v := range saved {
		dev, err := m.cfg.Devices(v.Device)
		if err != nil {
			return fmt.Errorf("rebuilding %s: %w", v.Device, err)
		}
		if err := m.AddVirtio(v.Device, dev); err != nil {
			return err
		}
	}
	return nil
}

// restoreVirtio loads each slot's state; the devices stay paused until Run.
func (m *Machine) restoreVirtio(saved []virtioState) error {
	for i, v := range saved {
		s := m.virtio[i]
		s.paused = true
		if err := s.transport.RestoreState(v.State); err != nil {
			return fmt.Errorf("restoring virtio slot %d (%s): %w", i, v.Device, err)
		}
	}
	return nil
}

// closeVirtio unplugs every device.
func (m *Machine) closeVirtio() {
	for _, s := range m.virtio {
		s.unplug(m.VM)
	}
	m.virtio = nil
}

// What a migration does to network devices, found through optional
// interfaces so that the machine never names a device type
// (devices/virtio/net implements both).
type (
	// trafficHandover is a device whose backend a destination on the same
	// host shares (a multi-queue TAP): Detach stops its receiving so the
	// traffic goes to the other side, Attach takes it back.
	trafficHandover interface {
		Detach() error
		Attach() error
	}
	// announcer makes the network learn where the guest now is: a RARP,
	// and the guest's own gratuitous ARPs (VIRTIO_NET_F_GUEST_ANNOUNCE).
	announcer interface {
		Announce() error
	}
)

// handOverTraffic detaches (attach false) or attaches every device that
// shares its backend with a migration's other side.
func (m *Machine) handOverTraffic(attach bool) {
	for i, s := range m.virtio {
		h, ok := s.device.(trafficHandover)
		if !ok {
			continue
		}
		op, err := "detaching", error(nil)
		if attach {
			op, err = "attaching", h.Attach()
		} else {
			err = h.Detach()
		}
		if err != nil {
			m.logf("virtio slot %d (%s): %s its backend: %v", i, s.spec, op, err)
		}
	}
}

// announce tells the network that the guest runs here now.
func (m *Machine) announce() {
	for i, s := range m.virtio {
		if a, ok := s.device.(announcer); ok {
			if err := a.Announce(); err != nil {
				m.logf("virtio slot %d (%s): announcing the guest: %v", i, s.spec, err)
			}
		}
	}
}
