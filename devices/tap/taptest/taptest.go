// Package taptest runs network tests in a network namespace of their own,
// so that the TAP interfaces they create are invisible to the host and
// vanish with the test, and gives them a raw packet socket to see the
// other side of a TAP: what the host receives from it and sends into it.
//
// Linux keeps network namespaces per thread. A NetNS is a goroutine
// locked to a thread that has left the host's namespace (unshare
// CLONE_NEWNET); whatever must happen inside, opening /dev/net/tun,
// creating a socket, running ip, runs on that thread through NetNS.Run.
// Descriptors opened there stay in the namespace wherever they are used
// afterwards. The thread is never given back to Go's scheduler: when the
// test ends its goroutine exits and the runtime ends the thread, and the
// namespace goes once the last descriptor in it is closed.
package taptest

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/devices/tap"
	"govmm/tests/tools"
)

// Need ends the test unless TAP devices can be made here: root (for
// CAP_NET_ADMIN and unshare) and /dev/net/tun. It skips, or fails when
// GOVMM_REQUIRE_TOOLS=1 (tests/tools).
func Need(tb testing.TB) {
	tb.Helper()
	var why string
	if os.Geteuid() != 0 {
		why = "TAP tests need root (CAP_NET_ADMIN, and CAP_SYS_ADMIN for a network namespace)"
	} else if _, err := os.Stat(tap.DevicePath); err != nil {
		why = "no " + tap.DevicePath + " (modprobe tun): " + err.Error()
	}
	if why == "" {
		return
	}
	if tools.Required() {
		tb.Fatalf("%s (GOVMM_REQUIRE_TOOLS=1)", why)
	}
	tb.Skip(why)
}

// NetNS is a fresh network namespace holding only a loopback interface.
type NetNS struct {
	tb   testing.TB
	jobs chan func()
}

// NewNetNS makes a namespace that lasts until the end of the test. It
// calls Need first.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	Need(tb)
	tools.Need(tb, "ip", "iproute2")
	n := &NetNS{tb: tb, jobs: make(chan func())}
	started := make(chan error)
	go func() {
		// Never unlocked: the thread is in the wrong namespace for
		// any other goroutine, so it dies with this one.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			started <- err
			return
		}
		close(started)
		for job := range n.jobs {
			job()
		}
	}()
	if err := <-started; err != nil {
		if tools.Required() {
			tb.Fatalf("unshare(CLONE_NEWNET): %v", err)
		}
		tb.Skipf("cannot make a network namespace: unshare(CLONE_NEWNET): %v", err)
	}
	tb.Cleanup(func() { close(n.jobs) })
	return n
}

// Run calls f on the namespace's thread and waits for it.
func (n *NetNS) Run(f func()) {
	done := make(chan struct{})
	n.jobs <- func() {
		defer close(done)
		f()
	}
	<-done
}

// IP runs the ip command inside the namespace, failing the test if it
// fails. (The child process inherits the namespace of the thread that
// forks it.)
func (n *NetNS) IP(args ...string) {
	n.tb.Helper()
	var out []byte
	var err error
	n.Run(func() { out, err = exec.Command("ip", args...).CombinedOutput() })
	if err != nil {
		n.tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// OpenTAP opens a TAP inside the namespace, closed when the test ends.
func (n *NetNS) OpenTAP(name string, opts ...tap.Option) (*tap.TAP, error) {
	var t *tap.TAP
	var err error
	n.Run(func() { t, err = tap.Open(name, opts...) })
	if err == nil {
		n.tb.Cleanup(func() { t.Close() })
	}
	return t, err
}

// UpTAP opens a TAP and brings its interface up.
func (n *NetNS) UpTAP(name string, opts ...tap.Option) *tap.TAP {
	n.tb.Helper()
	t, err := n.OpenTAP(name, opts...)
	if err != nil {
		n.tb.Fatal(err)
	}
	n.IP("link", "set", name, "up")
	return t
}

// PacketSocket is an AF_PACKET socket bound to one interface: it sees
// every frame the interface receives (from the TAP's descriptor) and
// sends frames out of it (to the TAP's descriptor).
type PacketSocket struct {
	tb testing.TB
	fd int
}

// PacketSocket opens a packet socket on the interface ifname, closed when
// the test ends.
func (n *NetNS) PacketSocket(ifname string) *PacketSocket {
	n.tb.Helper()
	var fd int
	var err error
	n.Run(func() {
		var ifi *net.Interface
		if ifi, err = net.InterfaceByName(ifname); err != nil {
			return
		}
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL))); err != nil {
			return
		}
		if err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
		}
	})
	if err != nil {
		n.tb.Fatalf("packet socket on %s: %v", ifname, err)
	}
	n.tb.Cleanup(func() { unix.Close(fd) })
	return &PacketSocket{tb: n.tb, fd: fd}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Send sends an Ethernet frame out of the interface.
func (p *PacketSocket) Send(frame []byte) {
	p.tb.Helper()
	if _, err := unix.Write(p.fd, frame); err != nil {
		p.tb.Fatalf("packet socket send: %v", err)
	}
}

// Receive waits up to timeout for a frame the interface received (not
// one it sent) for which match is true, skipping others (a fresh
// interface sends IPv6 router solicitations and the like). ok is false
// after the timeout.
func (p *PacketSocket) Receive(timeout time.Duration, match func([]byte) bool) (frame []byte, ok bool) {
	p.tb.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, false
		}
		tv := unix.NsecToTimeval(max(left, time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(p.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			p.tb.Fatal(err)
		}
		n, from, err := unix.Recvfrom(p.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			p.tb.Fatalf("packet socket receive: %v", err)
		}
		if ll, _ := from.(*unix.SockaddrLinklayer); ll != nil && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if match(buf[:n]) {
			return append([]byte(nil), buf[:n]...), true
		}
	}
}

// ARPRequest is a broadcast Ethernet frame asking who has targetIP, from
// src at srcIP: the first frame a host sends to a new neighbour.
func ARPRequest(src net.HardwareAddr, srcIP, targetIP net.IP) []byte {
	b := make([]byte, 0, 42)
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff) // destination: broadcast
	b = append(b, src...)
	b = binary.BigEndian.AppendUint16(b, unix.ETH_P_ARP)
	b = binary.BigEndian.AppendUint16(b, 1) // hardware type: Ethernet
	b = binary.BigEndian.AppendUint16(b, unix.ETH_P_IP)
	b = append(b, 6, 4)                     // address lengths
	b = binary.BigEndian.AppendUint16(b, 1) // ARP request
	b = append(b, src...)
	b = append(b, srcIP.To4()...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	return append(b, targetIP.To4()...)
}

// IsARPFrom reports whether frame is an ARP packet sent by src.
func IsARPFrom(frame []byte, src net.HardwareAddr) bool {
	return len(frame) >= 42 && binary.BigEndian.Uint16(frame[12:]) == unix.ETH_P_ARP &&
		string(frame[6:12]) == string(src)
}
