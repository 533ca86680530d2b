package virtio

import (
	"errors"
	"fmt"
)

// The device status state machine (virtio 1.2 §2.1, §3.1.1) and what each
// step starts or stops. Linux's sequence (virtio.c virtio_dev_probe,
// virtio_mmio.c vm_probe/vm_setup_vq):
//
//	write 0                        reset
//	ACKNOWLEDGE, then DRIVER       the guest found and claims the device
//	read DeviceFeatures, write DriverFeatures
//	FEATURES_OK, read it back      the transport refuses what it cannot do
//	per queue: QueueSel, QueueNumMax, QueueNum, Desc/Driver/Device, QueueReady=1
//	DRIVER_OK                      the device starts (activate)
//
// and a final write of 0 when the driver unbinds.

// statusLocked is the Status register: the driver's bits plus the
// device's DEVICE_NEEDS_RESET.
func (m *MMIO) statusLocked() uint8 {
	s := m.status
	if m.needsReset.Load() {
		s |= StatusNeedsReset
	}
	return s
}

func (m *MMIO) writeStatus(v uint32) {
	if v == 0 {
		m.reset()
		return
	}
	// UNTRUSTED: the value is the guest's.
	if v > 0xff || uint8(v)&^statusKnown != 0 {
		m.logf("status %#x has reserved bits: ignored", v)
		return
	}
	// DEVICE_NEEDS_RESET belongs to the device; the driver writes it
	// back unchanged when it adds a bit (virtio_add_status reads,
	// ORs and writes).
	want := uint8(v) &^ StatusNeedsReset
	if cleared := m.status &^ want; cleared != 0 {
		// §2.1.1: "The driver MUST NOT clear a device status bit."
		m.logf("status write %#x clears bits %#x without a reset: ignored", v, cleared)
		return
	}
	added := want &^ m.status
	if added&StatusFeaturesOK != 0 {
		// §3.1.1 step 5-6: the device leaves FEATURES_OK clear if it
		// does not accept the features; the driver reads it back.
		if err := m.checkFeatures(m.driverFeatures); err != nil {
			m.logf("FEATURES_OK refused: %v", err)
			added &^= StatusFeaturesOK
		}
	}
	if added&StatusDriverOK != 0 && (m.status|added)&StatusFeaturesOK == 0 {
		m.logf("DRIVER_OK without FEATURES_OK: ignored")
		added &^= StatusDriverOK
	}
	m.status |= added
	if added&StatusDriverOK != 0 {
		m.activate()
	}
}

// checkFeatures accepts the features a driver chose, or says why not.
func (m *MMIO) checkFeatures(f uint64) error {
	if extra := f &^ m.offered; extra != 0 {
		return fmt.Errorf("driver features %#x include %#x, which were not offered", f, extra)
	}
	if f&FeatureVersion1 == 0 {
		// §6.1: a device that offers VIRTIO_F_VERSION_1 "MAY fail to
		// operate further if VIRTIO_F_VERSION_1 is not accepted"; a
		// modern-only device has no legacy interface to fall back on.
		return errors.New("driver did not accept VIRTIO_F_VERSION_1")
	}
	return nil
}

// activate starts the device after DRIVER_OK. The queues the driver set up
// are checked and mapped here, once; a bad one makes the device need a
// reset.
func (m *MMIO) activate() {
	if m.closed || m.needsReset.Load() {
		return
	}
	queues, err := m.newQueues(m.queues, m.driverFeatures, m.paused)
	if err == nil {
		err = m.dev.Activate(m.driverFeatures, queues)
	}
	if err != nil {
		m.fail(fmt.Errorf("cannot start: %w", err))
		return
	}
	m.active = queues
	for _, q := range queues {
		if q != nil {
			q.notify() // buffers may already be waiting
		}
	}
}

