package net

import (
	"bytes"
	"encoding/binary"
	stdnet "net"
	"testing"
	"time"

	"govmm/devices/tap"
	"govmm/devices/tap/taptest"
	"govmm/devices/virtio"
	"govmm/devices/virtio/virtiotest"
)

// The device and the TAP package frame packets the same way.
func TestHeaderSizeMatchesTAP(t *testing.T) {
	if hdrSize != tap.VnetHdrSize {
		t.Fatalf("virtio-net header %d bytes, TAP's %d", hdrSize, tap.VnetHdrSize)
	}
	var _ Backend = (*tap.TAP)(nil)
	var _ Detacher = (*tap.TAP)(nil)
	var _ Offloader = (*tap.TAP)(nil)
}

// The guest's frames come out of a real TAP interface, and frames sent
// into the interface reach the guest: seen from the host through a
// packet socket on the interface, in a network namespace of the test's
// own.
func TestWithTAP(t *testing.T) {
	ns := taptest.NewNetNS(t)
	backend := ns.UpTAP("gvnet0")
	ps := ns.PacketSocket("gvnet0")

	mem := virtiotest.NewMemory(t, memSize)
	logs := &virtiotest.LogRecorder{}
	drv := virtiotest.New(t, mem, 0x1000, memSize)
	dev := New(Config{Backend: backend, MAC: testMAC, Log: logs.Printf})
	m := virtio.NewMMIO(dev, virtio.MMIOConfig{Memory: mem, Interrupt: drv.Interrupt, Log: logs.Printf})
	t.Cleanup(func() {
		m.Close()
		dev.Close()
	})
	drv.Dev = m
	qs := drv.Init(all, 16, 16, 8)
	rx, tx := qs[0], qs[1]
	var rs []*virtiotest.Request
	for range 8 {
		rs = append(rs, rx.Add(virtiotest.Writable(2048)))
	}
	rx.Kick()

	// Guest to host.
	guestIP, hostIP := stdnet.IPv4(10, 0, 0, 2), stdnet.IPv4(10, 0, 0, 1)
	arp := taptest.ARPRequest(testMAC, guestIP, hostIP)
	tx.Submit(virtiotest.Readable(append(make([]byte, hdrSize), arp...)))
	tx.Wait()
	if got, ok := ps.Receive(2*time.Second, func(f []byte) bool { return taptest.IsARPFrom(f, testMAC) }); !ok || !bytes.Equal(got, arp) {
		t.Fatalf("the guest's ARP request did not reach the host (%v):\n%s", ok, logLines(logs))
	}

	// Host to guest. The interface sends frames of its own (IPv6
	// router solicitations), so look for ours among the buffers used.
	reply := taptest.ARPRequest(peerMAC, hostIP, guestIP)
	ps.Send(reply)
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		if i == len(rs) || time.Now().After(deadline) {
			t.Fatalf("the host's frame did not reach the guest:\n%s", logLines(logs))
		}
		u := rx.Wait()
		got := rs[i].Writable(0)[:u.Len]
		if !bytes.Equal(got[:hdrSize], rxHeader(1)) {
			t.Errorf("receive header %x, want only num_buffers = 1", got[:hdrSize])
		}
		if taptest.IsARPFrom(got[hdrSize:], peerMAC) {
			if !bytes.Equal(got[hdrSize:], reply) {
				t.Errorf("received %x, want %x", got[hdrSize:], reply)
			}
			break
		}
	}

	// The announcement goes out of the interface.
	if err := dev.Announce(); err != nil {
		t.Fatal(err)
	}
	rarp := func(f []byte) bool { return len(f) >= 14 && f[12] == 0x80 && f[13] == 0x35 }
	if _, ok := ps.Receive(2*time.Second, rarp); !ok {
		t.Error("no RARP announcement on the interface")
	}
}

