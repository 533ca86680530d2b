package net

import (
	"encoding/binary"
	"fmt"

	"govmm/devices/virtio"
)

// The control queue (VIRTIO_NET_F_CTRL_VQ, virtio 1.2 §5.1.6.5) carries
// commands from the driver, one per chain:
//
//	u8 class;       // readable
//	u8 command;
//	u8 data[];      // command-specific, readable
//	u8 ack;         // writable: VIRTIO_NET_OK or VIRTIO_NET_ERR
//
// Linux's virtnet_send_command queues a command and then spins on the
// vCPU until the device answers, so the answer must come at once: the
// commands here only look at device state, never at the network.
//
// The one command this device needs is the announce acknowledgement. The
// receive-filter commands (VIRTIO_NET_F_CTRL_RX, not offered, so Linux
// does not send them) are accepted anyway: the device filters nothing,
// since the TAP passes on whatever the host sends to it and the guest's
// own stack drops what is not for it, so promiscuous and all-multicast
// modes are always on.

// Command classes and commands (include/uapi/linux/virtio_net.h).
const (
	ctrlClassRX       = 0 // VIRTIO_NET_CTRL_RX
	ctrlRXPromisc     = 0 // VIRTIO_NET_CTRL_RX_PROMISC
	ctrlRXAllMulti    = 1 // VIRTIO_NET_CTRL_RX_ALLMULTI
	ctrlClassMAC      = 1 // VIRTIO_NET_CTRL_MAC
	ctrlMACTableSet   = 0 // VIRTIO_NET_CTRL_MAC_TABLE_SET
	ctrlClassAnnounce = 3 // VIRTIO_NET_CTRL_ANNOUNCE
	ctrlAnnounceAck   = 0 // VIRTIO_NET_CTRL_ANNOUNCE_ACK

	ctrlOK  = 0 // VIRTIO_NET_OK
	ctrlErr = 1 // VIRTIO_NET_ERR

	// maxMACTableEntries bounds each of the two tables of a
	// MAC_TABLE_SET; Linux sends at most a few hundred addresses.
	maxMACTableEntries = 4096
)

// serveCtrl answers every command the driver queues, until stop is closed.
func (d *Device) serveCtrl(q *virtio.Queue, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-q.Notified():
		}
		for c := q.Pop(); c != nil; c = q.Pop() {
			ack := byte(ctrlErr)
			if c.Err() == nil { // else logged by Pop
				var err error
				if ack, err = d.command(c); err != nil {
					d.logf("control command %d: %v", c.Head(), err)
				}
			}
			// The ack is the last writable byte (§5.1.6.5), where a
			// malformed chain may still have one (virtio.Chain.Err).
			if n := c.WritableLen(); n > 0 {
				c.WriteAt([]byte{ack}, n-1)
			}
			q.Push(c)
		}
	}
}

// command carries out one command and returns the ack. The error explains
// an ack other than OK, for the log.
func (d *Device) command(c *virtio.Chain) (byte, error) {
	// UNTRUSTED: the layout and contents of the command are the guest's.
	if c.WritableLen() < 1 {
		return ctrlErr, fmt.Errorf("no writable ack byte: the command cannot be answered")
	}
	var hdr [2]byte
	if n, _ := c.ReadAt(hdr[:], 0); n < len(hdr) {
		return ctrlErr, fmt.Errorf("%d readable bytes, fewer than class and command", n)
	}
	class, cmd := hdr[0], hdr[1]
	data := c.ReadableLen() - 2
	switch {
	case class == ctrlClassAnnounce && cmd == ctrlAnnounceAck:
		if data != 0 {
			return ctrlErr, fmt.Errorf("ANNOUNCE_ACK carries data (%d bytes), it takes none", data)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.negotiated&featureGuestAnnounce == 0 {
			return ctrlErr, fmt.Errorf("ANNOUNCE_ACK without VIRTIO_NET_F_GUEST_ANNOUNCE")
		}
		// §5.1.6.5.4: the device "MUST clear VIRTIO_NET_S_ANNOUNCE bit
		// in the status field when it receives" the ack. No config
		// change interrupt: the driver knows.
		d.status &^= statusAnnounce
		return ctrlOK, nil
	case class == ctrlClassRX && (cmd == ctrlRXPromisc || cmd == ctrlRXAllMulti):
		// §5.1.6.5.1: data is one byte, 0 for off, 1 for on.
		if data != 1 {
			return ctrlErr, fmt.Errorf("RX command %d carries %d data bytes, want 1", cmd, data)
		}
		return ctrlOK, nil
	case class == ctrlClassMAC && cmd == ctrlMACTableSet:
		if err := checkMACTables(c, data); err != nil {
			return ctrlErr, fmt.Errorf("MAC_TABLE_SET: %w", err)
		}
		return ctrlOK, nil
	}
	return ctrlErr, fmt.Errorf("unsupported command class %d, command %d", class, cmd)
}

// checkMACTables checks the layout of MAC_TABLE_SET's data (§5.1.6.5.2):
// two tables, unicast then multicast, each
//
//	le32 entries;
//	u8   macs[entries][6];
//
// filling the data exactly.
func checkMACTables(c *virtio.Chain, n int64) error {
	off := int64(2)
	for _, table := range []string{"unicast", "multicast"} {
		var b [4]byte
		if k, _ := c.ReadAt(b[:], off); k < len(b) {
			return fmt.Errorf("%s table has no entry count", table)
		}
		entries := int64(binary.LittleEndian.Uint32(b[:]))
		if entries > maxMACTableEntries {
			return fmt.Errorf("%s table of %d entries, more than %d", table, entries, maxMACTableEntries)
		}
		off += 4 + 6*entries
	}
	if off != 2+n {
		return fmt.Errorf("tables take %d bytes, the command has %d", off-2, n)
	}
	return nil
}
