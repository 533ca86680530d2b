// Package tap opens Linux TAP devices: virtual Ethernet interfaces whose
// other end is a file descriptor instead of a cable (kernel
// Documentation/networking/tuntap.rst, drivers/net/tun.c). Every frame the
// host's network stack sends out of the interface ("tap0") can be read
// from the descriptor, and every frame written to the descriptor arrives
// on the interface as if received from the wire. Give the interface an
// address, or put it in a bridge with the host's NIC, and a guest behind
// it is on the network. virtio-net (devices/virtio/net) is the device on
// the guest's side.
//
// # How a TAP is opened
//
// Open opens /dev/net/tun and names the interface with the TUNSETIFF
// ioctl, which creates it or, if it exists, attaches to it. The flags
// asked for are:
//
//	IFF_TAP          Ethernet frames (IFF_TUN would be bare IP packets)
//	IFF_NO_PI        no 4-byte packet-information prefix
//	IFF_VNET_HDR     each frame comes with a struct virtio_net_hdr in front,
//	                 the same header virtio-net uses, so the device passes
//	                 it on without translating (TUNSETVNETHDRSZ sets its
//	                 size: 12 bytes, struct virtio_net_hdr_v1)
//	IFF_MULTI_QUEUE  several descriptors may serve one interface, each a
//	                 queue of its own; live migration uses this (below)
//
// Offloads (TUNSETOFFLOAD, TUN_F_* in include/uapi/linux/if_tun.h,
// Documentation/networking/tuntap.rst) are the work on a frame the kernel
// may leave to the reader: a partial checksum (NEEDS_CSUM in the header),
// a TCP segment of up to 64 KiB to cut (gso_type). Open finds out which
// the kernel supports (SupportedOffloads) and leaves them off, so every
// frame read is a plain, complete Ethernet frame and its header is all
// zeros, or says only that the checksum was verified
// (VIRTIO_NET_HDR_F_DATA_VALID). SetOffloads turns them on for a reader
// that can take such frames: virtio-net does when the guest negotiated
// the matching features. Writes need no setting: a frame written may ask
// for any of the supported work in its header, and the kernel does it
// where the frame goes (and only if it must: a local socket takes the
// 64 KiB at once).
//
// The descriptor is non-blocking and goes through Go's poller (os.NewFile
// on an O_NONBLOCK descriptor), so a Read parks its goroutine rather than
// a thread, and Close wakes a Read that waits.
//
// # Live migration
//
// A migration between two govmm processes on the same host hands the
// same TAP from one to the other. With IFF_MULTI_QUEUE, the destination
// opens a second queue on the interface while the source still runs; the
// source's Detach (TUNSETQUEUE with IFF_DETACH_QUEUE) then takes its queue
// out, so that the kernel sends every frame to the destination's, and
// Attach puts it back if the migration fails. A detached queue gets no
// frames; frames it held are dropped.
//
// # Errors
//
// Opening says what is missing: /dev/net/tun (the tun module),
// CAP_NET_ADMIN, or a name that belongs to something other than a
// multi-queue TAP. If the interface is deleted under an open TAP (ip link
// del), Read and Write fail with ErrDeleted, and a Read waiting at that
// moment returns.
//
// Read tap.go; test helpers that run in a network namespace of their own
// are in taptest.
package tap
