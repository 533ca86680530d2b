// Package tools finds the host programs some tests drive (iasl, nbdkit,
// qemu-nbd, mkfs.ext4). On a developer's machine a missing program skips
// the test with the Debian package to install; in CI (`make test` sets
// GOVMM_REQUIRE_TOOLS=1, after `make deps` installed them all) it fails
// the test, so that a test can never pass by not running.
package tools

import (
	"os"
	"os/exec"
	"testing"
)

// Required reports whether missing tools fail tests (GOVMM_REQUIRE_TOOLS=1).
func Required() bool { return os.Getenv("GOVMM_REQUIRE_TOOLS") == "1" }

// Need returns the path of program, or ends the test: a skip naming the
// Debian package that has it, or a failure when tools are required.
func Need(t testing.TB, program, debianPackage string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err == nil {
		return path
	}
	if Required() {
		t.Fatalf("%s not found (GOVMM_REQUIRE_TOOLS=1): apt-get install %s", program, debianPackage)
	}
	t.Skipf("%s not installed (apt-get install %s)", program, debianPackage)
	return ""
}
