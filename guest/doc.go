// Package guest is the software govmm puts inside the virtual machine when
// the user gives a kernel but no initramfs: the builder of that initramfs
// (host side) and the guest's init (guest side).
//
// # Self as init
//
// govmm is built statically (CGO_ENABLED=0), so its executable runs on any
// x86-64 Linux kernel without a C library. The initramfs builder copies the
// running executable (/proc/self/exe) to /init. When the guest kernel
// starts /init as process 1, cmd/govmm's main sees RunningAsInit and calls
// Init instead of its command-line interface. The guest's init is therefore
// always the same build as the VMM: there is no second program to build,
// install or keep in step, and what init does can be read here, in Go.
//
// # What the initramfs holds
//
// BuildInitramfs writes an uncompressed newc cpio archive (the format the
// kernel unpacks into its initial rootfs: Documentation/driver-api/
// early-userspace/buffer-format.rst) with:
//
//   - /init: govmm itself;
//   - the directories /dev /proc /sys /tmp /root /etc /bin /sbin /usr/bin
//     /usr/sbin /run /mnt /lib/modules;
//   - /dev/console (char 5:1) and /dev/null (char 1:3), which the kernel
//     needs before anything mounts devtmpfs;
//   - /bin/busybox, a static busybox from the host, and one symlink per
//     applet (/bin/sh, /bin/ls, /sbin/poweroff, ...), from
//     "busybox --list-full";
//   - /etc/passwd, /etc/group, /etc/profile (PATH, PS1), /etc/hostname;
//   - the kernel modules of DefaultModules (virtio transports, virtio-blk,
//     virtio-net, pvpanic) and everything they depend on according to the
//     host's modules.dep, at their usual place /lib/modules/<release>/...,
//     stored decompressed, with a modules.dep restricted to them;
//   - LoadListPath (/lib/modules/govmm.load): those modules as absolute
//     paths in the order init must load them, dependencies first.
//
// Whatever cannot be found but does not prevent a boot (a module, the
// whole modules directory) is returned as a warning; what makes the image
// useless (a dynamically linked govmm or busybox, no busybox) is an error
// that says how to fix it.
//
// # How the guest userland boots
//
//  1. The kernel unpacks the archive into a tmpfs rootfs, opens
//     /dev/console as file descriptors 0, 1 and 2 and executes /init
//     (init/main.c, kernel_init).
//  2. Init mounts devtmpfs on /dev, proc, sysfs, tmpfs on /tmp and /run,
//     devpts on /dev/pts.
//  3. Init reads the govmm.* parameters of /proc/cmdline (ParseCmdline,
//     OptionsFromCmdline).
//  4. Init loads the modules of LoadListPath with finit_module(2), pvpanic
//     first so that a later kernel panic reaches the VMM. Once virtio_mmio
//     is in, the kernel probes the virtio devices the ACPI tables list and
//     devtmpfs grows /dev/vda and friends; init mounts a disk holding an
//     ext file system at /mnt/vdX (disks.go) and configures eth0 from
//     govmm.ip (network.go).
//  5. Init sets the hostname, prints HelpLine and ShellReadyBanner, and
//     starts /bin/sh (busybox ash) on /dev/ttyS0 as a login shell in a new
//     session with the serial port as its controlling terminal.
//  6. Init waits: it reaps every orphaned process, and shuts the machine
//     down when the shell exits (Ctrl-D, "exit") or when busybox's
//     poweroff, reboot or halt signal it (SIGUSR2, SIGTERM, SIGUSR1). The
//     power-off goes through ACPI to the VMM, which then ends.
//
// Init never returns and never panics: every failure is printed as a line
// starting with "govmm-init:" and init carries on if it can, or powers off.
//
// # Reading order
//
// doc.go (this file); initramfs.go (BuildInitramfs, from the top of build);
// busybox.go and elfcheck.go (finding busybox, refusing dynamic ELF files);
// package kmod (modules.dep and module loading); then init.go (Init, in
// the order of the steps above) and cmdline.go. The tests build images
// against a fake modules tree and hand-made ELF files and read them back.
//
// # The migration-test workload
//
// dirtier.go is the guest side of govmm's migration tests, after QEMU's
// (tests/qtest/migration): inside the guest, `/init dirtier --mib 64 &`
// rewrites a counter in every page of 64 MiB, pass after pass, and checks
// before each write that the page still holds the previous pass's value. A
// page that a migration lost or sent stale prints "dirtier: MEMORY
// MISMATCH"; its heartbeats ("dirtier: pass N ok") continuing on the
// destination show the guest went on where it stopped.
package guest
