package linux

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Network scenarios (virtio-net on a TAP, issue 5). The CLI contract:
//
//	govmm run --net tap:NAME[,mac=...] --cmdline govmm.ip=ADDR/PREFIX ...
//
// govmm creates the TAP (multi-queue) if it does not exist; the test host
// gives the TAP's host side an address and is the guest's peer: the
// "client" of these scenarios is the test host itself, on the other end of
// the TAP. In the guest, `/init echo-server :7` answers every byte.

const (
	tapName   = "gvtap0"
	hostAddr  = "10.0.2.1"
	guestAddr = "10.0.2.15"
	echoPort  = "7"
)

// hostCmd runs a command in the test host and fails the test if it fails.
func hostCmd(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// bootNetGuest boots a guest with a NIC on tapName at guestAddr, gives the
// TAP's host side hostAddr, and starts the echo server in the guest.
func bootNetGuest(t testing.TB, e env, name string, extra ...string) *vm {
	t.Helper()
	hostCmd(t, "modprobe", "tun")
	args := append([]string{"run", "--modules", e.modules, "--net", "tap:" + tapName,
		"--cmdline", "govmm.ip=" + guestAddr + "/24"}, extra...)
	v := bootToShell(t, name, e.govmm, append(args, e.kernel)...)
	v.printedAtBoot("eth0 configured: " + guestAddr + "/24")
	hostCmd(t, "ip", "addr", "add", hostAddr+"/24", "dev", tapName)
	hostCmd(t, "ip", "link", "set", tapName, "up")
	v.typeLine("/init echo-server :" + echoPort + " &")
	v.expect("echo-server: listening", replyTimeout)
	return v
}

// dialEcho connects to the guest's echo server, retrying while ARP and the
// TAP settle.
func dialEcho(t testing.TB) net.Conn {
	t.Helper()
	deadline := time.Now().Add(replyTimeout)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(guestAddr, echoPort), 3*time.Second)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("connecting to the guest's echo server: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestNetPingAndTCPEcho: the host pings the guest and the guest the host
// through virtio-net and the TAP; a TCP connection to the guest's echo
// server carries 200 requests, every one answered in order.
func TestNetPingAndTCPEcho(t *testing.T) {
	e := needEnv(t)
	v := bootNetGuest(t, e, "")

	out, err := exec.Command("ping", "-c", "3", "-W", "5", guestAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3 packets received") {
		t.Errorf("ping %s from the host: %v\n%s", guestAddr, err, out)
	}
	v.typeLine("ping -c 2 -W 5 " + hostAddr + " | grep -o '2 packets received' | sed 's/ /_/g'")
	v.expect("2_packets_received", replyTimeout)

	c := dialEcho(t)
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
	v.typeLine("poweroff")
	if status := v.wait(exitTimeout); status != 0 {
		t.Fatalf("govmm exited with status %d after poweroff, want 0", status)
	}
}

// TestMigrateKeepsTCPConnection: the host keeps one TCP connection to the
// guest's echo server and sends a request every 5 ms while the guest
// migrates to another govmm on the same TAP. Every request must be
// answered, in order, over the same connection; the test reports the
// longest time the client waited for an answer (the downtime the client
// saw).
func TestMigrateKeepsTCPConnection(t *testing.T) {
	e := needEnv(t)
	api := filepath.Join(t.TempDir(), "src.sock")
	src := bootNetGuest(t, e, "src", "--api", api)
	waitAPI(t, src, api)

	c := dialEcho(t)
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
	dst := startReceiver(t, e, "dst", addr)
	rep := migrate(t, e, api, addr)
	if status := src.wait(exitTimeout); status != 0 {
		t.Errorf("source govmm exited with status %d after the migration, want 0", status)
	}
	time.Sleep(3 * time.Second) // and some after, on the destination
	close(stop)
	res := <-done
	t.Logf("client: %d requests answered over one TCP connection; longest wait %v (migration downtime %v)", res.n, res.longest.Round(time.Millisecond), rep.Downtime.Round(time.Millisecond))
	if res.err != nil {
		t.Fatalf("the TCP connection did not survive the migration: %v", res.err)
	}
	// The guest answers on the destination, from its shell too.
	dst.typeLine("echo $((6*7))-dest")
	dst.expect("42-dest", replyTimeout)
	dst.typeLine("poweroff")
	if status := dst.wait(exitTimeout); status != 0 {
		t.Errorf("destination govmm exited with status %d after poweroff, want 0", status)
	}
}
