// Command govmm is a small, readable KVM virtual machine monitor.
//
// This file is the table of contents: the subcommands and their flags. Read
// run.go next for the boot sequence of `govmm run`.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"govmm/guest"
)

func main() {
	// The default initramfs runs this very binary as the guest's /init
	// (package guest). Inside the guest there is no CLI, only init.
	if guest.RunningAsInit() {
		guest.Init()
		return
	}

	app := &cli.App{
		Name:  "govmm",
		Usage: "a readable KVM virtual machine monitor with live migration",
		Commands: []*cli.Command{
			runCommand(),
			receiveCommand(),
			migrateCommand(),
			nasCommand(),
			dirtierCommand(),
			diskBenchCommand(),
			echoServerCommand(),
			initramfsCommand(),
		},
		// A --disk spec has commas of its own ("disk.img,readonly"): a
		// repeated flag, not a comma, separates list items.
		DisableSliceFlagSeparator: true,
		// Errors are printed once, by main, as "govmm: ...".
		ExitErrHandler: func(*cli.Context, error) {},
	}
	if err := app.Run(os.Args); err != nil {
		if msg := err.Error(); msg != "" {
			fmt.Fprintf(os.Stderr, "govmm: %s\n", msg)
		}
		os.Exit(exitCode(err))
	}
}

// exitError carries an exit status other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func exitCode(err error) int {
	if e, ok := err.(*exitError); ok {
		return e.code
	}
	return 1
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "boot a Linux bzImage with its serial console on this terminal",
		ArgsUsage: "BZIMAGE",
		Description: "Boots the kernel with 512 MiB of RAM and a serial console. Without --initrd,\n" +
			"govmm builds an initramfs that gives you a busybox shell and loads the\n" +
			"kernel's virtio modules (from /lib/modules/<version> or --modules).\n" +
			"Ctrl-A h lists the console keys; Ctrl-A x quits.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "mem", Value: "512M", Usage: "guest RAM (suffixes K, M, G)"},
			&cli.IntFlag{Name: "cpus", Value: 1, Usage: "number of vCPUs (only 1 for now)"},
			&cli.StringFlag{Name: "initrd", Usage: "initramfs to use instead of govmm's default one"},
			&cli.StringFlag{Name: "cmdline", Usage: "extra kernel command-line arguments, appended to the defaults"},
			&cli.StringFlag{Name: "modules", Usage: "the guest kernel's /lib/modules/<version> directory (default: the host's)"},
			&cli.StringFlag{Name: "busybox", Usage: "static busybox for the default initramfs (default: /bin/busybox)"},
			&cli.StringFlag{Name: "kvm", Value: "/dev/kvm", Usage: "KVM device"},
			&cli.StringFlag{Name: "trace-io", Usage: "log every port-I/O and MMIO access of the guest to this file"},
			&cli.StringFlag{Name: "api", Usage: "control socket (JSON over HTTP; default $XDG_RUNTIME_DIR or /tmp, govmm-PID.sock)"},
			&cli.StringSliceFlag{Name: "disk", Usage: "a virtio-blk disk: PATH, file:PATH, nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH, \n" +
				"\tthen ,readonly if wanted (repeat for more disks: /dev/vda, /dev/vdb, ...)"},
			&cli.StringSliceFlag{Name: "net", Usage: "a virtio-net NIC on a TAP device: tap:NAME[,mac=XX:XX:XX:XX:XX:XX] (created if missing; needs CAP_NET_ADMIN)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("run needs exactly one argument, the kernel (bzImage); see govmm run --help")
			}
			mem, err := parseSize(c.String("mem"))
			if err != nil {
				return fmt.Errorf("--mem: %w", err)
			}
			return run(runOptions{
				Kernel:    c.Args().First(),
				Memory:    mem,
				CPUs:      c.Int("cpus"),
				Initrd:    c.String("initrd"),
				Cmdline:   c.String("cmdline"),
				Modules:   c.String("modules"),
				Busybox:   c.String("busybox"),
				KVMDevice: c.String("kvm"),
				TraceIO:   c.String("trace-io"),
				API:       c.String("api"),
				Disks:     c.StringSlice("disk"),
				Nets:      c.StringSlice("net"),
			})
		},
	}
}
