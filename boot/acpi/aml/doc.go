// Package aml encodes the small subset of ACPI Machine Language that a VMM's
// DSDT needs: named data objects, packages, buffers, resource templates,
// scopes and devices (ACPI 6.4 §20 "ACPI Machine Language Specification").
//
// AML is the byte code that ACPI tables carry and the guest's AML interpreter
// (ACPICA in Linux) executes. Firmware authors normally write ASL source and
// compile it with iasl; a VMM that builds its tables at run time instead
// composes terms in Go, which mirror the ASL they stand for:
//
//	ASL                                        Go
//	Name (_S5_, Package (4) {5, 5, 0, 0})       aml.Name("_S5_", aml.Package(aml.Integer(5), ...))
//	Device (PEVT) { Name (_HID, "QEMU0001") }   aml.Device("PEVT", aml.Name("_HID", aml.String("QEMU0001")))
//	ResourceTemplate () { IO (Decode16, ...) }  aml.ResourceTemplate(aml.IO(...))
//
// Encode turns a list of terms into the bytes that follow a DSDT or SSDT
// header. Errors (a malformed name, an object too large for its length
// field) are reported by Encode, so building terms never fails.
//
// The two encoding rules worth reading first are PkgLength (§20.2.4, in
// PkgLength) and NameString (§20.2.2, in encodeNameString); everything else
// is an opcode followed by its operands.
//
// Read next: aml.go, then boot/acpi's dsdt.go, which uses it.
package aml
