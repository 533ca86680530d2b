package linux

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkDisk is issue 4's benchmark: guest sequential write and read
// (MB/s) and 4 KiB random-read IOPS at queue depth 1, on a file-backed disk
// and on an NBD disk served by `govmm nas serve`, under govmm and under QEMU
// with the same backing, the same kernel and the same initramfs (govmm's,
// from `govmm initramfs`), measured by the same program in the guest
// (guest.DiskBench, O_DIRECT). QEMU runs its microvm machine with
// virtio-blk on virtio-mmio, as govmm does, on the test host's nested KVM.
// It prints a table with govmm/QEMU ratios; absolute figures in the test
// host are TCG's, so only the ratios mean something.
//
// Run it with `make bench` (go run ./tests/testhost/cmd/testhost -bench .),
// which puts QEMU into the test host.
func BenchmarkDisk(b *testing.B) {
	e := needEnv(b)
	qemu := needQEMU(b)
	initrd := benchInitrd(b, e)
	type result struct{ write, read, iops float64 }
	results := map[string]result{}
	for _, backend := range []string{"file", "nbd"} {
		for _, vmm := range []string{"govmm", "qemu"} {
			name := vmm + "-" + backend
			b.Run(name, func(b *testing.B) {
				img := newImage(b)
				govmmSpec, qemuFile := "file:"+img, img
				if backend == "nbd" {
					sock := filepath.Join(b.TempDir(), "nbd.sock")
					startNAS(b, e, img, sock)
					govmmSpec = "nbd+unix:///disk?socket=" + sock
					qemuFile = govmmSpec
				}
				var v *vm
				if vmm == "govmm" {
					v = bootToShell(b, name, e.govmm, "run", "--cmdline", "quiet", "--modules", e.modules, "--disk", govmmSpec, e.kernel)
				} else {
					v = bootToShell(b, name, qemu, append(qemuArgs(e, initrd),
						"-drive", "id=d0,if=none,format=raw,file="+qemuFile,
						"-device", "virtio-blk-device,drive=d0")...)
				}
				b.ResetTimer()
				v.typeLine(fmt.Sprintf("/init diskbench --mib %d --seconds 5 /dev/vda", diskMiB))
				m := v.expectMatch(regexp.MustCompile(`diskbench: seq-write=([0-9.]+) MB/s seq-read=([0-9.]+) MB/s randread-4k=([0-9.]+) IOPS`), 5*replyTimeout)
				b.StopTimer()
				var r result
				r.write, _ = strconv.ParseFloat(m[1], 64)
				r.read, _ = strconv.ParseFloat(m[2], 64)
				r.iops, _ = strconv.ParseFloat(m[3], 64)
				results[name] = r
				b.ReportMetric(r.write, "write-MB/s")
				b.ReportMetric(r.read, "read-MB/s")
				b.ReportMetric(r.iops, "randread-IOPS")
				v.typeLine("poweroff")
				if status := v.wait(exitTimeout); status != 0 {
					b.Errorf("%s exited with status %d after poweroff", vmm, status)
				}
			})
		}
	}
	var t strings.Builder
	fmt.Fprintf(&t, "\n%-8s %-6s %12s %12s %14s\n", "backend", "vmm", "write MB/s", "read MB/s", "randread IOPS")
	for _, backend := range []string{"file", "nbd"} {
		g, q := results["govmm-"+backend], results["qemu-"+backend]
		fmt.Fprintf(&t, "%-8s %-6s %12.1f %12.1f %14.0f\n", backend, "govmm", g.write, g.read, g.iops)
		fmt.Fprintf(&t, "%-8s %-6s %12.1f %12.1f %14.0f\n", backend, "qemu", q.write, q.read, q.iops)
		fmt.Fprintf(&t, "%-8s %-6s %11.2fx %11.2fx %13.2fx\n", backend, "ratio", ratio(g.write, q.write), ratio(g.read, q.read), ratio(g.iops, q.iops))
	}
	b.Log(t.String())
}

// benchInitrd writes govmm's default initramfs for the test kernel, for
// QEMU to boot the same userland.
func benchInitrd(b *testing.B, e env) string {
	b.Helper()
	initrd := filepath.Join(b.TempDir(), "initrd.cpio")
	if out, err := exec.Command(e.govmm, "initramfs", "--modules", e.modules, "-o", initrd, e.kernel).CombinedOutput(); err != nil {
		b.Fatalf("govmm initramfs: %v\n%s", err, out)
	}
	return initrd
}

// qemuArgs is QEMU's command line for the benchmarks' guest: the microvm
// machine (virtio-mmio, ACPI, no PCI) on the test host's KVM, one vCPU
// and 512 MiB as govmm's defaults, the serial console on stdio, and the
// kernel command line govmm uses, plus the test host's (guestCmdline) and
// extra parameters.
func qemuArgs(e env, initrd string, cmdline ...string) []string {
	return []string{
		"-M", "microvm,rtc=on", "-accel", "kvm", "-cpu", "host", "-m", "512", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none",
		"-kernel", e.kernel, "-initrd", initrd,
		"-append", strings.Join(append([]string{"console=ttyS0 reboot=acpi panic=-1 pci=off quiet", guestCmdline()}, cmdline...), " "),
	}
}

// needQEMU returns the QEMU the test host provides for comparisons.
func needQEMU(b *testing.B) string {
	b.Helper()
	qemu := os.Getenv("GOVMM_QEMU")
	if qemu == "" {
		b.Fatal("GOVMM_QEMU is not set: run the benchmark through the test host's -bench mode, which provides QEMU")
	}
	return qemu
}
