package aml

import "fmt"

// Resource is one resource descriptor inside a ResourceTemplate (ACPI 6.4
// §6.4 "Resource Data Types for ACPI"). A _CRS object is a Buffer holding a
// list of descriptors closed by an End Tag.
type Resource interface {
	appendResource(dst []byte) ([]byte, error)
}

type resourceFunc func(dst []byte) ([]byte, error)

func (f resourceFunc) appendResource(dst []byte) ([]byte, error) { return f(dst) }

// Small resource descriptor tags (§6.4.2): bits 3-6 item name, bits 0-2
// length of the data that follows.
const (
	irqTag    = 0x04<<3 | 2 // IRQ Descriptor without the flags byte (§6.4.2.1)
	ioPortTag = 0x08<<3 | 7 // I/O Port Descriptor, 7 bytes (§6.4.2.5)
	endTag    = 0x0f<<3 | 1 // End Tag, 1 byte (§6.4.2.9)

	ioDecode16 = 0x01 // the device decodes all 16 address bits
)

// IO is ASL IO(Decode16, minBase, maxBase, align, length): a device that decodes
// length ports at a base chosen between minBase and maxBase in steps of align. For
// a fixed port, minBase == maxBase.
func IO(minBase, maxBase uint16, align, length uint8) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		return append(dst, ioPortTag, ioDecode16,
			byte(minBase), byte(minBase>>8), byte(maxBase), byte(maxBase>>8), align, length), nil
	})
}

// IRQNoFlags is ASL IRQNoFlags() { irqs }: the device uses these ISA IRQs
// (0-15), edge-triggered, active high, not shared — the 2-byte form of the
// IRQ descriptor, whose defaults are exactly those (§6.4.2.1).
func IRQNoFlags(irqs ...uint8) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		var mask uint16
		for _, irq := range irqs {
			if irq > 15 {
				return nil, fmt.Errorf("aml: IRQ %d is not an ISA IRQ (0-15)", irq)
			}
			mask |= 1 << irq
		}
		return append(dst, irqTag, byte(mask), byte(mask>>8)), nil
	})
}

// ResourceTemplate is ASL ResourceTemplate() { descs }: a Buffer of the
// descriptors followed by an End Tag. The End Tag's checksum byte is 0,
// which the spec defines as "treat the checksum as valid"; iasl emits the
// same.
func ResourceTemplate(descs ...Resource) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		var b []byte
		for _, d := range descs {
			var err error
			if b, err = d.appendResource(b); err != nil {
				return nil, err
			}
		}
		return Buffer(append(b, endTag, 0)).appendAML(dst)
	})
}

// Large resource descriptors (§6.4.3) start with a tag byte and a 16-bit
// length of the data that follows.
const (
	memory32FixedTag = 0x86 // 32-Bit Fixed Memory Range Descriptor (§6.4.3.4)
	extendedIRQTag   = 0x89 // Extended Interrupt Descriptor (§6.4.3.6)

	memoryReadWrite = 1 << 0 // _RW: the range is writable

	irqConsumer = 1 << 0 // the device consumes the interrupt (not a bridge passing it on)
	irqEdge     = 1 << 1 // _HE: edge-triggered (else level)
	// Bits 2-4 (_LL active low, _SHR shared, _WKC wake capable) stay 0:
	// active high, exclusive, no wake.
)

func large(dst []byte, tag byte, data ...byte) []byte {
	return append(append(dst, tag, byte(len(data)), byte(len(data)>>8)), data...)
}

func le32(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

// Memory32Fixed is ASL Memory32Fixed(ReadWrite, base, length): a register
// block at a fixed guest-physical address below 4 GiB.
func Memory32Fixed(base, length uint32) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		data := append([]byte{memoryReadWrite}, le32(base)...)
		return large(dst, memory32FixedTag, append(data, le32(length)...)...), nil
	})
}

// InterruptEdgeHigh is ASL Interrupt(ResourceConsumer, Edge, ActiveHigh,
// Exclusive) { gsi }: one interrupt by its GSI number, which unlike
// IRQNoFlags reaches beyond the ISA range, up to every IOAPIC pin.
func InterruptEdgeHigh(gsi uint32) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		return large(dst, extendedIRQTag, append([]byte{irqConsumer | irqEdge, 1}, le32(gsi)...)...), nil
	})
}
