// Package blk is virtio-blk (virtio 1.2 §5.2): a disk for the guest,
// served by Linux's drivers/block/virtio_blk.c as /dev/vda.
//
// # What the guest sees
//
// One request queue of up to 256 entries, and a configuration space
// (struct virtio_blk_config) with the capacity in 512-byte sectors, the
// most data buffers per request (seg_max) and the block size. Offered
// features: FLUSH, SEG_MAX, BLK_SIZE, RO for a read-only disk, and DISCARD
// and WRITE_ZEROES where the backend implements disk.Discarder and
// disk.ZeroWriter (so that fstrim and mkfs's discard reach the host).
//
// # Data flow
//
// The transport (package virtio) wakes the device's queue goroutine when
// the driver notifies. That goroutine pops each request and hands it to one
// of a few workers (worker.go), which parse it (request.go), call the
// backend, write the status byte and push it to the used ring. Reads go
// from the backend straight into guest RAM (virtio.Chain.CopyIn, which
// marks the pages dirty for migration); writes go from guest RAM straight
// to the backend. Requests finish in any order.
//
// A request the device cannot make sense of (a short header, data in the
// wrong direction, sectors beyond the disk) is answered VIRTIO_BLK_S_IOERR
// and logged; an unknown type VIRTIO_BLK_S_UNSUPP. A backend error is an
// IOERR for that request only: the device carries on.
//
// # Durability
//
// Linux negotiates FLUSH and sends one whenever the file system needs its
// writes on stable storage (a journal commit, fsync). A driver that does
// not negotiate FLUSH gets write-through: every write is flushed before it
// completes (§5.2.6.2).
//
// Read blk.go (features, config space, lifecycle, state), then request.go,
// then worker.go.
package blk
