// Package i8042 models the one job a VMM needs from the PC's 8042 keyboard
// controller: its CPU reset line. Linux's last-resort reboot method
// (arch/x86/kernel/reboot.c, reboot type BOOT_KBD, used when the ACPI reset
// register did not work) waits for the controller's input buffer to be
// empty, then writes command 0xFE "pulse output port bit 0" to port 0x64,
// which on a PC is wired to the CPU's RESET pin.
//
// # Registration
//
// The controller answers at two ports that are four apart, and the ports in
// between (0x61 is the PC speaker/NMI "port B") belong to other devices. So
// the machine registers two 1-byte devices on the port-I/O bus:
//
//	c := i8042.New(handler)
//	pio.Register(i8042.DataPortAddr, 1, "i8042 data", c.Data())
//	pio.Register(i8042.CommandPortAddr, 1, "i8042 command", c.Command())
//
// # What the guest sees
//
// Both ports read 0: status "output buffer empty, input buffer empty", no
// data. There is no keyboard or mouse behind it, and no command other than
// 0xFE does anything. The ACPI tables (package boot/acpi) therefore do not
// advertise an 8042 in FADT.IAPC_BOOT_ARCH, so Linux's i8042 driver does not
// probe it (it would wait for self-test replies that never come); the reboot
// path writes 0xFE regardless of that flag.
//
// When the guest asks for a reset, the controller calls
// Handler.ResetRequested on the vCPU thread; the machine decides what a
// reset means (typically: stop the VM and report "reboot").
//
// Read next: i8042.go.
package i8042
