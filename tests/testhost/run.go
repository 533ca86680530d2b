package testhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Scenario is one program to run in the test host, with govmm, the guest
// kernel and its modules available through GOVMM_BIN, GOVMM_KERNEL and
// GOVMM_MODULES, and the generic guest kernel through GOVMM_GENERIC_KERNEL
// and GOVMM_GENERIC_MODULES (unless Options.NoGeneric).
type Scenario struct {
	// Program is a host path to a static executable (build it with
	// CGO_ENABLED=0, e.g. Host.BuildTest). Empty with Interactive set means
	// "just a shell".
	Program string
	Args    []string
	// Console receives the test host's console (QEMU mode) or the
	// program's stdout and stderr (Direct mode) as it is produced.
	Console io.Writer
	// Interactive connects this process's terminal to the test host's
	// console and runs an interactive shell after Program (or instead of
	// it). The console is not captured and Result.Status is not known.
	// In Direct mode the terminal goes to Program (default /bin/sh).
	Interactive bool
	// Guest runs `govmm run` on the guest kernel with this process's
	// terminal as the guest's console: what `make run` does on a machine
	// whose /dev/kvm cannot boot Linux. Ctrl-A keys go to govmm (QEMU's
	// console is not multiplexed), and the test host powers off when
	// govmm exits.
	Guest bool
	// Timeout bounds the whole run (boot included); zero means 8 minutes.
	Timeout time.Duration
	// Memory is the test host's RAM in MiB; zero means 4096.
	Memory int
	// CPUs is the test host's CPU count; zero means 2 (1 on a one-CPU
	// machine): measured on 2 cores, the test host boots ~1 s slower with
	// 2 CPUs but the scenarios run ~35% faster (see doc.go).
	CPUs int
	// KernelArgs are appended to the test host's kernel command line
	// (e.g. "loglevel=7" to see its boot messages despite "quiet").
	KernelArgs string
}

// Result is the outcome of Run.
type Result struct {
	Status   int           // the scenario's exit status
	Output   []byte        // the whole console
	Ready    time.Duration // wall time until /init reported the test host ready (QEMU mode)
	Duration time.Duration // wall time of the whole run
}

var (
	exitRE  = regexp.MustCompile(`(?m)^` + exitMarker + ` (\d+)\r?$`)
	readyRE = regexp.MustCompile(`(?m)^` + readyMarker)
)

// Run runs the scenario, in the QEMU test host or directly (see Host.Mode),
// and returns its exit status. An error means the scenario could not run or
// did not finish (build failure, test host broken, timeout); the console
// collected so far is in Result.Output either way.
func (h *Host) Run(ctx context.Context, s Scenario) (Result, error) {
	if s.Timeout == 0 {
		s.Timeout = 8 * time.Minute
	}
	if s.Console == nil {
		s.Console = io.Discard
	}
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	if h.Mode == Direct {
		return h.runDirect(ctx, s)
	}
	return h.runQEMU(ctx, s)
}

// runDirect runs the scenario as a child process of this one. Used where
// /dev/kvm is hardware-backed: there the guest boots without a test host.
func (h *Host) runDirect(ctx context.Context, s Scenario) (Result, error) {
	var res Result
	prog, args := s.Program, s.Args
	if prog == "" {
		prog = "/bin/sh"
	}
	if s.Guest {
		prog, args = h.Govmm, []string{"run", "--modules", h.Kernel.ModulesDir, h.Kernel.BzImage}
	}
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = append(os.Environ(),
		"GOVMM_BIN="+h.Govmm,
		"GOVMM_KERNEL="+h.Kernel.BzImage,
		"GOVMM_MODULES="+h.Kernel.ModulesDir,
	)
	if h.QEMU != "" {
		cmd.Env = append(cmd.Env, "GOVMM_QEMU="+h.QEMU)
	}
	if h.Generic.BzImage != "" {
		cmd.Env = append(cmd.Env,
			"GOVMM_GENERIC_KERNEL="+h.Generic.BzImage,
			"GOVMM_GENERIC_MODULES="+h.Generic.ModulesDir,
		)
	}
	cmd.WaitDelay = 5 * time.Second
	var out lockedBuffer
	if s.Interactive || s.Guest {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	} else {
		w := io.MultiWriter(&out, s.Console)
		cmd.Stdout, cmd.Stderr = w, w
	}
	start := time.Now()
	err := cmd.Run()
	res.Duration = time.Since(start)
	res.Output = out.Bytes()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return res, stopped(ctx, "scenario", s.Timeout)
	case errors.As(err, &exit):
		res.Status = exit.ExitCode()
		return res, nil
	case err != nil:
		return res, err
	}
	return res, nil
}

