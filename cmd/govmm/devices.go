package main

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"govmm/devices/disk"
	"govmm/devices/virtio"
	"govmm/devices/virtio/blk"
	"govmm/guest"
	"govmm/vmm/machine"
)

// The virtio devices govmm can build, by kind. This is the one place that
// names every device type: the machine plugs them into slots without
// knowing what they are, and a migration destination rebuilds the source's
// devices through the same factory from the specs in the stream.

// Device kinds, as they appear in machine.DeviceSpec.
const (
	kindBlock = "blk" // virtio-blk; Spec is a disk.Spec string
	kindNet   = "net" // virtio-net; Spec is a netSpec string
)

// deviceFactory builds devices whose backends log through logf. incoming
// is true on a migration destination: a TAP is then opened detached, and
// the machine attaches it when the guest resumes here (see
// machine.Destination.Resume), so that the source keeps the traffic until
// it stops.
func deviceFactory(logf func(format string, args ...any), incoming bool) machine.DeviceFactory {
	return func(d machine.DeviceSpec) (virtio.Device, error) {
		switch d.Kind {
		case kindBlock:
			return newDisk(d.Spec, logf)
		case kindNet:
			return newNIC(d.Spec, logf, incoming)
		default:
			return nil, fmt.Errorf("unknown device kind %q (this govmm knows %q and %q)", d.Kind, kindBlock, kindNet)
		}
	}
}

// diskDeviceSpec turns a --disk argument into the spec the machine keeps:
// parsed, and with a file's path made absolute, so that a destination
// started in another directory opens the same file.
func diskDeviceSpec(arg string) (machine.DeviceSpec, error) {
	spec, err := disk.ParseSpec(arg)
	if err != nil {
		return machine.DeviceSpec{}, fmt.Errorf("--disk: %w", err)
	}
	if spec.Kind == disk.KindFile {
		if spec.Path, err = filepath.Abs(spec.Path); err != nil {
			return machine.DeviceSpec{}, fmt.Errorf("--disk %s: %w", arg, err)
		}
	}
	return machine.DeviceSpec{Kind: kindBlock, Spec: spec.String()}, nil
}

// newDisk opens a disk and wraps it in a virtio-blk device.
func newDisk(specText string, logf func(format string, args ...any)) (virtio.Device, error) {
	spec, err := disk.ParseSpec(specText)
	if err != nil {
		return nil, err
	}
	d, err := disk.Open(spec, disk.OpenOptions{Log: logf})
	if err != nil {
		return nil, err
	}
	return blk.New(blk.Config{Disk: d, ReadOnly: spec.ReadOnly, Serial: diskSerial(specText), Log: logf}), nil
}

// diskSerial is the disk's serial number (VIRTIO_BLK_T_GET_ID, shown in
// /sys/block/vda/serial): derived from the spec, so it is the same on
// every boot and on both ends of a migration.
func diskSerial(spec string) string {
	h := fnv.New64a()
	h.Write([]byte(spec))
	return fmt.Sprintf("govmm-%014x", h.Sum64()>>8) // 20 bytes, the most GET_ID carries
}

// logToTerminal prints a device event on stderr. The terminal may be in
// raw mode (the guest's console), where a line needs its own "\r".
func logToTerminal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "govmm: "+format+"\r\n", args...)
}

// plugDevices adds a virtio-blk device for each --disk, in order (the
// first is the guest's /dev/vda), then a virtio-net device for each --net
// (eth0, eth1, ...).
func plugDevices(m *machine.Machine, disks, nets []string, factory machine.DeviceFactory) error {
	var specs []machine.DeviceSpec
	for _, a := range disks {
		spec, err := diskDeviceSpec(a)
		if err != nil {
			return err
		}
		specs = append(specs, spec)
	}
	for _, a := range nets {
		spec, err := parseNetSpec(a)
		if err != nil {
			return fmt.Errorf("--net: %w", err)
		}
		specs = append(specs, machine.DeviceSpec{Kind: kindNet, Spec: spec.String()})
	}
	for _, spec := range specs {
		dev, err := factory(spec)
		if err != nil {
			return err
		}
		if err := m.AddVirtio(spec, dev); err != nil {
			return err
		}
	}
	return nil
}

// diskBenchCommand is `govmm diskbench DEVICE`, the disk benchmark run
// inside a guest (guest.DiskBench; tests/linux BenchmarkDisk drives it).
func diskBenchCommand() *cli.Command {
	return &cli.Command{
		Name:            "diskbench",
		Usage:           "disk benchmark: sequential and random O_DIRECT I/O on a block device (run inside the guest)",
		Hidden:          true,
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			if code := guest.DiskBench(c.Args().Slice(), os.Stdout); code != 0 {
				return &exitError{code: code, err: errors.New("")}
			}
			return nil
		},
	}
}
