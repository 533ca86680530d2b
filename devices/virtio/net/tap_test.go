package net

import (
	"bytes"
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
