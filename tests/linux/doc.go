// Package linux holds govmm's end-to-end scenarios: each test boots the
// stock Debian kernel with `govmm run` and drives the guest through its
// serial console, as a user at a terminal would.
//
// The tests are meant to run inside the test host (package tests/testhost):
// a QEMU-TCG virtual machine with real nested KVM, because this project's
// development machines have a PVM /dev/kvm that cannot boot stock Linux (see
// /work/shared/notes/environment.md). The test host's /init exports
//
//	GOVMM_BIN              the static govmm binary
//	GOVMM_KERNEL           the guest kernel (a bzImage): Debian's cloud kernel
//	GOVMM_MODULES          the guest kernel's /lib/modules/<version> (trimmed)
//	GOVMM_GENERIC_KERNEL   Debian's generic kernel, the second guest
//	GOVMM_GENERIC_MODULES  its /lib/modules/<version> (trimmed)
//
// and runs the compiled test binary. Without these variables (a plain
// `go test ./...` on a development machine) every test here skips and says
// how to run it (inside the test host a missing generic kernel fails
// TestBootGenericKernel instead of skipping it):
//
//	go test ./tests/testhost -run TestLinuxInTestHost -v   # all scenarios
//	go run ./tests/testhost/cmd/testhost -run TestBootShell  # one, console live
//
// Where /dev/kvm is hardware-backed the harness runs the same binary
// directly on the machine with the same variables set.
//
// Read vm_test.go first: it starts govmm with pipes for stdin and stdout,
// logs the console line by line and waits for expected text
// (an "expect"-style helper); the scenarios in scenarios_test.go build on it.
// migration_test.go (with migrate_helpers_test.go) migrates guests running
// the dirtier workload between govmm processes, and bench_test.go is the
// migration benchmark (`make bench`).
package linux
