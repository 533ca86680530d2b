package net

import (
	"encoding/binary"
	"fmt"
)

// Every frame on the receive and transmit queues starts with a header,
// struct virtio_net_hdr_v1 (virtio 1.2 §5.1.6), little-endian:
//
//	u8   flags;        // VIRTIO_NET_HDR_F_*
//	u8   gso_type;     // VIRTIO_NET_HDR_GSO_*: segmentation still to do
//	le16 hdr_len;      // for GSO: length of the headers to repeat
//	le16 gso_size;     // for GSO: payload bytes per segment
//	le16 csum_start;   // for NEEDS_CSUM: where checksumming starts
//	le16 csum_offset;  // ... and where, after csum_start, the result goes
//	le16 num_buffers;  // receive: how many buffers the frame spans
//
// The header is how the two sides hand each other unfinished work: a
// checksum to compute (NEEDS_CSUM), a 64 KiB TCP segment to cut into
// MTU-sized frames (gso_type). Which work may be handed over in each
// direction is negotiated (offload.go); with none of the offload
// features, the driver sends all zeros, and the device answers all zeros
// except num_buffers. A TAP with IFF_VNET_HDR uses the same header
// (include/uapi/linux/virtio_net.h), so a TAP frame and a queue frame have
// the same layout, and the device passes headers through, having checked
// them.
const (
	hdrSize = 12 // sizeof(struct virtio_net_hdr_v1), with num_buffers

	hdrFlags      = 0
	hdrGSOType    = 1
	hdrHdrLen     = 2
	hdrGSOSize    = 4
	hdrCsumStart  = 6
	hdrCsumOffset = 8
	hdrNumBuffers = 10

	hdrFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum is partial
	hdrFlagDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID: the checksum was verified (receive only)
	hdrFlagRSCInfo   = 4 // VIRTIO_NET_HDR_F_RSC_INFO: coalesced segments (receive only, GUEST_RSC)

	gsoNone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	gsoTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	gsoECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN: a flag; the TCP header has CWR set
	// VIRTIO_NET_HDR_GSO_UDP (3) and _UDP_L4 (5) belong to UFO and
	// USO, not offered.
)

// header is a virtio_net_hdr_v1, decoded.
type header struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
	numBuffers uint16
}

func parseHeader(b []byte) header {
	le := binary.LittleEndian
	return header{
		flags:      b[hdrFlags],
		gsoType:    b[hdrGSOType],
		hdrLen:     le.Uint16(b[hdrHdrLen:]),
		gsoSize:    le.Uint16(b[hdrGSOSize:]),
		csumStart:  le.Uint16(b[hdrCsumStart:]),
		csumOffset: le.Uint16(b[hdrCsumOffset:]),
		numBuffers: le.Uint16(b[hdrNumBuffers:]),
	}
}

func (h header) put(b []byte) {
	le := binary.LittleEndian
	b[hdrFlags] = h.flags
	b[hdrGSOType] = h.gsoType
	le.PutUint16(b[hdrHdrLen:], h.hdrLen)
	le.PutUint16(b[hdrGSOSize:], h.gsoSize)
	le.PutUint16(b[hdrCsumStart:], h.csumStart)
	le.PutUint16(b[hdrCsumOffset:], h.csumOffset)
	le.PutUint16(b[hdrNumBuffers:], h.numBuffers)
}

// offloadFeatureSet names the features that allow each kind of unfinished
// work in one direction: the device's (CSUM, HOST_*) for transmitted
// frames, the driver's (GUEST_*) for received ones.
type offloadFeatureSet struct{ csum, tso4, tso6, ecn uint64 }

var (
	txOffloads = offloadFeatureSet{featureCsum, featureHostTSO4, featureHostTSO6, featureHostECN}
	rxOffloads = offloadFeatureSet{featureGuestCsum, featureGuestTSO4, featureGuestTSO6, featureGuestECN}
)

// checkGSO checks that features allow segmentation of kind gsoType (not
// gsoNone).
func (s offloadFeatureSet) checkGSO(gsoType uint8, features uint64) error {
	var need uint64
	switch gsoType &^ gsoECN {
	case gsoTCPv4:
		need = s.tso4
	case gsoTCPv6:
		need = s.tso6
	default: // UDP, UDP_L4, or ECN alone
		return fmt.Errorf("gso_type %#x is no kind of segmentation this device offers", gsoType)
	}
	if gsoType&gsoECN != 0 {
		need |= s.ecn
	}
	if features&need != need {
		return fmt.Errorf("segmentation (gso_type %#x) not negotiated", gsoType)
	}
	return nil
}

// checkCsumRange checks that a partial checksum's field lies inside a
// frame of n bytes: the 16 bits at csum_start+csum_offset.
func checkCsumRange(h header, n int) error {
	if int(h.csumStart)+int(h.csumOffset)+2 > n {
		return fmt.Errorf("partial checksum at %d+%d lies outside the %d-byte frame", h.csumStart, h.csumOffset, n)
	}
	return nil
}

