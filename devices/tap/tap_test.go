package tap_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/devices/tap"
	"govmm/devices/tap/taptest"
)

var (
	hostMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	guestMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	hostIP   = net.IPv4(10, 0, 0, 1)
	guestIP  = net.IPv4(10, 0, 0, 2)
)

// withHeader puts an all-zero virtio_net_hdr_v1 in front of frame: no
// checksum or segmentation work asked of the kernel.
func withHeader(frame []byte) []byte {
	return append(make([]byte, tap.VnetHdrSize), frame...)
}

// readMatching reads frames from t until one matches, for up to timeout.
// A fresh interface sends frames of its own (IPv6 router solicitations,
// MLD reports), which are skipped.
func readMatching(t *testing.T, q *tap.TAP, timeout time.Duration, match func([]byte) bool) ([]byte, error) {
	t.Helper()
	if err := q.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	defer q.SetReadDeadline(time.Time{})
	buf := make([]byte, 65536+tap.VnetHdrSize)
	for {
		n, err := q.ReadFrame(buf)
		if err != nil {
			return nil, err
		}
		if n >= tap.VnetHdrSize && match(buf[tap.VnetHdrSize:n]) {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

func TestBadNames(t *testing.T) {
	for _, c := range []struct{ name, want string }{
		{"a-name-that-is-too-long", "at most 15 bytes"},
		{"tap/0", "cannot contain"},
		{"tap 0", "cannot contain"},
		{"..", "not a valid"},
	} {
		if _, err := tap.Open(c.name); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%q) = %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

// A frame written to the TAP arrives on the interface, and a frame sent
// out of the interface can be read from the TAP, with a zero header in
// front since no offloads are enabled.
func TestExchangeFrames(t *testing.T) {
	ns := taptest.NewNetNS(t)
	q := ns.UpTAP("gvtap0")
	if q.Name() != "gvtap0" {
		t.Errorf("Name() = %q", q.Name())
	}
	ps := ns.PacketSocket("gvtap0")

	// Guest to host: the TAP's descriptor is the wire.
	arp := taptest.ARPRequest(guestMAC, guestIP, hostIP)
	if err := q.WriteFrame(withHeader(arp)); err != nil {
		t.Fatal(err)
	}
	got, ok := ps.Receive(2*time.Second, func(f []byte) bool { return taptest.IsARPFrom(f, guestMAC) })
	if !ok || !bytes.Equal(got, arp) {
		t.Fatalf("frame written to the TAP: received %v %x, want %x", ok, got, arp)
	}

	// Host to guest. io.Writer works too.
	out := taptest.ARPRequest(hostMAC, hostIP, guestIP)
	ps.Send(out)
	frame, err := readMatching(t, q, 2*time.Second, func(f []byte) bool { return taptest.IsARPFrom(f, hostMAC) })
	if err != nil {
		t.Fatalf("frame sent out of the interface not read from the TAP: %v", err)
	}
	hdr := frame[:tap.VnetHdrSize]
	// flags may say DATA_VALID (2); nothing else, since no offloads
	// were enabled: no NEEDS_CSUM, no segmentation.
	if hdr[0]&^2 != 0 || !bytes.Equal(hdr[1:], make([]byte, tap.VnetHdrSize-1)) {
		t.Errorf("header %x: want zeros (no offloads)", hdr)
	}
	if !bytes.Equal(frame[tap.VnetHdrSize:], out) {
		t.Errorf("frame %x, want %x", frame[tap.VnetHdrSize:], out)
	}
	if n, err := q.Write(withHeader(arp)); err != nil || n != len(arp)+tap.VnetHdrSize {
		t.Errorf("Write = %d, %v", n, err)
	}
}

// With no name, the kernel picks one.
func TestKernelChosenName(t *testing.T) {
	ns := taptest.NewNetNS(t)
	q, err := ns.OpenTAP("")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(q.Name(), "tap") {
		t.Errorf("Name() = %q, want tapN", q.Name())
	}
	ns.IP("link", "show", q.Name())
}

// Names that belong to something else than a multi-queue TAP (loopback, a
// TAP made without multi_queue, a TUN) are refused with an explanation.
func TestNotATAP(t *testing.T) {
	ns := taptest.NewNetNS(t)
	ns.IP("tuntap", "add", "dev", "gvsingle", "mode", "tap")
	ns.IP("tuntap", "add", "dev", "gvtun", "mode", "tun", "multi_queue")
	for _, name := range []string{"lo", "gvsingle", "gvtun"} {
		_, err := ns.OpenTAP(name)
		if err == nil || !strings.Contains(err.Error(), "not a multi-queue TAP") || !strings.Contains(err.Error(), "multi_queue") {
			t.Errorf("Open(%q) = %v, want a clear refusal", name, err)
		}
	}
	// A persistent multi-queue TAP made by ip is fine, and outlives us.
	ns.IP("tuntap", "add", "dev", "gvpersist", "mode", "tap", "multi_queue")
	q, err := ns.OpenTAP("gvpersist")
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
	ns.IP("link", "show", "gvpersist")
}

// Without CAP_NET_ADMIN, the error says so. Capabilities are per thread
// in Linux: this drops it on a thread of its own, which then exits.
func TestNoPermission(t *testing.T) {
	taptest.Need(t)
	errc := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		q, err := tap.Open(fmt.Sprintf("gvperm%d", os.Getpid()%100000))
		if err == nil {
			q.Close()
			err = errors.New("Open succeeded without CAP_NET_ADMIN")
		}
		errc <- err
	}()
	err := <-errc
	if !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Errorf("Open without CAP_NET_ADMIN: %v", err)
	}
}

// Two queues on one TAP: the kernel sends frames only to attached ones.
// This is how a migration moves the guest's traffic from the source's
// queue to the destination's.
func TestDetachAttach(t *testing.T) {
	ns := taptest.NewNetNS(t)
	source := ns.UpTAP("gvtap0")
	dest, err := ns.OpenTAP("gvtap0", tap.Detached())
	if err != nil {
		t.Fatal(err)
	}
	ps := ns.PacketSocket("gvtap0")
	n := byte(0)
	// deliver sends a frame out of the interface and reports whether
	// want received it and other did not.
	deliver := func(what string, want, other *tap.TAP) {
		t.Helper()
		n++
		ip := net.IPv4(10, 0, 1, n)
		ps.Send(taptest.ARPRequest(hostMAC, hostIP, ip))
		match := func(f []byte) bool { return taptest.IsARPFrom(f, hostMAC) && net.IP(f[38:42]).Equal(ip) }
		if _, err := readMatching(t, want, 2*time.Second, match); err != nil {
			t.Errorf("%s: the attached queue did not get the frame: %v", what, err)
		}
		if _, err := readMatching(t, other, 50*time.Millisecond, match); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: the detached queue got the frame (%v)", what, err)
		}
	}
	deliver("destination opened detached", source, dest)

	// The switch-over: the destination attaches, the source detaches.
	if err := dest.Attach(); err != nil {
		t.Fatal(err)
	}
	if err := source.Detach(); err != nil {
		t.Fatal(err)
	}
	deliver("after the switch-over", dest, source)
	if err := source.Detach(); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	// A detached queue still writes.
	if err := source.WriteFrame(withHeader(taptest.ARPRequest(guestMAC, guestIP, hostIP))); err != nil {
		t.Errorf("write on a detached queue: %v", err)
	}

	// The migration failed: the source takes over again.
	if err := source.Attach(); err != nil {
		t.Fatal(err)
	}
	if err := dest.Detach(); err != nil {
		t.Fatal(err)
	}
	deliver("back to the source", source, dest)
}

// Close wakes a read that waits for a frame.
func TestCloseUnblocksRead(t *testing.T) {
	ns := taptest.NewNetNS(t)
	q := ns.UpTAP("gvtap0")
	errc := make(chan error, 1)
	go func() {
		_, err := readMatching(t, q, time.Minute, func([]byte) bool { return false })
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	q.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not unblock the read")
	}
}

// An interface deleted under the TAP: a waiting read returns, and every
// operation fails with ErrDeleted rather than hanging or crashing.
func TestInterfaceDeleted(t *testing.T) {
	ns := taptest.NewNetNS(t)
	q := ns.UpTAP("gvtap0")
	errc := make(chan error, 1)
	go func() {
		_, err := readMatching(t, q, time.Minute, func([]byte) bool { return false })
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	ns.IP("link", "del", "gvtap0")
	select {
	case err := <-errc:
		if !errors.Is(err, tap.ErrDeleted) || !strings.Contains(err.Error(), "gvtap0") {
			t.Errorf("read when the interface went: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("deleting the interface did not unblock the read")
	}
	if err := q.WriteFrame(withHeader(taptest.ARPRequest(guestMAC, guestIP, hostIP))); !errors.Is(err, tap.ErrDeleted) {
		t.Errorf("write after deletion: %v", err)
	}
	if err := q.Detach(); !errors.Is(err, tap.ErrDeleted) {
		t.Errorf("Detach after deletion: %v", err)
	}
	if err := q.Close(); err != nil {
		t.Errorf("Close after deletion: %v", err)
	}
}

// Writing to an interface that is down fails, saying so.
func TestInterfaceDown(t *testing.T) {
	ns := taptest.NewNetNS(t)
	q, err := ns.OpenTAP("gvtap0")
	if err != nil {
		t.Fatal(err)
	}
	err = q.WriteFrame(withHeader(taptest.ARPRequest(guestMAC, guestIP, hostIP)))
	if err == nil || !strings.Contains(err.Error(), "is down") {
		t.Errorf("write to a down TAP: %v", err)
	}
}

// Open finds out which offloads the kernel supports, and leaves them off;
// SetOffloads turns them on and off for the interface, as ethtool sees.
func TestOffloads(t *testing.T) {
	ns := taptest.NewNetNS(t)
	q := ns.UpTAP("gvtap0")
	all := tap.OffloadCsum | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN
	if got := q.SupportedOffloads(); got != all {
		t.Errorf("SupportedOffloads() = %#x, want %#x (any kernel since 2.6.27)", got, all)
	}
	for i, c := range []struct {
		set       tap.Offloads
		csum, tso bool
	}{
		{0, false, false}, // as opened
		{all, true, true},
		{tap.OffloadCsum, true, false},
		{0, false, false},
	} {
		if i > 0 {
			if err := q.SetOffloads(c.set); err != nil {
				t.Fatal(err)
			}
		}
		if csum, tso := ns.Offloads("gvtap0"); csum != c.csum || tso != c.tso {
			t.Errorf("offloads %#x: tx checksumming %v, TSO %v; want %v, %v", c.set, csum, tso, c.csum, c.tso)
		}
	}
	// tun_set_offload refuses TSO without the checksum offload.
	if err := q.SetOffloads(tap.OffloadTSO4); err == nil || !errors.Is(err, unix.EINVAL) {
		t.Errorf("SetOffloads(TSO4 alone) = %v, want EINVAL", err)
	}
}

// A 60 KiB TCP segment written with gso_type TCPV4 crosses a bridge to
// another TAP: segmented and checksummed by the kernel if that TAP's
// offloads are off, handed over whole with its header if they are on.
// This is the path of a guest's TSO frame to a guest on the same bridge.
func TestSegmentationOffload(t *testing.T) {
	ns := taptest.NewNetNS(t)
	ns.IP("link", "add", "gvbr0", "type", "bridge")
	in := ns.UpTAP("gvtap0")
	out := ns.UpTAP("gvtap1")
	for _, name := range []string{"gvtap0", "gvtap1"} {
		ns.IP("link", "set", name, "master", "gvbr0")
	}
	ns.IP("link", "set", "gvbr0", "up")

	const payload, mss = 60000, 1448
	frame, start, off := taptest.TCPv4(guestMAC, hostMAC, payload)
	hdr := make([]byte, tap.VnetHdrSize)
	hdr[0] = 1                                 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	hdr[1] = 1                                 // VIRTIO_NET_HDR_GSO_TCPV4
	binary.LittleEndian.PutUint16(hdr[2:], 54) // hdr_len: Ethernet, IP, TCP
	binary.LittleEndian.PutUint16(hdr[4:], mss)
	binary.LittleEndian.PutUint16(hdr[6:], start)
	binary.LittleEndian.PutUint16(hdr[8:], off)
	isOurs := func(f []byte) bool {
		return len(f) >= 54 && string(f[6:12]) == string(guestMAC) && f[23] == unix.IPPROTO_TCP
	}

	// Offloads off: segments of at most mss bytes, each checksummed,
	// which together carry the payload.
	if err := in.WriteFrame(append(slices.Clone(hdr), frame...)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, payload)
	for n := 0; n < payload; {
		f, err := readMatching(t, out, 2*time.Second, isOurs)
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", n, payload, err)
		}
		seg := f[tap.VnetHdrSize:]
		data := seg[54:]
		if len(data) > mss || f[1] != 0 || !taptest.TCPv4ChecksumOK(seg) {
			t.Fatalf("segment of %d bytes, gso_type %d, checksum ok %v", len(data), f[1], taptest.TCPv4ChecksumOK(seg))
		}
		n += copy(got[binary.BigEndian.Uint32(seg[38:])-1000:], data)
	}
	if !bytes.Equal(got, frame[54:]) {
		t.Error("the segments do not carry the payload")
	}

	// Offloads on: the frame whole, with the header that says what is
	// left to do.
	if err := out.SetOffloads(tap.OffloadCsum | tap.OffloadTSO4); err != nil {
		t.Fatal(err)
	}
	if err := in.WriteFrame(append(slices.Clone(hdr), frame...)); err != nil {
		t.Fatal(err)
	}
	f, err := readMatching(t, out, 2*time.Second, isOurs)
	if err != nil {
		t.Fatal(err)
	}
	h := f[:tap.VnetHdrSize]
	if !bytes.Equal(f[tap.VnetHdrSize:], frame) || h[0]&1 == 0 || h[1] != 1 ||
		binary.LittleEndian.Uint16(h[4:]) != mss || binary.LittleEndian.Uint16(h[6:]) != start || binary.LittleEndian.Uint16(h[8:]) != off {
		t.Errorf("read %d bytes with header %x; want the %d-byte frame, NEEDS_CSUM, TCPV4, gso_size %d, csum %d+%d",
			len(f)-tap.VnetHdrSize, h, len(frame), mss, start, off)
	}
}
