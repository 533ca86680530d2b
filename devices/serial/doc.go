// Package serial emulates a National Semiconductor 16550A UART, the chip
// behind the PC's COM ports, well enough for Linux's 8250 driver
// (drivers/tty/serial/8250/8250_port.c) to detect it as a "16550A" and use
// it as the boot console (console=ttyS0).
//
// # Where it sits
//
// The machine registers a *UART on the port-I/O bus at COM1Base (0x3f8)
// with size RegisterCount (8), so the guest's IN/OUT instructions arrive as
// Read/Write with offsets 0..7, one per register (16550A datasheet,
// "Register Summary"; offsets 0 and 1 switch meaning when LCR.DLAB is set):
//
//	offset  read            write           DLAB=1
//	0       RBR receive     THR transmit    DLL divisor low
//	1       IER             IER             DLM divisor high
//	2       IIR             FCR
//	3       LCR             LCR
//	4       MCR             MCR
//	5       LSR             (ignored)
//	6       MSR             (ignored)
//	7       SCR scratch     SCR
//
// # Data flow
//
// Transmit: a guest write to THR goes straight to the io.Writer given to New
// (the user's terminal). There is no baud-rate timing: the transmitter is
// always empty again by the time the guest looks, so LSR.THRE and LSR.TEMT
// are always set.
//
// Receive: another goroutine (typically reading the user's stdin) calls
// Input. Bytes wait in a bounded queue (RXQueueSize) that plays the role of
// the receive FIFO; when it is full, Input blocks until the guest drains it,
// so pasted text is never dropped. The vCPU thread never blocks on the
// queue.
//
// Interrupts: after every register access and every Input, the UART
// recomputes its INTR output from IER, LSR, MSR and the pending-THRE latch,
// in the priority order of the datasheet's "Interrupt Control Functions"
// table, and calls IRQLine.SetLevel only when the level changes. The machine
// wires the line to KVM_IRQ_LINE on ISA IRQ 4 (COM1IRQ); the guest's I/O
// APIC pin is edge-triggered for ISA IRQs, so what Linux sees is the rising
// edge. On govmm's hardware-reduced ACPI platform Linux has no legacy PIC
// and learns that COM1 uses IRQ 4 from the DSDT (device PNP0501, built by
// package boot/acpi).
//
// On a real PC the MCR.OUT2 output gates INTR on the motherboard; that gate
// is outside the chip and is not modelled, as in QEMU. Linux sets OUT2
// anyway. When the guest resets the receive FIFO through FCR (the driver
// does so when the port is opened), queued input is discarded, as on the
// chip; this only loses what was typed before the port was opened.
//
// Saved state: SaveState/RestoreState capture every register, the queued
// receive bytes and the interrupt level, for migration.
//
// Read next: uart.go (register model), then uart_test.go, whose
// TestLinuxAutoconfig replays the probe sequence of 8250_port.c autoconfig().
package serial
