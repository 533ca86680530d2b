package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"govmm/boot"
)

// initramfsCommand is `govmm initramfs BZIMAGE -o FILE`: it writes the
// default initramfs that `govmm run` would build for that kernel, so that
// the same userland can boot under another VMM (QEMU: -kernel BZIMAGE
// -initrd FILE -append console=ttyS0). The benchmarks use it to compare
// govmm with QEMU on equal terms.
func initramfsCommand() *cli.Command {
	return &cli.Command{
		Name:      "initramfs",
		Usage:     "write govmm's default initramfs for a kernel to a file (to boot it elsewhere, e.g. in QEMU)",
		ArgsUsage: "BZIMAGE",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "file to write (a newc cpio archive)"},
			&cli.StringFlag{Name: "modules", Usage: "the guest kernel's /lib/modules/<version> directory (default: the host's)"},
			&cli.StringFlag{Name: "busybox", Usage: "static busybox (default: /bin/busybox)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("initramfs needs exactly one argument, the kernel (bzImage) whose modules it carries")
			}
			kernel, err := boot.LoadKernel(c.Args().First())
			if err != nil {
				return err
			}
			archive, err := loadInitrd(runOptions{Modules: c.String("modules"), Busybox: c.String("busybox")}, kernel)
			if err != nil {
				return err
			}
			return os.WriteFile(c.String("output"), archive, 0o644)
		},
	}
}
