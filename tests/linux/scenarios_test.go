package linux

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// KVM ioctls, Documentation/virt/kvm/api.rst (_IO(KVMIO=0xAE, nr)).
const (
	kvmGetAPIVersion = 0xAE00 // KVM_GET_API_VERSION
	kvmCreateVM      = 0xAE01 // KVM_CREATE_VM
	kvmAPIVersion    = 12     // "Applications should refuse to run if [it] returns a value other than 12"
)

// TestKVMInTestHost checks the test host itself: if kvm-amd did not give a
// working /dev/kvm, every other scenario would fail in confusing ways.
func TestKVMInTestHost(t *testing.T) {
	needEnv(t)
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/kvm: %v", err)
	}
	defer unix.Close(fd)
	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	if err != nil || v != kvmAPIVersion {
		t.Fatalf("KVM_GET_API_VERSION = %d, %v; want %d", v, err, kvmAPIVersion)
	}
	// KVM_CREATE_VM can fail with EINTR when a signal (the Go runtime's
	// preemption signal, say) arrives while it sets the VM up; retrying is
	// the documented answer to EINTR (measured in the test host under load).
	var vmfd int
	for {
		vmfd, err = unix.IoctlRetInt(fd, kvmCreateVM)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		t.Fatalf("KVM_CREATE_VM: %v", err)
	}
	unix.Close(vmfd)
}

// TestBootShell boots the guest to its shell, proves the shell computes
// answers (the echo of the typed line holds "$((6*7))-ok", only the shell's
// reply holds "42-ok"), checks the kernel release and powers off.
func TestBootShell(t *testing.T) {
	e := needEnv(t)
	v := bootGuest(t, e)
	v.typeLine("echo $((6*7))-ok")
	v.expect("42-ok", replyTimeout)
	v.typeLine(`echo "release=$(uname -r)."`)
	v.expect("release="+e.kernelVersion()+".", replyTimeout)
	v.typeLine("poweroff")
	if status := v.wait(exitTimeout); status != 0 {
		t.Fatalf("govmm exited with status %d after guest poweroff, want 0", status)
	}
}

// TestBootGenericKernel boots Debian's generic kernel (linux-image-amd64,
// what a Debian laptop has in /boot) the way TestBootShell boots the cloud
// one. It differs where a VMM notices: an XZ-compressed bzImage and many
// more built-in drivers probing the machine. The module check proves that
// govmm's initramfs took the modules of this kernel from --modules. It is
// the only thing that would notice otherwise: given the cloud kernel's
// modules, the generic kernel refuses each one ("pvpanic: disagrees about
// version of symbol module_layout", finit_module fails with ENOEXEC), yet
// the shell still comes up (measured).
func TestBootGenericKernel(t *testing.T) {
	e := needEnv(t)
	kernel, modules := os.Getenv("GOVMM_GENERIC_KERNEL"), os.Getenv("GOVMM_GENERIC_MODULES")
	if kernel == "" || modules == "" {
		// Inside the test host (GOVMM_BIN is set) this is a harness bug,
		// not a reason to skip: the scenario would silently not run.
		t.Fatal("GOVMM_GENERIC_KERNEL and GOVMM_GENERIC_MODULES are not set, although GOVMM_BIN is: " +
			"the test host must provide Debian's generic kernel (testhost.Prepare without NoGeneric)")
	}
	version := filepath.Base(modules)
	if version == e.kernelVersion() {
		t.Fatalf("the generic kernel has the cloud kernel's release %s: the harness passed the same kernel twice", version)
	}
	v := bootToShell(t, "", e.govmm, "run", "--modules", modules, kernel)

	// /proc/modules names modules as the kernel does, with "_" for "-"
	// (pvpanic-mmio.ko is pvpanic_mmio). The typed line holds "mods=$(",
	// which the pattern cannot match, so only the reply does.
	v.typeLine(`echo "mods=$(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')."`)
	loaded := strings.Fields(v.expectMatch(regexp.MustCompile(`mods=([a-z0-9_ ]*)\.`), replyTimeout)[1])
	t.Logf("loaded modules: %s", strings.Join(loaded, " "))
	for _, want := range []string{"virtio_net", "pvpanic_mmio"} {
		if !slices.Contains(loaded, want) {
			t.Errorf("module %s is not loaded in the generic guest (loaded: %q)", want, loaded)
		}
	}

	v.typeLine(`echo "release=$(uname -r)."`)
	v.expect("release="+version+".", replyTimeout)
	v.typeLine("poweroff")
	if status := v.wait(exitTimeout); status != 0 {
		t.Fatalf("govmm exited with status %d after guest poweroff, want 0", status)
	}
}

// TestReboot: a guest reboot ends govmm with status 0 (govmm has no reset
// path; a restart request is the end of the VM).
func TestReboot(t *testing.T) {
	e := needEnv(t)
	v := bootGuest(t, e)
	v.typeLine("reboot")
	if status := v.wait(exitTimeout); status != 0 {
		t.Fatalf("govmm exited with status %d after guest reboot, want 0", status)
	}
}

// TestKernelPanic crashes the guest kernel (sysrq "c") and expects govmm to
// fail with a crash report naming the registers.
func TestKernelPanic(t *testing.T) {
	e := needEnv(t)
	v := bootGuest(t, e)
	v.typeLine("echo c > /proc/sysrq-trigger")
	if status := v.wait(exitTimeout); status == 0 {
		t.Fatal("govmm exited with status 0 after a guest kernel panic, want non-zero")
	}
	stderr := v.stderr.String()
	for _, want := range []string{"govmm: guest panicked", "RIP="} {
		if !strings.Contains(stderr, want) {
			t.Errorf("crash report on stderr lacks %q", want)
		}
	}
}

// TestBadInputs: govmm refuses unusable input with exit status 1 and one
// "govmm: " line on stderr that names the problem, without starting a guest.
func TestBadInputs(t *testing.T) {
	e := needEnv(t)
	dir := t.TempDir()
	notKernel := filepath.Join(dir, "not-a-kernel")
	if err := os.WriteFile(notKernel, bytes.Repeat([]byte("this is not a bzImage\n"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "no-such-kernel")
	for _, tc := range []struct {
		name string
		args []string
		// The message must contain one of these (case-insensitive).
		mention []string
	}{
		{"missing kernel", []string{"run", missing}, []string{missing}},
		{"not a bzImage", []string{"run", notKernel}, []string{notKernel, "bzimage"}},
		{"1M of memory", []string{"run", "--mem", "1M", e.kernel}, []string{"mem", "1M"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), badInputTimeout)
			defer cancel()
			var stdout, stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, e.govmm, tc.args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			t.Logf("govmm %s: %v\nstdout: %q\nstderr: %q", strings.Join(tc.args, " "), err, stdout.String(), stderr.String())
			if ctx.Err() != nil {
				t.Fatalf("govmm did not exit within %v", badInputTimeout)
			}
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Errorf("exit: %v, want status 1", err)
			}
			msg := strings.TrimSuffix(stderr.String(), "\n")
			if !strings.HasPrefix(msg, "govmm: ") || strings.Contains(msg, "\n") {
				t.Fatalf("stderr is not a single \"govmm: \" line: %q", stderr.String())
			}
			named := false
			for _, m := range tc.mention {
				named = named || strings.Contains(strings.ToLower(msg), strings.ToLower(m))
			}
			if !named {
				t.Errorf("message %q mentions none of %q", msg, tc.mention)
			}
		})
	}
}
