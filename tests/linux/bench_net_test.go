package linux

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkNet is issue 5's benchmark: TCP throughput and request
// round-trip latency between the client namespace and the guest's echo
// server, through virtio-net, the TAP and the bridge, under govmm and
// under QEMU (microvm, virtio-net on virtio-mmio, userspace virtio on a
// TAP: vhost=off), with the same kernel and initramfs. Throughput is
// measured as echo: the client streams echoBytes and reads them back at
// the same time, so every byte crosses the guest's NIC twice. Latency is
// echoRounds sequential 64-byte requests. It prints a table with
// govmm/QEMU ratios; in the test host only the ratios mean something.
func BenchmarkNet(b *testing.B) {
	e := needEnv(b)
	qemu := needQEMU(b)
	initrd := benchInitrd(b, e)
	type result struct {
		mbps      float64
		mean, p99 time.Duration
	}
	results := map[string]result{}
	for _, vmm := range []string{"govmm", "qemu"} {
		b.Run(vmm, func(b *testing.B) {
			client := setUpNetwork(b)
			var v *vm
			if vmm == "govmm" {
				v = bootToShell(b, vmm, e.govmm, "run", "--modules", e.modules, "--net", "tap:"+tapName,
					"--cmdline", "quiet govmm.ip="+guestAddr+"/24", e.kernel)
				startEchoServer(b, v)
			} else {
				v = bootToShell(b, vmm, qemu, append(qemuArgs(e, initrd, "govmm.ip="+guestAddr+"/24"),
					"-netdev", "tap,id=n0,ifname="+tapName+",script=no,downscript=no,vhost=off",
					"-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56")...)
				startEchoServer(b, v)
			}
			c := dialEcho(b, client)
			defer c.Close()
			b.ResetTimer()
			var r result
			r.mbps = echoThroughput(b, c)
			r.mean, r.p99 = echoLatency(b, c)
			b.StopTimer()
			results[vmm] = r
			b.ReportMetric(r.mbps, "echo-MB/s")
			b.ReportMetric(float64(r.mean.Microseconds()), "rtt-mean-us")
			b.ReportMetric(float64(r.p99.Microseconds()), "rtt-p99-us")
			c.Close()
			v.typeLine("poweroff")
			if status := v.wait(exitTimeout); status != 0 {
				b.Errorf("%s exited with status %d after poweroff", vmm, status)
			}
		})
	}
	g, q := results["govmm"], results["qemu"]
	var t strings.Builder
	fmt.Fprintf(&t, "\n%-6s %12s %14s %14s\n", "vmm", "echo MB/s", "RTT mean", "RTT p99")
	fmt.Fprintf(&t, "%-6s %12.1f %14v %14v\n", "govmm", g.mbps, g.mean.Round(time.Microsecond), g.p99.Round(time.Microsecond))
	fmt.Fprintf(&t, "%-6s %12.1f %14v %14v\n", "qemu", q.mbps, q.mean.Round(time.Microsecond), q.p99.Round(time.Microsecond))
	fmt.Fprintf(&t, "%-6s %11.2fx %13.2fx %13.2fx   (latency: lower is better)\n", "ratio",
		ratio(g.mbps, q.mbps), ratio(float64(g.mean), float64(q.mean)), ratio(float64(g.p99), float64(q.p99)))
	b.Log(t.String())
}

const (
	echoBytes  = 32 << 20
	echoRounds = 2000
)

// echoThroughput streams echoBytes to the echo server while reading them
// back, and returns MB/s of payload.
func echoThroughput(b *testing.B, c io.ReadWriter) float64 {
	b.Helper()
	start := time.Now()
	errs := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for sent := 0; sent < echoBytes; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	if _, err := io.CopyN(io.Discard, c, echoBytes); err != nil {
		b.Fatalf("reading the echo: %v", err)
	}
	if err := <-errs; err != nil {
		b.Fatalf("writing to the echo server: %v", err)
	}
	return float64(echoBytes) / 1e6 / time.Since(start).Seconds()
}

// echoLatency times echoRounds sequential 64-byte requests and returns
// the mean and the 99th percentile.
func echoLatency(b *testing.B, c io.ReadWriter) (mean, p99 time.Duration) {
	b.Helper()
	r := bufio.NewReader(c)
	req := strings.Repeat("x", 63) + "\n"
	times := make([]time.Duration, 0, echoRounds)
	var total time.Duration
	for range echoRounds {
		start := time.Now()
		if _, err := io.WriteString(c, req); err != nil {
			b.Fatal(err)
		}
		if got, err := r.ReadString('\n'); err != nil || got != req {
			b.Fatalf("echo answered %q, %v", got, err)
		}
		d := time.Since(start)
		times = append(times, d)
		total += d
	}
	slices.Sort(times)
	return total / echoRounds, times[len(times)*99/100]
}

// BenchmarkNetMigration reports the downtime a TCP client sees while the
// guest migrates (the longest wait for an answer to requests sent every
// 5 ms, over one connection that must survive), for an idle guest and for
// one whose dirtier rewrites 64 MiB, next to the migration's own measure
// of downtime (vCPU pause to vCPU resume).
func BenchmarkNetMigration(b *testing.B) {
	for _, c := range []struct {
		name string
		mib  int
	}{{"idle", 0}, {"busy-64MiB", dirtierMiB}} {
		b.Run(c.name, func(b *testing.B) {
			longest, downtime := migrateWithTCPClient(b, c.mib)
			b.ReportMetric(float64(longest.Milliseconds()), "client-wait-ms")
			b.ReportMetric(float64(downtime.Milliseconds()), "downtime-ms")
		})
	}
}
