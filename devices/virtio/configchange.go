package virtio

// Most devices' configuration space is fixed while a driver runs (a disk's
// capacity, say). Some change it on their own: virtio-net's status field
// says when the link goes up or down, or that the guest should announce
// itself after a live migration (VIRTIO_NET_S_ANNOUNCE). The device must
// then tell the driver, with a configuration change notification: on
// virtio-mmio, an interrupt with InterruptConfigChange set in
// InterruptStatus (virtio 1.2 §2.5, §4.2.2). Linux's vm_interrupt
// (drivers/virtio/virtio_mmio.c) then calls the driver's config_changed
// callback, which reads the configuration space again.

// ConfigChanger is implemented by a device whose configuration space can
// change while the driver runs. NewMMIO calls SetConfigChanged once,
// before anything else, with the function the device calls after each
// change. That function advances ConfigGeneration, so that a driver reading
// several fields sees that they changed meanwhile (§2.5.1), and raises a
// configuration change interrupt, held back while the transport is paused
// like any other. It takes no transport lock except the interrupt's own:
// a device may call it from any goroutine, with its own locks held.
//
// ConfigGeneration is not part of the saved state: a destination starts
// again from 0, which at worst makes a driver that was between two reads
// of a field read it again.
type ConfigChanger interface {
	SetConfigChanged(changed func())
}

// configChanged is the function a ConfigChanger gets.
func (m *MMIO) configChanged() {
	m.configGeneration.Add(1)
	m.raise(InterruptConfigChange)
}
