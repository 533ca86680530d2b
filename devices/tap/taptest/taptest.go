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
	"unsafe"

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

// Offloads reports two of the interface's features as `ethtool -k` shows
// them: tx checksumming and TCP segmentation. On a TAP they are the
// offloads set with TUNSETOFFLOAD (tun_set_offload turns TUN_F_CSUM into
// NETIF_F_HW_CSUM and TUN_F_TSO4/6 into NETIF_F_TSO/TSO6: the work the
// interface may leave to its reader). It asks with the legacy SIOCETHTOOL
// commands ETHTOOL_GTXCSUM and ETHTOOL_GTSO, which need no ethtool.
func (n *NetNS) Offloads(ifname string) (csum, tso bool) {
	n.tb.Helper()
	var err error
	n.Run(func() {
		var fd int
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return
		}
		defer unix.Close(fd)
		if csum, err = ethtoolGet(fd, ifname, unix.ETHTOOL_GTXCSUM); err != nil {
			return
		}
		tso, err = ethtoolGet(fd, ifname, unix.ETHTOOL_GTSO)
	})
	if err != nil {
		n.tb.Fatalf("SIOCETHTOOL on %s: %v", ifname, err)
	}
	return csum, tso
}

// ethtoolGet runs one ETHTOOL_G* command that answers a struct
// ethtool_value.
func ethtoolGet(fd int, ifname string, cmd uint32) (bool, error) {
	value := struct{ cmd, data uint32 }{cmd: cmd}
	// struct ifreq with ifr_data pointing at the value: 40 bytes.
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(&value)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return false, errno
	}
	return value.data != 0, nil
}

// TCPv4 is a TCP/IPv4 frame for segmentation tests: from port 4000 to
// port 5000, sequence number 1000, with payload bytes of a pattern, and
// its TCP checksum left partial (the pseudo-header's sum, as Linux leaves
// it for a NIC, CHECKSUM_PARTIAL), to be finished by whoever gets it.
// CsumStart and CsumOffset say where, for a virtio_net_hdr.
func TCPv4(src, dst net.HardwareAddr, payload int) (frame []byte, csumStart, csumOffset uint16) {
	const ipLen, tcpLen = 20, 20
	f := make([]byte, 14+ipLen+tcpLen+payload)
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := f[14 : 14+ipLen]
	ip[0] = 0x45 // version 4, 5 words
	binary.BigEndian.PutUint16(ip[2:], uint16(ipLen+tcpLen+payload))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8], ip[9] = 64, unix.IPPROTO_TCP
	copy(ip[12:], net.IPv4(10, 0, 0, 2).To4())
	copy(ip[16:], net.IPv4(10, 0, 0, 1).To4())
	binary.BigEndian.PutUint16(ip[10:], ^checksum(0, ip))
	tcp := f[14+ipLen:]
	binary.BigEndian.PutUint16(tcp[0:], 4000)
	binary.BigEndian.PutUint16(tcp[2:], 5000)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	tcp[12] = 5 << 4              // data offset: 5 words
	tcp[13] = 0x18                // PSH, ACK
	tcp[14], tcp[15] = 0xff, 0xff // window
	for i := range payload {
		tcp[tcpLen+i] = byte(i * 7)
	}
	binary.BigEndian.PutUint16(tcp[16:], pseudoSum(ip, len(tcp)))
	return f, 14 + ipLen, 16
}

// pseudoSum is the folded sum of the TCP/IPv4 pseudo-header for a TCP
// segment of n bytes (RFC 793).
func pseudoSum(ip []byte, n int) uint16 {
	var p [12]byte
	copy(p[:], ip[12:20])
	p[9] = unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(p[10:], uint16(n))
	return checksum(0, p[:])
}

// checksum adds b to sum in ones' complement (RFC 1071), folded.
func checksum(sum uint32, b []byte) uint16 {
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// TCPv4ChecksumOK reports whether a TCP/IPv4 frame (with a 20-byte IP
// header, as TCPv4 makes) has a complete, correct TCP checksum.
func TCPv4ChecksumOK(frame []byte) bool {
	ip, tcp := frame[14:34], frame[34:]
	return checksum(uint32(pseudoSum(ip, len(tcp))), tcp) == 0xffff
}
