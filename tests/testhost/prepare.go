package testhost

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Mode says where scenarios run.
type Mode int

const (
	// Auto picks Direct when /dev/kvm is hardware-backed, QEMU otherwise.
	Auto Mode = iota
	// QEMU boots the TCG test host and runs the scenario inside it.
	QEMU
	// Direct runs the scenario as a plain process on this machine.
	Direct
)

func (m Mode) String() string {
	switch m {
	case QEMU:
		return "qemu"
	case Direct:
		return "direct"
	}
	return "auto"
}

// ModeFromEnv reads GOVMM_TESTHOST ("qemu", "direct", "" or "auto").
func ModeFromEnv() (Mode, error) {
	switch v := os.Getenv("GOVMM_TESTHOST"); v {
	case "", "auto":
		return Auto, nil
	case "qemu":
		return QEMU, nil
	case "direct":
		return Direct, nil
	default:
		return Auto, fmt.Errorf("GOVMM_TESTHOST=%q: want qemu, direct or auto", v)
	}
}

// Options configure Prepare.
type Options struct {
	// WorkDir receives per-run files: the govmm binary, test binaries and
	// the test-host initramfs. Required; the caller owns and removes it.
	WorkDir string
	// Log receives progress lines ("fetching kernel", "building govmm").
	// Nil discards them.
	Log io.Writer
	// Mode selects QEMU or Direct; Auto decides by HardwareKVM.
	Mode Mode
	// Govmm, if set, is a prebuilt static govmm to use instead of building
	// ./cmd/govmm. Empty means $GOVMM_TESTHOST_GOVMM, then building.
	Govmm string
	// NoGeneric leaves out the second guest kernel (Host.Generic): for
	// runs that boot only the cloud kernel, such as `make run` on a PVM
	// host, which should not download a 70 MB package it never uses.
	// Scenarios that need the generic kernel then fail: the variables
	// they read are not set.
	NoGeneric bool
	// WithQEMU puts the host's QEMU (qemu-system-x86_64, its shared
	// libraries and the microvm firmware) into the test host, exported as
	// GOVMM_QEMU, for benchmarks that compare govmm with QEMU on the same
	// nested KVM. It adds some 60 MB to the test host's initramfs.
	WithQEMU bool
}

// Host holds everything a scenario run needs. Create it with Prepare.
type Host struct {
	Mode     Mode
	RepoRoot string // the govmm module root (holds go.mod)
	CacheDir string // ${GOVMM_CACHE:-$HOME/.cache/govmm}
	WorkDir  string
	Kernel   Kernel // cloud kernel: the test host's kernel and the main guest
	Generic  Kernel // generic kernel, the second guest; zero with Options.NoGeneric
	Vmlinux  string // uncompressed test-host kernel (QEMU mode only)
	Govmm    string // static govmm binary
	Busybox  string // static busybox (/bin/busybox)
	QEMU     string // QEMU to copy into the test host (Options.WithQEMU), else ""

	log io.Writer
}

// Kernel is an unpacked Debian kernel package (see tests/fetch-kernel.sh).
type Kernel struct {
	Root       string // the dpkg -x root
	Version    string // e.g. 6.1.0-56-cloud-amd64
	BzImage    string // Root/boot/vmlinuz-<Version>
	ModulesDir string // Root/lib/modules/<Version>
}

// Paths of the host tools the harness needs, with the Debian package to
// install when one is missing.
const (
	qemuBinary  = "qemu-system-x86_64"
	qemuPackage = "qemu-system-x86"
	busyboxPath = "/bin/busybox"
	busyboxPkg  = "busybox-static"
	fetchScript = "tests/fetch-kernel.sh"
)

// Kernel flavours of tests/fetch-kernel.sh. The cloud kernel
// (linux-image-cloud-amd64) is both the test host's kernel and the guest
// of most scenarios. The generic one (linux-image-amd64, what a Debian
// laptop has in /boot) is a second guest: govmm must boot both. Its
// differences matter to a VMM: an XZ-compressed bzImage (the cloud one is
// LZ4) and many more built-in drivers probing the machine at boot.
const (
	CloudFlavour   = "cloud"
	GenericFlavour = "generic"
)

// CacheDir returns ${GOVMM_CACHE:-$HOME/.cache/govmm}, the same directory
// tests/fetch-kernel.sh uses.
func CacheDir() (string, error) {
	if d := os.Getenv("GOVMM_CACHE"); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cache directory: %w (set GOVMM_CACHE)", err)
	}
	return filepath.Join(home, ".cache", "govmm"), nil
}

