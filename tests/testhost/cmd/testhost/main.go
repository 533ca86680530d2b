// Command testhost runs govmm's Linux-booting scenarios by hand, in the
// QEMU-TCG test host (or directly where /dev/kvm is hardware-backed), with
// the console printed live. Run from anywhere inside the govmm module:
//
//	go run ./tests/testhost/cmd/testhost -run TestBootShell
//	    build ./tests/linux and run `linux.test -test.v -test.run TestBootShell`
//	go run ./tests/testhost/cmd/testhost
//	    run every scenario in ./tests/linux
//	go run ./tests/testhost/cmd/testhost -shell
//	    an interactive shell in the test host; govmm is /bin/govmm and
//	    `govmm run --modules $GOVMM_MODULES --cmdline "$GOVMM_GUEST_CMDLINE" $GOVMM_KERNEL`
//	    boots the guest
//	    (the cloud kernel; $GOVMM_GENERIC_MODULES and $GOVMM_GENERIC_KERNEL
//	    for the generic one).
//	    Ctrl-A x quits QEMU; Ctrl-A a sends Ctrl-A (so govmm's escape is
//	    Ctrl-A a x); `exit` powers the test host off.
//	go run ./tests/testhost/cmd/testhost -bench Migration
//	    run the ./tests/linux benchmarks once each (make bench)
//	go run ./tests/testhost/cmd/testhost -guest
//	    boot the guest with govmm, its console on this terminal (what
//	    `make run` does where /dev/kvm cannot boot Linux); Ctrl-A x quits.
//	go run ./tests/testhost/cmd/testhost -can-run-direct
//	    exit 0 if this machine's /dev/kvm boots Linux itself (no test host).
//	go run ./tests/testhost/cmd/testhost -- PROGRAM [ARGS...]
//	    run any static program (built with CGO_ENABLED=0), or a busybox
//	    sh script, as the scenario; -with-qemu also gives it QEMU
//	    ($GOVMM_QEMU), to compare govmm with QEMU on the same nested KVM.
//
// The exit status is the scenario's. See package tests/testhost for the
// environment variables (GOVMM_CACHE, GOVMM_TESTHOST, GOVMM_TESTHOST_GOVMM).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"govmm/tests/testhost"
)

func main() {
	os.Exit(run())
}

func run() int {
	benchRE := flag.String("bench", "", "run the ./tests/linux benchmarks matching this regexp, once each (go test -bench, -benchtime 1x)")
	runRE := flag.String("run", "", "run only the ./tests/linux scenarios matching this regexp (go test -run)")
	guest := flag.Bool("guest", false, "boot the guest with govmm on this terminal (make run on a PVM host)")
	canDirect := flag.Bool("can-run-direct", false, "exit 0 if /dev/kvm here can boot Linux without the test host, 1 if not")
	shell := flag.Bool("shell", false, "interactive shell in the test host (after the scenario, if one is given with --)")
	timeout := flag.Duration("timeout", 30*time.Minute, "time limit for the whole run")
	logFile := flag.String("log", "", "also write the console to this file")
	govmm := flag.String("govmm", "", "use this prebuilt static govmm instead of building ./cmd/govmm")
	mem := flag.Int("mem", 4096, "test-host memory in MiB")
	cpus := flag.Int("smp", 0, "test-host CPUs (default 2, or 1 on a one-CPU machine)")
	kargs := flag.String("append", "", "extra test-host kernel arguments (e.g. loglevel=7)")
	mode := flag.String("mode", "", "qemu or direct (default: $GOVMM_TESTHOST, else direct only on hardware KVM)")
	withQEMU := flag.Bool("with-qemu", false, "copy this machine's QEMU into the test host as $GOVMM_QEMU (implied by -bench)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: testhost [flags] [-- PROGRAM [ARGS...]]\n")
		flag.PrintDefaults()
	}
	flag.Parse()

	if *canDirect {
		if testhost.HardwareKVM() {
			return 0
		}
		return 1
	}
	if *mode != "" {
		os.Setenv("GOVMM_TESTHOST", *mode)
	}
	m, err := testhost.ModeFromEnv()
	if err != nil {
		return fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	work, err := os.MkdirTemp("", "govmm-testhost-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(work)

	// -guest (make run) boots only the cloud kernel: skip fetching and
	// packing the generic one.
	h, err := testhost.Prepare(ctx, testhost.Options{WorkDir: work, Log: os.Stderr, Mode: m, Govmm: *govmm, NoGeneric: *guest, WithQEMU: *withQEMU || *benchRE != ""})
	if err != nil {
		return fail(err)
	}
	s := testhost.Scenario{
		Console:     os.Stdout,
		Interactive: *shell,
		Guest:       *guest,
		Timeout:     *timeout,
		Memory:      *mem,
		CPUs:        *cpus,
		KernelArgs:  *kargs,
	}
	if *shell || *guest {
		s.Timeout = 24 * time.Hour
	}
	switch {
	case *guest:
	case flag.NArg() > 0:
		s.Program, s.Args = flag.Arg(0), flag.Args()[1:]
	case *benchRE != "":
		if s.Program, err = h.BuildTest(ctx, "./tests/linux"); err != nil {
			return fail(err)
		}
		s.Args = []string{"-test.v", "-test.run", "^$", "-test.bench", *benchRE, "-test.benchtime", "1x",
			"-test.timeout", (*timeout * 9 / 10).String()}
	case !*shell || *runRE != "":
		if s.Program, err = h.BuildTest(ctx, "./tests/linux"); err != nil {
			return fail(err)
		}
		// The tests' own limit comes first, so a hung test prints its
		// goroutines before the test host is killed.
		s.Args = []string{"-test.v", "-test.timeout", (*timeout * 9 / 10).String()}
		if *runRE != "" {
			s.Args = append(s.Args, "-test.run", *runRE)
		}
	}
	if *logFile != "" {
		f, err := os.Create(*logFile)
		if err != nil {
			return fail(err)
		}
		defer f.Close()
		s.Console = io.MultiWriter(os.Stdout, f)
	}

	res, err := h.Run(ctx, s)
	if err != nil {
		return fail(err)
	}
	if *shell || *guest {
		return 0
	}
	if h.Mode == testhost.QEMU {
		fmt.Fprintf(os.Stderr, "testhost: test host ready after %.1fs\n", res.Ready.Seconds())
	}
	fmt.Fprintf(os.Stderr, "testhost: scenario exit status %d after %.1fs in all\n", res.Status, res.Duration.Seconds())
	return res.Status
}

func fail(err error) int {
	fmt.Fprintf(os.Stderr, "testhost: %v\n", err)
	return 1
}
