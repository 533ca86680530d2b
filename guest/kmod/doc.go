// Package kmod knows the two things govmm needs about Linux kernel modules:
// which files to copy into the guest's initramfs, and how to load them once
// the guest runs.
//
// Host side. depmod(8) writes modules.dep next to the modules of a kernel
// (/lib/modules/<release>/modules.dep). Each line names one module file,
// relative to that directory, then the files it needs loaded before it:
//
//	kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
//
// (format: modules.dep(5); files may also end in .ko.gz, .ko.xz or .ko.zst).
// ParseDep reads that file into a DepTable, ParseBuiltin reads
// modules.builtin (the modules compiled into the kernel image, which need no
// file at all), and DepTable.Resolve turns a list of wanted module names into
// the list of files in an order where every module comes after everything
// it depends on. Module names treat '-' and '_' as the same character, as
// the kernel and modprobe do (Name).
//
// Guest side. ReadLoadList reads the load-order file that the initramfs
// builder wrote, and Load hands each file to the kernel with finit_module(2).
//
// Read kmod.go first, then load.go. The initramfs builder that uses this
// package is in package guest (initramfs.go).
package kmod