// runQEMU boots the test host under TCG with the scenario in its initramfs.
func (h *Host) runQEMU(ctx context.Context, s Scenario) (Result, error) {
	var res Result
	extra := map[string]string{}
	var command []string
	if s.Program != "" {
		inHost := path.Join(scenarioDir, filepath.Base(s.Program))
		extra[inHost] = s.Program
		command = append([]string{inHost}, s.Args...)
	}
	if s.Guest {
		command = []string{"sh", "-c", `setsid cttyhack govmm run --modules "$GOVMM_MODULES" --cmdline "$GOVMM_GUEST_CMDLINE" "$GOVMM_KERNEL"`}
	}
	if s.Interactive {
		// The scenario (if any) runs first, then a shell with the console
		// as its controlling terminal, so Ctrl-C and job control work.
		if command != nil {
			command = append([]string{"sh", "-c", `"$@"; echo "scenario exit status $?"; exec setsid cttyhack sh`, "sh"}, command...)
		} else {
			command = []string{"setsid", "cttyhack", "sh"}
		}
	}
	if command == nil {
		return res, errors.New("testhost: Scenario needs a Program or Interactive")
	}
	initrd := filepath.Join(h.WorkDir, "testhost-initrd.cpio")
	if err := h.BuildInitramfs(initrd, command, extra); err != nil {
		return res, fmt.Errorf("building test-host initramfs: %w", err)
	}
	defer os.Remove(initrd)

	mem, cpus := s.Memory, s.CPUs
	if mem == 0 {
		mem = 4096
	}
	if cpus == 0 {
		cpus = min(2, runtime.NumCPU())
	}
	// tsc_early_khz: see HostTSCkHz. tsc=reliable: the clocksource
	// watchdog also misjudges the TSC when the host is busy and would
	// switch the test host to jiffies; TCG's TSC is the host's, which is
	// constant.
	cmdline := "console=ttyS0 panic=-1 quiet"
	if khz := HostTSCkHz(); khz != 0 {
		cmdline += fmt.Sprintf(" tsc_early_khz=%d tsc=reliable", khz)
	}
	args := []string{
		// microvm: no PCI, no firmware; QEMU loads the ELF vmlinux through
		// its PVH note. rtc=on gives the kernel a wall clock.
		"-M", "microvm,rtc=on",
		// TCG's "max" CPU model includes AMD SVM with nested paging, which
		// is what makes kvm-amd load inside the test host.
		"-accel", "tcg", "-cpu", "max",
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-display", "none", "-no-reboot",
		"-kernel", h.Vmlinux, "-initrd", initrd,
		"-append", strings.TrimSpace(cmdline + " " + s.KernelArgs),
	}
	if s.Guest {
		// The whole terminal belongs to govmm: no QEMU monitor and no
		// escape character, so Ctrl-A reaches govmm's console and Ctrl-C
		// the guest.
		args = append(args, "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con", "-monitor", "none")
	} else if s.Interactive {
		// Multiplex the QEMU monitor on the terminal so Ctrl-A x always
		// quits; Ctrl-A a sends a literal Ctrl-A (govmm's own escape).
		// signal=off: Ctrl-C goes to the test host, not to QEMU.
		args = append(args, "-chardev", "stdio,id=con,mux=on,signal=off",
			"-serial", "chardev:con", "-mon", "chardev=con")
	} else {
		args = append(args, "-serial", "stdio", "-monitor", "none")
	}
	fmt.Fprintf(h.log, "testhost: %s %q\n", qemuBinary, args)
	cmd := exec.CommandContext(ctx, qemuBinary, args...)
	cmd.WaitDelay = 5 * time.Second
	var out lockedBuffer
	start := time.Now()
	ready := make(chan struct{})
	if s.Interactive || s.Guest {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	} else {
		rw := &readyWatcher{buf: &out, ready: ready}
		cmd.Stdout = io.MultiWriter(rw, s.Console)
		cmd.Stderr = cmd.Stdout
	}
	err := cmd.Run()
	res.Duration = time.Since(start)
	res.Output = out.Bytes()
	select {
	case <-ready:
		res.Ready = out.readyAt.Sub(start)
	default:
	}
	if ctx.Err() != nil {
		return res, stopped(ctx, "test host", s.Timeout)
	}
	if err != nil {
		return res, fmt.Errorf("%s: %w", qemuBinary, err)
	}
	if s.Interactive || s.Guest {
		return res, nil
	}
	m := exitRE.FindAllSubmatch(res.Output, -1)
	if m == nil {
		return res, errors.New("test host stopped without printing its exit marker (kernel panic? see console)")
	}
	res.Status, _ = strconv.Atoi(string(m[len(m)-1][1]))
	if res.Status == setupFailure && !readyRE.Match(res.Output) {
		return res, errors.New("test host setup failed before the scenario ran (see console)")
	}
	return res, nil
}

// stopped explains why ctx ended a run.
func stopped(ctx context.Context, what string, timeout time.Duration) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%s did not finish within %v", what, timeout)
	}
	return fmt.Errorf("%s stopped: %w", what, ctx.Err())
}

// lockedBuffer is a bytes.Buffer safe for the concurrent writes exec makes
// when Stdout and Stderr are both set to it.
type lockedBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	readyAt time.Time
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

// readyWatcher records into buf and notes when the ready line first appears.
type readyWatcher struct {
	buf   *lockedBuffer
	ready chan struct{}
	seen  bool
}

func (r *readyWatcher) Write(p []byte) (int, error) {
	n, err := r.buf.Write(p)
	if !r.seen {
		r.buf.mu.Lock()
		if readyRE.Match(r.buf.b.Bytes()) {
			r.seen = true
			r.buf.readyAt = time.Now()
			close(r.ready)
		}
		r.buf.mu.Unlock()
	}
	return n, err
}
