package linux

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"govmm/devices/tap/taptest"
)

// Network scenarios (virtio-net on a TAP, issue 5). The CLI contract:
//
//	govmm run --net tap:NAME[,mac=...] --cmdline govmm.ip=ADDR/PREFIX ...
//
// The test host plays a small network, with network namespaces as hosts:
//
//	 guest 10.0.2.15 ── virtio-net ── gvtap0 ─┐
//	                                          br0 10.0.2.1 (the test host)
//	 client namespace 10.0.2.100 ── v0 ═ veth0 ┘
//
// govmm creates the TAP (multi-queue) if it does not exist; the test adds
// it to the bridge once govmm runs. The client is a namespace of its own,
// reached only through the bridge. In the guest, `/init echo-server :7`
// answers every byte.

const (
	tapName    = "gvtap0"
	bridgeName = "br0"
	hostAddr   = "10.0.2.1"
	guestAddr  = "10.0.2.15"
	clientAddr = "10.0.2.100"
	echoPort   = "7"
)

// setUpNetwork builds the bridge and the client namespace, removed when
// the test ends, and returns the client.
func setUpNetwork(t testing.TB) *taptest.NetNS {
	t.Helper()
	hostCmd(t, "modprobe", "-a", "tun", "bridge", "veth")
	hostCmd(t, "ip", "link", "add", bridgeName, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", bridgeName).Run() })
	hostCmd(t, "ip", "addr", "add", hostAddr+"/24", "dev", bridgeName)
	hostCmd(t, "ip", "link", "set", bridgeName, "up")

	client := taptest.NewNetNS(t)
	// busybox's ip names a new veth pair's peer "veth0" whatever it is
	// told; that end moves to the test host's namespace (PID 1's).
	client.IP("link", "add", "v0", "type", "veth")
	client.IP("link", "set", "veth0", "netns", "1")
	// Deleting one end deletes the pair; the namespace's own teardown
	// would, but only later, in the kernel's own time.
	t.Cleanup(func() { exec.Command("ip", "link", "del", "veth0").Run() })
	hostCmd(t, "ip", "link", "set", "veth0", "master", bridgeName, "up")
	client.IP("addr", "add", clientAddr+"/24", "dev", "v0")
	client.IP("link", "set", "v0", "up")
	client.IP("link", "set", "lo", "up")
	return client
}

// hostCmd runs a command in the test host and fails the test if it fails.
func hostCmd(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// bootNetGuest boots a guest with a NIC on tapName at guestAddr, puts the
// TAP on the bridge and starts the echo server in the guest.
func bootNetGuest(t testing.TB, e env, name string, extra ...string) *vm {
	t.Helper()
	args := append([]string{"run", "--modules", e.modules, "--net", "tap:" + tapName,
		"--cmdline", "govmm.ip=" + guestAddr + "/24"}, extra...)
	v := bootToShell(t, name, e.govmm, append(args, e.kernel)...)
	v.printedAtBoot("eth0 configured: " + guestAddr + "/24")
	startEchoServer(t, v)
	return v
}

// startEchoServer bridges the guest's TAP and starts the guest's echo
// server.
func startEchoServer(t testing.TB, v *vm) {
	t.Helper()
	hostCmd(t, "ip", "link", "set", tapName, "master", bridgeName, "up")
	v.typeLine("/init echo-server :" + echoPort + " &")
	v.expect("echo-server: listening", replyTimeout)
}

// dialEcho connects from the client namespace to the guest's echo server,
// retrying while ARP and the bridge settle. (The socket belongs to the
// namespace it was made in, whichever thread uses it later.)
func dialEcho(t testing.TB, client *taptest.NetNS) net.Conn {
	t.Helper()
	deadline := time.Now().Add(replyTimeout)
	for {
		var c net.Conn
		var err error
		client.Run(func() { c, err = net.DialTimeout("tcp", net.JoinHostPort(guestAddr, echoPort), 3*time.Second) })
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("connecting to the guest's echo server: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestNetPingAndTCPEcho: the client namespace pings the guest and the
// guest the test host, through virtio-net, the TAP and the bridge; a TCP
// connection from the client to the guest's echo server carries 200
// requests, every one answered in order.
func TestNetPingAndTCPEcho(t *testing.T) {
	e := needEnv(t)
	client := setUpNetwork(t)
	v := bootNetGuest(t, e, "")

	var out []byte
	var err error
	client.Run(func() { out, err = exec.Command("ping", "-c", "3", "-W", "5", guestAddr).CombinedOutput() })
	if err != nil || !strings.Contains(string(out), "3 packets received") {
		t.Errorf("ping %s from the client namespace: %v\n%s", guestAddr, err, out)
	}
	v.typeLine("ping -c 2 -W 5 " + hostAddr + " | grep -o '2 packets received' | sed 's/ /_/g'")
	v.expect("2_packets_received", replyTimeout)

	c := dialEcho(t, client)
	defer c.Close()
	r := bufio.NewReader(c)
	for i := range 200 {
		c.SetDeadline(time.Now().Add(replyTimeout))
		req := fmt.Sprintf("request %d\n", i)
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != req {
			t.Fatalf("request %d: answer %q, %v", i, got, err)
		}
	}
	c.Close()

	// The TAP disappears under the running guest: govmm says so and goes
	// on, and so does the guest.
	hostCmd(t, "ip", "link", "del", tapName)
	if _, err := v.stderr.expect(regexp.MustCompile(`(?i)`+tapName+`.*(gone|deleted|no such device|not found|removed)|(?i)tap.*(gone|deleted|removed)`), replyTimeout, v.done); err != nil {
		t.Errorf("govmm said nothing on stderr when its TAP was deleted: %v", err)
	}
	v.typeLine("echo $((6*7))-no-tap")
	v.expect("42-no-tap", replyTimeout)
	v.typeLine("poweroff")
	if status := v.wait(exitTimeout); status != 0 {
		t.Fatalf("govmm exited with status %d after poweroff, want 0", status)
	}
}

// TestMigrateKeepsTCPConnection: the client keeps one TCP connection to
// the guest's echo server and sends a request every 5 ms while the guest
// migrates to another govmm on the same TAP. Every request must be
// answered, in order, over the same connection; the test reports the
// longest time the client waited for an answer (the downtime the client
// saw).
func TestMigrateKeepsTCPConnection(t *testing.T) {
	migrateWithTCPClient(t, 0)
}

// migrateWithTCPClient runs TestMigrateKeepsTCPConnection, with the
// dirtier rewriting dirtierMiB of the guest's memory if not 0, and returns
// the longest wait the client saw and the migration's own downtime.
func migrateWithTCPClient(t testing.TB, dirtierMiB int) (longest, downtime time.Duration) {
	t.Helper()
	e := needEnv(t)
	client := setUpNetwork(t)
	api := filepath.Join(t.TempDir(), "src.sock")
	src := bootNetGuest(t, e, "src", "--api", api)
	waitAPI(t, src, api)
	if dirtierMiB > 0 {
		src.typeLine(fmt.Sprintf("/init dirtier --mib %d --heartbeat 4096 &", dirtierMiB))
		src.expect("dirtier: dirtying", replyTimeout)
	}

	c := dialEcho(t, client)
	defer c.Close()
	type result struct {
		n       int
		longest time.Duration
		err     error
	}
	stop := make(chan struct{})
	done := make(chan result, 1)
	go func() {
		r := bufio.NewReader(c)
		var res result
		for {
			select {
			case <-stop:
				done <- res
				return
			default:
			}
			req := fmt.Sprintf("request %d\n", res.n)
			start := time.Now()
			c.SetDeadline(start.Add(time.Minute))
			if _, err := c.Write([]byte(req)); err != nil {
				res.err = fmt.Errorf("request %d: %w", res.n, err)
				done <- res
				return
			}
			got, err := r.ReadString('\n')
			if err != nil || got != req {
				res.err = fmt.Errorf("request %d: answer %q, %v", res.n, got, err)
				done <- res
				return
			}
			res.longest = max(res.longest, time.Since(start))
			res.n++
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second) // some traffic before

	addr := freeAddr(t)
	dstAPI := filepath.Join(t.TempDir(), "dst.sock")
	dst := startReceiver(t, e, "dst", addr, "--api", dstAPI)
	rep := migrate(t, e, api, addr)
	if status := src.wait(exitTimeout); status != 0 {
		t.Errorf("source govmm exited with status %d after the migration, want 0", status)
	}
	time.Sleep(3 * time.Second) // and some after, on the destination
	close(stop)
	res := <-done
	t.Logf("client: %d requests answered over one TCP connection; longest wait %v (migration downtime %v)", res.n, res.longest.Round(time.Millisecond), rep.Downtime.Round(time.Millisecond))
	if res.err != nil {
		// Is it the network, or the whole guest? A guest that stopped
		// answering its shell too is the test host's known stall under
		// dirty logging (see the Makefile); its vCPUs show where it is.
		dst.api = dstAPI
		dst.typeLine("echo $((6*7))-alive")
		if _, err := dst.out.expect(literal("42-alive"), replyTimeout, dst.done); err != nil {
			t.Logf("the guest's shell does not answer either (%v): the whole guest stopped, not just its network", err)
			dst.diagnoseHang()
		} else {
			t.Logf("the guest's shell answers: its network stopped")
		}
		t.Fatalf("the TCP connection did not survive the migration: %v", res.err)
	}
	// The guest answers on the destination, from its shell too.
	dst.typeLine("echo $((6*7))-dest")
	dst.expect("42-dest", replyTimeout)
	dst.typeLine("poweroff")
	if status := dst.wait(exitTimeout); status != 0 {
		t.Errorf("destination govmm exited with status %d after poweroff, want 0", status)
	}
	return res.longest, rep.Downtime
}