// RepoRoot returns the directory holding govmm's go.mod, as `go env GOMOD`
// reports it from the current directory.
func RepoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the govmm module (go env GOMOD is empty)")
	}
	return filepath.Dir(mod), nil
}

// HardwareKVM reports whether /dev/kvm is backed by VT-x/AMD-V, so that
// stock Linux guests can boot directly on this machine. PVM (the kvm_pvm
// module) also provides /dev/kvm but only runs PVM-enlightened kernels at
// usable speed; see /work/shared/notes/environment.md.
func HardwareKVM() bool {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return false
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return false
	}
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(cpuinfo), "\n") {
		if !strings.HasPrefix(line, "flags") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
		return false
	}
	return false
}

// Prepare checks the host tools, fetches the kernels (cloud, and generic
// unless o.NoGeneric), extracts the test-host vmlinux (cached) and builds a
// static govmm into o.WorkDir. A kernel that cannot be fetched is an error,
// never a silently smaller test run.
func Prepare(ctx context.Context, o Options) (*Host, error) {
	if o.WorkDir == "" {
		return nil, errors.New("testhost: Options.WorkDir is required")
	}
	h := &Host{Mode: o.Mode, WorkDir: o.WorkDir, log: o.Log, Busybox: busyboxPath}
	if o.WithQEMU {
		q, err := exec.LookPath(qemuBinary)
		if err != nil {
			return nil, fmt.Errorf("%s not found: install it with 'apt-get install %s'", qemuBinary, qemuPackage)
		}
		h.QEMU = q
	}
	if h.log == nil {
		h.log = io.Discard
	}
	if h.Mode == Auto {
		h.Mode = QEMU
		if HardwareKVM() {
			h.Mode = Direct
		}
	}
	var err error
	if h.RepoRoot, err = RepoRoot(); err != nil {
		return nil, err
	}
	if h.CacheDir, err = CacheDir(); err != nil {
		return nil, err
	}
	if err := checkBusybox(h.Busybox); err != nil {
		return nil, err
	}
	if h.Mode == QEMU {
		if _, err := exec.LookPath(qemuBinary); err != nil {
			return nil, fmt.Errorf("%s not found: install it with 'apt-get install %s'", qemuBinary, qemuPackage)
		}
	}
	fmt.Fprintf(h.log, "testhost: mode %s, cache %s\n", h.Mode, h.CacheDir)
	if h.Kernel, err = FetchKernel(ctx, h.RepoRoot, CloudFlavour); err != nil {
		return nil, err
	}
	fmt.Fprintf(h.log, "testhost: cloud kernel %s\n", h.Kernel.Version)
	if !o.NoGeneric {
		if h.Generic, err = FetchKernel(ctx, h.RepoRoot, GenericFlavour); err != nil {
			return nil, err
		}
		fmt.Fprintf(h.log, "testhost: generic kernel %s\n", h.Generic.Version)
	}
	if h.Mode == QEMU {
		if h.Vmlinux, err = cachedVmlinux(h.Kernel, h.CacheDir); err != nil {
			return nil, err
		}
	}
	if h.Govmm = o.Govmm; h.Govmm == "" {
		h.Govmm = os.Getenv("GOVMM_TESTHOST_GOVMM")
	}
	if h.Govmm != "" {
		fmt.Fprintf(h.log, "testhost: using prebuilt %s\n", h.Govmm)
		return h, nil
	}
	h.Govmm = filepath.Join(h.WorkDir, "govmm")
	fmt.Fprintf(h.log, "testhost: building %s\n", h.Govmm)
	if err := h.GoBuild(ctx, "build", stripFlags, "-o", h.Govmm, "./cmd/govmm"); err != nil {
		return nil, err
	}
	return h, nil
}

// checkBusybox insists on a statically linked busybox: it runs both as the
// test host's userland and inside govmm's default guest initramfs, where no
// shared libraries exist.
func checkBusybox(path string) error {
	hint := fmt.Sprintf("install it with 'apt-get install %s'", busyboxPkg)
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %v: %s", path, err, hint)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: %s", path, hint)
		}
	}
	return nil
}

