// Package virtiotest is a test-side virtio driver: it drives a virtio-mmio
// transport's registers and builds descriptor chains and rings in guest
// memory the way Linux's drivers/virtio/virtio_mmio.c and virtio_ring.c do,
// so that device tests exercise the real queue code end to end without a
// guest. It also has the raw tools to build the hostile rings a guest
// could (SetDesc, Publish, SetAvailIdx).
//
// Memory the driver writes is written the way the guest would write it:
// directly, without marking pages dirty, so that TrackDirty shows exactly
// the pages the device wrote.
package virtiotest