// With a real TAP, in a bridge with a second one as the host's side of
// the wire: the offloads the driver accepts are the TAP's (as ethtool
// sees them), a 60 KiB TSO segment from the guest leaves the bridge as
// checksummed frames, and one from the host reaches the guest whole.
func TestOffloadsWithTAP(t *testing.T) {
	ns := taptest.NewNetNS(t)
	ns.IP("link", "add", "gvbr0", "type", "bridge")
	backend := ns.UpTAP("gvnet0")
	host := ns.UpTAP("gvnet1") // offloads off: the kernel segments for it
	for _, name := range []string{"gvnet0", "gvnet1"} {
		ns.IP("link", "set", name, "master", "gvbr0")
	}
	ns.IP("link", "set", "gvbr0", "up")

	mem := virtiotest.NewMemory(t, memSize)
	logs := &virtiotest.LogRecorder{}
	drv := virtiotest.New(t, mem, 0x1000, memSize)
	dev := New(Config{Backend: backend, MAC: testMAC, Log: logs.Printf})
	m := virtio.NewMMIO(dev, virtio.MMIOConfig{Memory: mem, Interrupt: drv.Interrupt, Log: logs.Printf})
	t.Cleanup(func() {
		m.Close()
		dev.Close()
	})
	drv.Dev = m
	if got := drv.DeviceFeatures() & allOffloads; got != allOffloads {
		t.Fatalf("offloads offered %#x, want %#x", got, uint64(allOffloads))
	}
	qs := drv.Init(all, 64, 16, 8)
	rx, tx := qs[0], qs[1]
	if csum, tso := ns.Offloads("gvnet0"); !csum || !tso {
		t.Errorf("TAP offloads after DRIVER_OK: checksum %v, TSO %v; want both", csum, tso)
	}

	// Guest to host: segments of at most gso_size, each checksummed.
	const payload, mss = 60000, 1448
	frame, start, off := taptest.TCPv4(testMAC, peerMAC, payload)
	hdr := tsoHeader(start, off, mss)
	tx.Submit(virtiotest.Readable(append(hdr.bytes(), frame...)))
	tx.Wait()
	isTCP := func(f []byte, from stdnet.HardwareAddr) bool {
		return len(f) >= 54 && bytes.Equal(f[6:12], from) && f[23] == 6
	}
	buf := make([]byte, 1<<17)
	host.SetReadDeadline(time.Now().Add(5 * time.Second))
	for n := 0; n < payload; {
		k, err := host.ReadFrame(buf)
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v\n%s", n, payload, err, logLines(logs))
		}
		seg := buf[hdrSize:k]
		if !isTCP(seg, testMAC) {
			continue
		}
		if len(seg)-54 > mss || !taptest.TCPv4ChecksumOK(seg) {
			t.Fatalf("segment of %d bytes, checksum ok %v", len(seg)-54, taptest.TCPv4ChecksumOK(seg))
		}
		n += len(seg) - 54
	}

	// Host to guest: the kernel hands the segment over whole, and the
	// guest gets it in merged buffers behind the TAP's header.
	byHead := map[uint16]*virtiotest.Request{}
	for range 60 {
		r := rx.Add(virtiotest.Writable(4096))
		byHead[r.Head] = r
	}
	rx.Kick()
	next := func() []byte {
		u := rx.Wait()
		return byHead[u.ID].Writable(0)[:u.Len]
	}
	frame, _, _ = taptest.TCPv4(peerMAC, testMAC, payload)
	if err := host.WriteFrame(append(hdr.bytes(), frame...)); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; {
		if i >= len(byHead) {
			t.Fatalf("the host's segment did not reach the guest:\n%s", logLines(logs))
		}
		got := next()
		nb := int(binary.LittleEndian.Uint16(got[hdrNumBuffers:]))
		for range nb - 1 {
			got = append(got, next()...)
		}
		i += nb
		if !isTCP(got[hdrSize:], peerMAC) {
			continue // the interfaces' own frames
		}
		h := parseHeader(got)
		if !bytes.Equal(got[hdrSize:], frame) || h.gsoType != gsoTCPv4 || h.gsoSize != mss || h.flags&hdrFlagNeedsCsum == 0 {
			t.Errorf("guest got %d bytes with header %+v; want the %d-byte frame, TCPV4, gso_size %d, NEEDS_CSUM", len(got)-hdrSize, h, len(frame), mss)
		}
		break
	}

	drv.Reset()
	if csum, tso := ns.Offloads("gvnet0"); csum || tso {
		t.Errorf("TAP offloads after reset: checksum %v, TSO %v; want neither", csum, tso)
	}
}