// FetchKernel runs tests/fetch-kernel.sh for flavour (CloudFlavour or
// GenericFlavour) and describes the unpacked package. The script caches, so
// this is fast after the first run (the first one downloads 20-70 MB).
func FetchKernel(ctx context.Context, repoRoot, flavour string) (Kernel, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot, fetchScript), flavour)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Kernel{}, fmt.Errorf("%s %s: %v\n%s", fetchScript, flavour, err, stderr.Bytes())
	}
	k := Kernel{Root: strings.TrimSpace(string(out))}
	mods, _ := filepath.Glob(filepath.Join(k.Root, "lib", "modules", "*", "modules.dep"))
	if len(mods) != 1 {
		return Kernel{}, fmt.Errorf("%s: want exactly one lib/modules/*/modules.dep, found %d", k.Root, len(mods))
	}
	k.ModulesDir = filepath.Dir(mods[0])
	k.Version = filepath.Base(k.ModulesDir)
	k.BzImage = filepath.Join(k.Root, "boot", "vmlinuz-"+k.Version)
	if _, err := os.Stat(k.BzImage); err != nil {
		return Kernel{}, err
	}
	return k, nil
}

// cachedVmlinux extracts the kernel's vmlinux once into the cache.
func cachedVmlinux(k Kernel, cacheDir string) (string, error) {
	path := filepath.Join(cacheDir, "testhost", "vmlinux-"+filepath.Base(k.Root))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	bz, err := os.ReadFile(k.BzImage)
	if err != nil {
		return "", err
	}
	vmlinux, err := ExtractVmlinux(bz)
	if err != nil {
		return "", fmt.Errorf("%s: %w", k.BzImage, err)
	}
	if err := writeFileAtomic(path, vmlinux, 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// writeFileAtomic writes through a temporary file and a rename, so a
// concurrent reader never sees a partial cache entry.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// stripFlags leave the symbol table (-s) and DWARF (-w) out of the binaries
// built for the test host: govmm shrinks from 8.9 to 6.2 MB and the
// scenario binary from 4.7 to 3.2 MB (measured), which keeps the test
// host's initramfs small, and govmm's own default guest initramfs too, as
// govmm is the guest's /init. Go's panics and goroutine dumps still name
// functions and lines: they use the runtime's pclntab, which stays.
const stripFlags = "-ldflags=-s -w"

// GoBuild runs `go ARGS...` in the repository root with CGO_ENABLED=0, so
// the result is a static binary that runs in the test host's initramfs.
func (h *Host) GoBuild(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = h.RepoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// BuildTest compiles the tests of pkg (e.g. "./tests/linux") into a static
// test binary in the work directory and returns its path.
func (h *Host) BuildTest(ctx context.Context, pkg string) (string, error) {
	out := filepath.Join(h.WorkDir, filepath.Base(pkg)+".test")
	fmt.Fprintf(h.log, "testhost: building %s\n", out)
	if err := h.GoBuild(ctx, "test", "-c", stripFlags, "-o", out, pkg); err != nil {
		return "", err
	}
	return out, nil
}

// HostTSCkHz estimates this machine's TSC frequency in kHz from the
// "bogomips" of /proc/cpuinfo, or returns 0 if it cannot.
//
// Why: under TCG the test host's RDTSC reads the host's TSC (measured: the
// test host detected 2596.14 MHz on a 2596.14 MHz host), and the test
// host's kernel must calibrate it against the emulated PIT. When the host
// is busy, the vCPU thread is descheduled mid-calibration, calibration
// fails ("tsc: Unable to calibrate against PIT ... Marking TSC unstable due
// to could not calculate TSC khz") and the boot stalls for good (measured:
// 5 of 8 boots with both cores busy). Passing tsc_early_khz= skips the
// calibration.
//
// On x86 the kernel derives loops_per_jiffy from tsc_khz (lpj_fine =
// tsc_khz*1000/HZ, arch/x86/kernel/tsc.c) and prints bogomips as
// lpj*HZ/500000 (init/calibrate.c), so tsc_khz = bogomips*500 within a few
// kHz, precise enough for a boot clock.
func HostTSCkHz() int {
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(cpuinfo), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(key) != "bogomips" {
			continue
		}
		var bogomips float64
		if _, err := fmt.Sscanf(strings.TrimSpace(val), "%g", &bogomips); err != nil {
			return 0
		}
		khz := int(bogomips * 500)
		if khz < 500_000 || khz > 10_000_000 { // not a plausible TSC: don't guess
			return 0
		}
		return khz
	}
	return 0
}
