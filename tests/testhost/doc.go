// Package testhost runs govmm's Linux-booting tests inside a "test host": a
// small Linux virtual machine under QEMU's TCG (pure software emulation)
// that emulates AMD SVM with nested paging, so that real KVM works in it.
//
// Why: the development and CI machines of this project have a PVM /dev/kvm,
// which cannot boot a stock Linux guest (see
// /work/shared/notes/environment.md). Inside the test host, kvm-amd loads
// and govmm boots the same Debian kernel exactly as on a laptop with AMD-V,
// only slower. On a machine whose /dev/kvm is hardware-backed (no kvm_pvm
// module, vmx or svm in /proc/cpuinfo) the harness skips QEMU and runs the
// scenario directly (Mode Direct).
//
// Data flow:
//
//  1. Prepare checks the host tools (qemu-system-x86_64, a static
//     /bin/busybox), runs tests/fetch-kernel.sh to get Debian's two x86-64
//     kernel packages, cloud (linux-image-cloud-amd64) and generic
//     (linux-image-amd64, what a Debian laptop boots), extracts the
//     uncompressed vmlinux from the cloud bzImage (vmlinux.go; QEMU boots
//     it through PVH, skipping the slow in-guest decompressor) and builds a
//     static govmm (CGO_ENABLED=0). The cloud kernel is the test host's own
//     kernel and the usual guest; the generic one is a second guest, so
//     that govmm is tested on both kernels users will give it.
//  2. BuildTest compiles a test package (./tests/linux) into a static
//     test binary: the "scenario".
//  3. Run writes the test host's initramfs (initramfs.go): busybox, the
//     kvm modules, both guest kernels (the cloud one again under /guest,
//     the generic one under /guest-generic), each with a modules directory
//     trimmed to virtio and pvpanic, govmm, the scenario and an /init
//     script. /init loads kvm-amd, exports GOVMM_BIN, GOVMM_KERNEL,
//     GOVMM_MODULES, GOVMM_GENERIC_KERNEL, GOVMM_GENERIC_MODULES and
//     GOVMM_GUEST_CMDLINE (kernel parameters every guest booted there
//     must get: no5lvl, see initramfs.go), runs
//     the scenario and prints "TESTHOST-EXIT <status>" before powering
//     off. Run boots QEMU (run.go), streams the console to Scenario.Console
//     and returns the status parsed from that marker.
//
// Everything downloaded or derived is cached in
// ${GOVMM_CACHE:-$HOME/.cache/govmm}: kernel/<package>_<version>/ (the
// unpacked .deb) and testhost/vmlinux-<package>_<version>.
//
// Environment variables:
//
//	GOVMM_CACHE            cache directory (default $HOME/.cache/govmm)
//	GOVMM_TESTHOST         qemu, direct or auto (default auto)
//	GOVMM_TESTHOST_GOVMM   use this prebuilt static govmm instead of building it
//	GOVMM_SKIP_TESTHOST=1  skip TestLinuxInTestHost (quick unit runs)
//	GOVMM_TESTHOST_CPUS    the test host's vCPUs for TestLinuxInTestHost (default 2)
//	GOVMM_TESTHOST_RUN     only the scenarios matching this regexp (go test -run)
//	GOVMM_TESTHOST_SKIP    not the scenarios matching this regexp (go test -skip)
//
// Running: `go test ./tests/testhost -run TestLinuxInTestHost -v` runs every
// scenario once; cmd/testhost runs one by hand with the console live
// (`go run ./tests/testhost/cmd/testhost -run TestBootShell`) or gives an
// interactive shell in the test host (`-shell`).
//
// Measured on the 2-core development machine (other work running beside):
// the test host reaches its "ready" line 2.3-2.6 s after QEMU starts with
// -smp 1 and 2.6-3.4 s with -smp 2, but the five scenarios of tests/linux
// (three guest boots) take 50-55 s in all with -smp 2 against 77-87 s with
// -smp 1, so 2 is the default. A guest boot to its shell takes 15-25 s of
// wall time in the test host; the generic kernel's boot takes 2-5 s more
// (TestBootGenericKernel 21-24 s against 17-19 s for TestBootShell), most
// of it decompressing its XZ payload. The whole `go test` of
// TestLinuxInTestHost, builds included, takes about 1.5 minutes (76-92 s
// with the six scenarios, four of them guest boots).
//
// The test host's initramfs is about 39 MB, uncompressed: the cloud guest
// bzImage 14.2 MB, the generic one 8.2 MB, govmm 6.2 MB and the scenario
// binary 3.2 MB (both built without symbol tables, see stripFlags), the kvm
// and network modules 3.7 MB, busybox 2 MB, each guest's trimmed modules
// 0.8 MB. Adding the generic kernel made the test host ready about 0.3 s
// later (within the noise of a busy machine).
//
// Read next: run.go (the QEMU command line and the exit marker), then
// initramfs.go (/init), then package govmm/tests/linux (the scenarios).
package testhost
