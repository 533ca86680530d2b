package net

import (
	"errors"
	"fmt"

	"govmm/devices/tap"
)

// Offloads: leaving work on a frame to the other side.
//
// A TCP sender can hand its NIC a 64 KiB segment with the checksum left
// partial, and let the NIC cut it into MTU-sized frames and checksum each
// (TSO). Between a guest and a TAP there is no NIC: whoever gets such a
// frame does the work, or passes it on. The virtio_net_hdr in front of
// every frame (header.go) says what is left to do, and both the virtio
// queues and a TAP with IFF_VNET_HDR use the same header, so the device
// only has to check it and pass it through, as QEMU's virtio-net does:
//
//	transmit  the guest negotiated CSUM, HOST_TSO4/6, HOST_ECN: its
//	          frames may come unfinished, and the TAP takes them so
//	          (tun_get_user → virtio_net_hdr_to_skb); the host's stack
//	          segments and checksums only if and where it must, most
//	          often never (a local socket takes the 64 KiB at once)
//	receive   the guest negotiated GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN:
//	          TUNSETOFFLOAD tells the TAP to hand over the same
//	          unfinished frames (kernel Documentation/networking/tuntap.rst,
//	          TUN_F_* in include/uapi/linux/if_tun.h), and the guest's
//	          stack takes 64 KiB at once
//
// A guest sending 1500-byte frames pays the device's per-frame cost (a
// chain, an exit, a write to the TAP) once per 1448 bytes; with TSO, once
// per 64 KiB.
//
// The features are offered only on a backend that says it can carry the
// work (Offloader), a TAP always; on one that cannot, the header stays
// all zeros both ways.

// Offloader is a Backend that can carry unfinished frames. A TAP is one
// (tap.TAP); a test's fake may be.
type Offloader interface {
	// SupportedOffloads are the offloads the backend handles: in a
	// frame written, a header asking for this work is accepted; and
	// SetOffloads can let frames read come with it.
	SupportedOffloads() tap.Offloads
	// SetOffloads sets the work that frames read may still need
	// (TUNSETOFFLOAD): 0 for complete frames only.
	SetOffloads(tap.Offloads) error
}

// offloadFeatures are the features offered on a backend that supports
// the offloads s: both directions of each, since a TAP takes on a write
// whatever it can hand over on a read. TSO needs the checksum offload
// (the segments' checksums are left partial), ECN needs TSO.
func offloadFeatures(s tap.Offloads) uint64 {
	if s&tap.OffloadCsum == 0 {
		return 0
	}
	f := uint64(featureCsum | featureGuestCsum)
	if s&tap.OffloadTSO4 != 0 {
		f |= featureHostTSO4 | featureGuestTSO4
	}
	if s&tap.OffloadTSO6 != 0 {
		f |= featureHostTSO6 | featureGuestTSO6
	}
	if s&tap.OffloadTSOECN != 0 && s&(tap.OffloadTSO4|tap.OffloadTSO6) != 0 {
		f |= featureHostECN | featureGuestECN
	}
	return f
}

// tapOffloads are the TUN_F_* offloads for a driver that negotiated
// features: the TAP may hand over exactly the unfinished work the guest
// accepts (the GUEST_* features), as QEMU's virtio_net_apply_guest_offloads
// sets them. The kernel's tun_set_offload refuses TSO without CSUM and
// ECN without TSO, as §5.1.3.1 does (checkDependencies).
func tapOffloads(features uint64) tap.Offloads {
	if features&featureGuestCsum == 0 {
		return 0
	}
	o := tap.OffloadCsum
	if features&featureGuestTSO4 != 0 {
		o |= tap.OffloadTSO4
	}
	if features&featureGuestTSO6 != 0 {
		o |= tap.OffloadTSO6
	}
	if features&featureGuestECN != 0 && o&(tap.OffloadTSO4|tap.OffloadTSO6) != 0 {
		o |= tap.OffloadTSOECN
	}
	return o
}

// setBackendOffloads sets the offloads of an Offloader backend. A failure
// is logged, not fatal: the receive path checks every header against the
// negotiated features anyway (forGuest), finishing a checksum or dropping
// a frame the guest cannot take. Called with d.mu held.
func (d *Device) setBackendOffloads(o tap.Offloads) {
	if d.offloader == nil {
		return
	}
	err := d.offloader.SetOffloads(o)
	if err != nil && !errors.Is(err, tap.ErrDeleted) { // the reader has said so
		d.logf("setting the backend's offloads to %#x: %v", uint(o), err)
	}
}

// featureDependencies are the requirements among the features offered
// (virtio 1.2 §5.1.3.1): a feature needs at least one of requires.
var featureDependencies = []struct {
	feature, requires uint64
	what              string
}{
	{featureGuestTSO4, featureGuestCsum, "VIRTIO_NET_F_GUEST_TSO4 without VIRTIO_NET_F_GUEST_CSUM"},
	{featureGuestTSO6, featureGuestCsum, "VIRTIO_NET_F_GUEST_TSO6 without VIRTIO_NET_F_GUEST_CSUM"},
	{featureGuestECN, featureGuestTSO4 | featureGuestTSO6, "VIRTIO_NET_F_GUEST_ECN without VIRTIO_NET_F_GUEST_TSO4 or TSO6"},
	{featureHostTSO4, featureCsum, "VIRTIO_NET_F_HOST_TSO4 without VIRTIO_NET_F_CSUM"},
	{featureHostTSO6, featureCsum, "VIRTIO_NET_F_HOST_TSO6 without VIRTIO_NET_F_CSUM"},
	{featureHostECN, featureHostTSO4 | featureHostTSO6, "VIRTIO_NET_F_HOST_ECN without VIRTIO_NET_F_HOST_TSO4 or TSO6"},
	// The driver acknowledges an announcement on the control queue.
	// Linux's virtnet_validate_features refuses this one too.
	{featureGuestAnnounce, featureCtrlVQ, "VIRTIO_NET_F_GUEST_ANNOUNCE without VIRTIO_NET_F_CTRL_VQ"},
}

// checkDependencies refuses features that break a requirement of
// §5.1.3.1, which "the driver MUST NOT" accept (§2.2.1). The device could
// not serve them consistently: segmenting for the guest leaves each
// segment's checksum to it, for one.
func checkDependencies(features uint64) error {
	for _, dep := range featureDependencies {
		if features&dep.feature != 0 && features&dep.requires == 0 {
			return fmt.Errorf("the driver accepted %s", dep.what)
		}
	}
	return nil
}