// newQueues maps every ready queue; the others stay nil.
func (m *MMIO) newQueues(regs []queueRegs, features uint64, paused bool) ([]*Queue, error) {
	queues := make([]*Queue, len(regs))
	for i, r := range regs {
		if !r.ready {
			continue
		}
		if r.num > MaxQueueSize {
			return nil, fmt.Errorf("queue %d: size %d is larger than %d", i, r.num, MaxQueueSize)
		}
		q, err := newQueue(m, i, ringLayout{uint16(r.num), r.desc, r.driver, r.device}, m.maxSizes[i], features)
		if err != nil {
			return nil, err
		}
		q.paused = paused
		queues[i] = q
	}
	return queues, nil
}

// stop drains the queues and stops the device, if it runs.
func (m *MMIO) stop() {
	if m.active == nil {
		return
	}
	for _, q := range m.active {
		if q != nil {
			q.pause()
		}
	}
	m.dev.Reset()
	m.active = nil
}

// reset handles a write of 0 to Status (§2.4.1): afterwards the device
// uses no guest memory and has forgotten its queues and features. It waits
// for requests in flight, so that the driver may free their buffers as
// soon as the write returns.
func (m *MMIO) reset() {
	m.stop()
	m.resetRegisters()
}

func (m *MMIO) resetRegisters() {
	m.status = 0
	m.needsReset.Store(false)
	m.deviceFeaturesSel, m.driverFeaturesSel, m.driverFeatures, m.queueSel = 0, 0, 0, 0
	for i := range m.queues {
		// QueueNum starts at the maximum, as virtio-pci's queue_size
		// does (§4.1.4.3); Linux always writes it.
		m.queues[i] = queueRegs{num: uint32(m.maxSizes[i])}
	}
	m.interruptStatus.Store(0)
	m.irqMu.Lock()
	m.irqPending = false
	m.irqMu.Unlock()
}

// fail handles an unrecoverable guest error: the device sets
// DEVICE_NEEDS_RESET and sends a configuration change interrupt (§2.1.2),
// and serves nothing more until reset. Called with or without mu held, and
// from a Queue with its mu held: it takes only irqMu.
func (m *MMIO) fail(err error) {
	if m.needsReset.Swap(true) {
		return
	}
	m.logf("device needs reset: %v", err)
	m.raise(InterruptConfigChange)
}

// raise records why the device interrupts and raises the interrupt, or
// holds it back while paused.
func (m *MMIO) raise(why uint32) {
	m.interruptStatus.Or(why)
	m.irqMu.Lock()
	defer m.irqMu.Unlock()
	if m.irqPaused {
		m.irqPending = true
		return
	}
	m.interrupt()
}

// Pause stops the device for migration; the vCPUs are already paused. The
// queues hand out no more chains, Pause waits until every chain in flight
// has completed and been pushed to its used ring (so guest RAM holds every
// result), and interrupts are held back from the start until Resume, so
// none reaches KVM after the machine saved the interrupt controllers.
func (m *MMIO) Pause() {
	m.irqMu.Lock()
	m.irqPaused = true
	m.irqMu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.paused = true
	for _, q := range m.active {
		if q != nil {
			q.pause()
		}
	}
}

// Resume undoes Pause, and is how a restored device starts serving. Every
// queue looks at its avail ring again, since notifications may have been
// missed, and an interrupt held back meanwhile is raised.
func (m *MMIO) Resume() {
	m.mu.Lock()
	if !m.paused {
		m.mu.Unlock()
		return
	}
	m.paused = false
	for _, q := range m.active {
		if q != nil {
			q.resume()
		}
	}
	m.mu.Unlock()
	m.irqMu.Lock()
	defer m.irqMu.Unlock()
	m.irqPaused = false
	if m.irqPending {
		m.irqPending = false
		m.interrupt()
	}
}

// Close stops the device's goroutines for good. Register accesses still
// work, but the device never starts again.
func (m *MMIO) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stop()
	m.closed = true
}
