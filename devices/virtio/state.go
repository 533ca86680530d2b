package virtio

import (
	"encoding/json"
	"errors"
	"fmt"

	"govmm/vmm"
)

// MMIOState is a transport's saved state, with its device's. The rings
// themselves are in guest RAM, which migrates separately; what is here is
// the device's side of them: the registers the driver wrote and, per
// queue, how far the device has got.
type MMIOState struct {
	DeviceType        DeviceType
	Status            uint8 // including DEVICE_NEEDS_RESET
	DeviceFeaturesSel uint32
	DriverFeaturesSel uint32
	DriverFeatures    uint64
	QueueSel          uint32
	InterruptStatus   uint32
	InterruptPending  bool // an interrupt was held back by Pause; Resume raises it
	Queues            []QueueState
	Device            json.RawMessage // the device type's own state
}

// QueueState is one queue: its registers and, once the device runs, its
// ring positions. No chain is in flight in a saved state (Pause).
type QueueState struct {
	Num                  uint32 // QueueNum
	Ready                bool   // QueueReady
	Desc, Driver, Device uint64 // ring addresses (GPAs)
	LastAvailIdx         uint16 // avail ring entries the device has taken
	UsedIdx              uint16 // used ring entries it has written
}

// SaveState returns the transport's and the device's state. A running
// device must be paused first.
func (m *MMIO) SaveState() (MMIOState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.active != nil && !m.paused {
		return MMIOState{}, fmt.Errorf("%v: saving a running device: Pause it first", m.dev.Type())
	}
	dev, err := m.dev.SaveState()
	if err != nil {
		return MMIOState{}, fmt.Errorf("%v: %w", m.dev.Type(), err)
	}
	s := MMIOState{
		DeviceType:        m.dev.Type(),
		Status:            m.statusLocked(),
		DeviceFeaturesSel: m.deviceFeaturesSel,
		DriverFeaturesSel: m.driverFeaturesSel,
		DriverFeatures:    m.driverFeatures,
		QueueSel:          m.queueSel,
		InterruptStatus:   m.interruptStatus.Load(),
		Device:            dev,
	}
	for i, r := range m.queues {
		qs := QueueState{Num: r.num, Ready: r.ready, Desc: uint64(r.desc), Driver: uint64(r.driver), Device: uint64(r.device)}
		if m.active != nil && m.active[i] != nil {
			var inFlight int
			qs.LastAvailIdx, qs.UsedIdx, inFlight = m.active[i].indices()
			if inFlight != 0 {
				return MMIOState{}, fmt.Errorf("%v: queue %d has %d requests in flight", m.dev.Type(), i, inFlight)
			}
		}
		s.Queues = append(s.Queues, qs)
	}
	m.irqMu.Lock()
	s.InterruptPending = m.irqPending
	m.irqMu.Unlock()
	return s, nil
}

// RestoreState loads a state from SaveState into a transport that has not
// been started by a driver (a new one, or one reset). It checks everything
// first (the saved state comes from another host) and leaves the transport
// and the device unchanged on error. A device that was running is started
// again, paused: it serves nothing, and raises no interrupt, until Resume.
func (m *MMIO) RestoreState(s MMIOState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.checkState(s); err != nil {
		return fmt.Errorf("%v: restore: %w", m.dev.Type(), err)
	}
	var queues []*Queue
	running := s.Status&StatusDriverOK != 0 && s.Status&StatusNeedsReset == 0
	if running {
		// The same checks as at DRIVER_OK, on the saved layout.
		regs := make([]queueRegs, len(s.Queues))
		for i, qs := range s.Queues {
			regs[i] = queueRegs{qs.Num, qs.Ready, vmm.GPA(qs.Desc), vmm.GPA(qs.Driver), vmm.GPA(qs.Device)}
		}
		var err error
		if queues, err = m.newQueues(regs, s.DriverFeatures, true); err != nil {
			return fmt.Errorf("%v: restore: %w", m.dev.Type(), err)
		}
		for i, q := range queues {
			if q != nil {
				q.lastAvail, q.usedIdx = s.Queues[i].LastAvailIdx, s.Queues[i].UsedIdx
			}
		}
	}
	if err := m.dev.RestoreState(s.Device); err != nil {
		return fmt.Errorf("%v: restore: %w", m.dev.Type(), err)
	}

	// Nothing below can fail, except the device refusing to start.
	m.status = s.Status &^ StatusNeedsReset
	m.needsReset.Store(s.Status&StatusNeedsReset != 0)
	m.deviceFeaturesSel, m.driverFeaturesSel = s.DeviceFeaturesSel, s.DriverFeaturesSel
	m.driverFeatures, m.queueSel = s.DriverFeatures, s.QueueSel
	for i, qs := range s.Queues {
		m.queues[i] = queueRegs{qs.Num, qs.Ready, vmm.GPA(qs.Desc), vmm.GPA(qs.Driver), vmm.GPA(qs.Device)}
	}
	m.interruptStatus.Store(s.InterruptStatus)
	m.paused = true
	m.irqMu.Lock()
	m.irqPaused, m.irqPending = true, s.InterruptPending
	m.irqMu.Unlock()
	if running {
		if err := m.dev.Activate(s.DriverFeatures, queues); err != nil {
			m.resetRegisters()
			return fmt.Errorf("%v: restore: starting the device: %w", m.dev.Type(), err)
		}
		m.active = queues
		// The queues are paused; Resume wakes them.
	}
	return nil
}

// checkState validates the parts of a state that need no guest memory.
func (m *MMIO) checkState(s MMIOState) error {
	switch {
	case m.closed:
		return errors.New("the device is closed")
	case m.active != nil || m.status != 0:
		return errors.New("the device is in use: restore into a new or reset device")
	case s.DeviceType != m.dev.Type():
		return fmt.Errorf("state is for a %v", s.DeviceType)
	case len(s.Queues) != len(m.maxSizes):
		return fmt.Errorf("state has %d queues, the device has %d", len(s.Queues), len(m.maxSizes))
	case s.Status&^statusKnown != 0:
		return fmt.Errorf("status %#x has reserved bits", s.Status)
	case s.Status&StatusDriverOK != 0 && s.Status&StatusFeaturesOK == 0:
		return fmt.Errorf("status %#x has DRIVER_OK without FEATURES_OK", s.Status)
	case s.InterruptStatus&^interruptKnown != 0:
		return fmt.Errorf("interrupt status %#x has reserved bits", s.InterruptStatus)
	}
	if s.Status&StatusFeaturesOK != 0 {
		if err := m.checkFeatures(s.DriverFeatures); err != nil {
			return err
		}
	}
	return nil
}
