// Package acpipm implements the power-management registers of a
// hardware-reduced ACPI platform (ACPI 6.4 §4.1 "Hardware-Reduced ACPI"):
// the sleep control and sleep status registers (§4.8.3.7) and the reset
// register (§4.8.3.6). They are how a guest without the legacy PM1 register
// blocks powers itself off and reboots.
//
// # Layout
//
// One 3-byte block of I/O ports at a base the machine chooses (DefaultBase,
// 0x600, free on a PC):
//
//	base+SleepControlOffset  SLEEP_CONTROL_REG  write SLP_TYP<<2|SLP_EN to enter a sleep state
//	base+SleepStatusOffset   SLEEP_STATUS_REG   bit 7 WAK_STS, write 1 to clear
//	base+ResetOffset         RESET_REG          write ResetValue to reset
//
// The FADT built by package boot/acpi points SLEEP_CONTROL_REG,
// SLEEP_STATUS_REG and RESET_REG at these ports, sets RESET_VALUE to
// ResetValue, and the DSDT's \_S5_ package carries SleepTypeS5, so the
// constants here are the single source of truth for both sides.
//
// # Data flow
//
// Linux's power-off (acpi_power_off → acpi_enter_sleep_state(5) →
// acpi_hw_extended_sleep in drivers/acpi/acpica/hwesleep.c) first writes
// WAK_STS to the status register, then SleepTypeS5<<2|SLP_EN to the control
// register: the device calls Handler.PowerOff. Linux's reboot
// (acpi_reboot → acpi_reset in drivers/acpi/acpica/hwxface.c) writes
// RESET_VALUE to the reset register: the device calls Handler.Reset. Both
// callbacks run on the vCPU thread; the machine stops the VM with a reason.
//
// Sleep states other than S5 are not offered (the DSDT has no _S1_.._S4_
// objects), so other SLP_TYP values are stored but do nothing.
//
// Read next: pm.go.
package acpipm