// forBackend checks the header of a frame of n bytes from the guest and
// returns the header to send the TAP with it: the guest's, with only the
// fields its flags and gso_type give a meaning, so the TAP gets nothing
// unchecked (tun_get_user checks hdr_len against the frame even without
// GSO).
//
// UNTRUSTED: the header is the guest's. §5.1.6.2.1 "Packet
// Transmission", driver requirements:
//
//   - "The driver MUST NOT set the VIRTIO_NET_HDR_F_DATA_VALID and
//     VIRTIO_NET_HDR_F_RSC_INFO bits in flags", and NEEDS_CSUM only with
//     VIRTIO_NET_F_CSUM; flags the device does not know it "MUST ignore"
//     (§5.1.6.2.2).
//   - gso_type other than NONE only with the matching HOST_TSO4/TSO6,
//     the ECN bit only with HOST_ECN, and then the driver "MUST also set
//     the VIRTIO_NET_HDR_F_NEEDS_CSUM bit in flags and MUST set gso_size
//     to indicate the desired MSS".
//   - csum_start+csum_offset+2 within the frame; hdr_len, a hint without
//     VIRTIO_NET_F_GUEST_HDRLEN (Linux's virtio_net_hdr_from_skb puts
//     the length of the linear part there), no longer than the frame, or
//     the kernel refuses the write.
//
// num_buffers "MUST" be 0 on transmit and is not passed on.
func forBackend(h header, n int, features uint64) (header, error) {
	if h.flags&(hdrFlagDataValid|hdrFlagRSCInfo) != 0 {
		return header{}, fmt.Errorf("flags %#x include DATA_VALID or RSC_INFO, which are for received frames", h.flags)
	}
	var out header
	if h.flags&hdrFlagNeedsCsum != 0 {
		if features&txOffloads.csum == 0 {
			return header{}, fmt.Errorf("checksum offload (NEEDS_CSUM) not negotiated")
		}
		if err := checkCsumRange(h, n); err != nil {
			return header{}, err
		}
		out.flags, out.csumStart, out.csumOffset = hdrFlagNeedsCsum, h.csumStart, h.csumOffset
	}
	if h.gsoType == gsoNone {
		return out, nil
	}
	if err := txOffloads.checkGSO(h.gsoType, features); err != nil {
		return header{}, err
	}
	switch {
	case out.flags&hdrFlagNeedsCsum == 0:
		return header{}, fmt.Errorf("segmentation (gso_type %#x) without NEEDS_CSUM", h.gsoType)
	case h.gsoSize == 0:
		return header{}, fmt.Errorf("segmentation (gso_type %#x) with gso_size 0", h.gsoType)
	case int(h.hdrLen) > n:
		return header{}, fmt.Errorf("hdr_len %d is longer than the %d-byte frame", h.hdrLen, n)
	}
	out.gsoType, out.gsoSize, out.hdrLen = h.gsoType, h.gsoSize, h.hdrLen
	return out, nil
}

// forGuest turns the header of a frame read from the backend (the header,
// then the Ethernet frame, in pkt) into one for a driver that negotiated
// features, in place. num_buffers is left 0 for deliver.
//
// The header is the host kernel's, and the TAP was told to hand over only
// what the driver accepts (tapOffloads), but not every frame read went by
// that: frames queued in the TAP before a reset, or the moment a
// migration destination probes the shared interface (tap.Open). So the
// header is checked like any, against §5.1.6.4.1 "Processing of Incoming
// Packets", device requirements:
//
//   - "If VIRTIO_NET_F_GUEST_CSUM is not negotiated, the device MUST set
//     flags to zero and SHOULD supply a fully checksummed packet": a
//     partial checksum is finished here, and DATA_VALID (the TAP reports
//     checksums it verified, tun_put_user → virtio_net_hdr_from_skb)
//     cleared, so the guest checks for itself.
//   - "If none of the VIRTIO_NET_F_GUEST_TSO4, TSO6, UFO, USO options
//     have been negotiated, the device MUST set gso_type to
//     VIRTIO_NET_HDR_GSO_NONE": a frame left for segmentation that the
//     guest cannot take is refused; segmenting it here is the TAP's job
//     (it does when its offloads are off).
func forGuest(pkt []byte, features uint64) error {
	if len(pkt) < hdrSize+ethHeaderSize {
		return fmt.Errorf("frame of %d bytes with its header is shorter than a %d-byte header and an Ethernet header",
			len(pkt), hdrSize)
	}
	h, frame := parseHeader(pkt), pkt[hdrSize:]
	var out header
	if h.gsoType != gsoNone {
		if err := rxOffloads.checkGSO(h.gsoType, features); err != nil {
			return fmt.Errorf("frame of %d bytes left for segmentation, which the guest cannot do: %w", len(frame), err)
		}
		out.gsoType, out.gsoSize, out.hdrLen = h.gsoType, h.gsoSize, h.hdrLen
	}
	guestCsum := features&rxOffloads.csum != 0
	if h.flags&hdrFlagNeedsCsum != 0 {
		if err := checkCsumRange(h, len(frame)); err != nil {
			return err
		}
		if guestCsum {
			out.flags, out.csumStart, out.csumOffset = hdrFlagNeedsCsum, h.csumStart, h.csumOffset
		} else {
			completeChecksum(frame, int(h.csumStart), int(h.csumOffset))
		}
	}
	if guestCsum {
		out.flags |= h.flags & hdrFlagDataValid
	}
	out.put(pkt)
	return nil
}

// completeChecksum does what the host left to the NIC with NEEDS_CSUM, as
// Linux's skb_checksum_help does: the 16-bit field at start+offset holds
// the sum of the pseudo-header (for TCP and UDP); the Internet checksum
// (RFC 1071) of everything from start to the end of the frame, that field
// included, goes into it. checkCsumRange has checked the field's place.
func completeChecksum(frame []byte, start, offset int) {
	var sum uint32
	data := frame[start:]
	for len(data) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(data))
		data = data[2:]
	}
	if len(data) == 1 {
		sum += uint32(data[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	csum := ^uint16(sum)
	if csum == 0 {
		// CSUM_MANGLED_0: for UDP a zero checksum means "none".
		csum = 0xffff
	}
	binary.BigEndian.PutUint16(frame[start+offset:], csum)
}
