package net

import (
	"encoding/json"
	"fmt"
	stdnet "net"
)

// State is the device's saved state. The backend is not in it: the
// machine's description says which TAP to open, and the destination opens
// it. What is here is what the guest has seen of the device.
type State struct {
	// MAC is the address the guest was given. The destination takes
	// it over, whatever its own configuration says: the guest keeps
	// its address, as it would on real hardware.
	MAC string
	// Status is the status field (VIRTIO_NET_S_*): link up, and
	// ANNOUNCE if the guest was asked to announce itself and has not
	// acknowledged yet.
	Status uint16
}

// SaveState returns the state as JSON.
func (d *Device) SaveState() (json.RawMessage, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return json.Marshal(State{MAC: stdnet.HardwareAddr(d.mac[:]).String(), Status: d.status})
}

// RestoreState checks a saved state and applies it. Whether ANNOUNCE
// may stay set depends on the features the driver negotiated, which
// Activate learns next and checks.
func (d *Device) RestoreState(data json.RawMessage) error {
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("virtio-net state: %w", err)
	}
	mac, err := ParseMAC(s.MAC)
	if err != nil {
		return fmt.Errorf("virtio-net state: %w", err)
	}
	switch {
	case s.Status&^statusKnown != 0:
		return fmt.Errorf("virtio-net state: status %#x has unknown bits", s.Status)
	case s.Status&statusLinkUp == 0:
		return fmt.Errorf("virtio-net state: status %#x has the link down, which this device never reports", s.Status)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.mac[:], mac)
	d.status = s.Status
	return nil
}
