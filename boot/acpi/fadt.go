package acpi

import (
	"encoding/binary"

	"govmm/devices/acpipm"
)

// FADT, "Fixed ACPI Description Table" (ACPI 6.4 §5.2.9, Table 5.9).
// Revision 6 with minor version 4 is the ACPI 6.4 layout, 276 bytes.
const (
	fadtSize         = 276
	fadtRevision     = 6
	fadtMinorVersion = 4
)

// Field offsets (Table 5.9). The fields at offsets 46-108 and 148-243
// describe the legacy fixed hardware (SCI, SMI command port, PM1/PM2 blocks,
// PM timer, GPE blocks, C-state latencies, RTC alarm indexes) that a
// hardware-reduced platform does not have: with HW_REDUCED_ACPI set, OSPM
// ignores them (§5.2.9), so they stay 0.
const (
	fadtDSDT         = 40  // 32-bit DSDT address; 0 because X_DSDT is used
	fadtIAPCBootArch = 109 // IA-PC boot architecture flags, 2 bytes
	fadtFlags        = 112 // fixed feature flags, 4 bytes
	fadtResetReg     = 116 // RESET_REG, GAS
	fadtResetValue   = 128 // RESET_VALUE, 1 byte
	fadtMinorVer     = 131 // FADT Minor Version
	fadtXDSDT        = 140 // X_DSDT, 8 bytes
	fadtSleepControl = 244 // SLEEP_CONTROL_REG, GAS
	fadtSleepStatus  = 256 // SLEEP_STATUS_REG, GAS
	fadtHypervisorID = 268 // Hypervisor Vendor Identity, 8 bytes
)

// FADT Flags (Table 5.10).
const (
	flagPwrButton     = 1 << 4  // PWR_BUTTON: no fixed-feature power button
	flagSlpButton     = 1 << 5  // SLP_BUTTON: no fixed-feature sleep button
	flagResetRegSup   = 1 << 10 // RESET_REG_SUP: RESET_REG/RESET_VALUE are valid
	flagHWReducedACPI = 1 << 20 // HW_REDUCED_ACPI
)

// IA-PC Boot Architecture Flags (Table 5.11).
const (
	bootArchLegacyDevices = 1 << 0 // LEGACY_DEVICES: there are ISA devices (the COM port)
	bootArch8042          = 1 << 1 // 8042: a PS/2 keyboard controller is present
	bootArchVGANotPresent = 1 << 2 // VGA Not Present
	bootArchNoCMOSRTC     = 1 << 5 // CMOS RTC Not Present
)

// fadtFlagsValue: hardware-reduced, with a reset register. PWR_BUTTON and
// SLP_BUTTON are set because a hardware-reduced platform has no fixed-
// feature buttons (they live in the PM1 registers it lacks); with them clear
// Linux would create fixed-button devices (LNXPWRBN/LNXSLPBN) whose event
// handlers need those registers.
const fadtFlagsValue = flagHWReducedACPI | flagResetRegSup | flagPwrButton | flagSlpButton

// iapcBootArchValue: what a PC-compatible OS may probe.
//   - LEGACY_DEVICES: the COM1 UART is an ISA device the OS must drive.
//   - 8042 is deliberately NOT set although devices/i8042 answers the reset
//     command: with it set, Linux's i8042 driver probes the controller
//     (drivers/input/serio/i8042-x86ia64io.h, X86_LEGACY_I8042_EXPECTED_
//     PRESENT), waits half a second for a self-test reply that our minimal
//     model never sends, and fails. With it clear, acpi_parse_fadt marks the
//     controller firmware-absent and the driver stays away. The reboot path
//     (arch/x86/kernel/reboot.c BOOT_KBD) still writes 0xFE to port 0x64
//     regardless of this flag, after trying RESET_REG first.
//   - VGA Not Present: there is no VGA; Linux must not probe its ports.
//   - CMOS RTC Not Present: there is no MC146818 at 0x70; Linux then does
//     not register the rtc_cmos platform device (acpi_parse_fadt) and reads
//     wall-clock time from kvmclock instead.
const iapcBootArchValue = bootArchLegacyDevices | bootArchVGANotPresent | bootArchNoCMOSRTC

func buildFADT(cfg Config, dsdt uint64) []byte {
	body := make([]byte, fadtSize-headerSize)
	f := func(off int) []byte { return body[off-headerSize:] } // by Table 5.9 offset

	binary.LittleEndian.PutUint16(f(fadtIAPCBootArch), iapcBootArchValue)
	binary.LittleEndian.PutUint32(f(fadtFlags), fadtFlagsValue)

	// The reset register and the sleep registers are the byte ports of
	// devices/acpipm. ACPICA writes RESET_VALUE with one 8-bit OUT
	// (acpi_reset); the sleep registers are 8 bits wide by definition
	// (§4.8.3.7).
	pm := uint64(cfg.PMBase)
	gas(f(fadtResetReg), gasSystemIO, 8, gasAccessByte, pm+acpipm.ResetOffset)
	f(fadtResetValue)[0] = acpipm.ResetValue
	f(fadtMinorVer)[0] = fadtMinorVersion
	binary.LittleEndian.PutUint64(f(fadtXDSDT), dsdt)
	gas(f(fadtSleepControl), gasSystemIO, 8, gasAccessByte, pm+acpipm.SleepControlOffset)
	gas(f(fadtSleepStatus), gasSystemIO, 8, gasAccessByte, pm+acpipm.SleepStatusOffset)
	copy(f(fadtHypervisorID)[:8], hypervisorID)

	return table("FACP", fadtRevision, body)
}
