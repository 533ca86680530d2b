// Package net is virtio-net (virtio 1.2 §5.1): an Ethernet card for the
// guest, served by Linux's drivers/net/virtio_net.c as eth0, whose cable
// is a TAP interface on the host (devices/tap).
//
// # What the guest sees
//
// Three queues: receive (0), transmit (1) and control (2), and a
// configuration space (struct virtio_net_config) with the card's MAC and
// its status: link up, and ANNOUNCE when the guest should tell the network
// where it is. Offered features:
//
//	MAC             the MAC in the config space is the card's
//	STATUS          the status field is valid
//	MRG_RXBUF       a received frame may span several receive buffers
//	CTRL_VQ         the control queue exists
//	GUEST_ANNOUNCE  the device may ask the guest to announce itself
//
// and, on a backend that can carry them (a TAP, offload.go), the checksum
// and TCP segmentation offloads both ways:
//
//	CSUM, HOST_TSO4, HOST_TSO6, HOST_ECN           the guest may send 64 KiB
//	                                                TCP segments, checksums partial
//	GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_ECN  ... and receive them
//
// The 12-byte header in front of each frame (header.go) says what work is
// left: the device checks the guest's and passes it to the TAP, and tells
// the TAP (TUNSETOFFLOAD) to hand over only what the guest accepted, whose
// header then goes to the guest. Without the offloads, frames cross
// complete both ways and the header carries nothing but, on receive, the
// number of buffers used. UFO and USO (UDP) are not offered.
//
// # Data flow
//
//	guest TX queue ──serveTX──▶ Backend.WriteFrame ──▶ TAP ──▶ host
//	host ──▶ TAP ──▶ Backend.ReadFrame ──reader──▶ rxFull ──serveRX──▶ guest RX queue
//	guest control queue ──serveCtrl──▶ ack (ANNOUNCE_ACK clears the status bit)
//
// Transmitting (tx.go) copies each frame out of guest memory, checks it
// (its header against the features negotiated) and writes it to the
// backend. Receiving (rx.go) is split in two so that
// a device can be stopped at any moment: a reader goroutine that may block
// in the backend for as long as no frame comes, and a queue goroutine that
// copies frames into guest memory and never blocks on the backend. Every
// guest-memory write goes through virtio.Chain, which marks the pages
// dirty for live migration.
//
// Bad requests from the guest (a transmit chain with writable buffers, a
// frame larger than 64 KiB, a header asking for offloads not negotiated,
// a receive buffer too small) are logged, rate-limited, and the chain is
// returned unused; the device carries on. Backend errors are logged too:
// a frame that cannot be sent is dropped, and a backend that cannot be
// read any more (the TAP was deleted) leaves the guest without incoming
// traffic but otherwise working.
//
// # Live migration
//
// The guest's MAC and status travel in the saved state (state.go), the
// negotiated features in the transport's; the destination opens its own
// TAP from the machine's description, and Activate, which the transport
// calls on restore, sets its offloads from the features. Two
// things help the network follow the guest: Detach/Attach, which move a
// TAP's traffic between the source's and the destination's queue when
// both run on one host, and Announce, which the machine calls once the
// destination runs: the device broadcasts a RARP from the guest's MAC,
// and asks the guest to send gratuitous ARPs itself (VIRTIO_NET_S_ANNOUNCE
// and a configuration change interrupt, through virtio.ConfigChanger).
//
// Read net.go (features, config, lifecycle, announce), then offload.go,
// header.go, tx.go, rx.go and ctrl.go, then state.go.
package net
