// Package migration moves a running guest from one govmm to another over a
// stream connection (TCP) with iterative pre-copy, as in Clark et al., "Live
// Migration of Virtual Machines" (NSDI 2005). It is the protocol and the
// pre-copy engine only: it talks to the VM through two small interfaces,
// Source (the running VM) and Target (the VM being built), which the machine
// implements with KVM's dirty log and its device state, and which the tests
// implement with a []byte and a simulated clock.
//
// # How data flows
//
//	Source (vmm/machine)                                  Target (vmm/machine)
//	  MemoryLayout, ReadPage,                               PrepareMemory, WritePage,
//	  DirtyPages, SaveState                                 RestoreState, Resume
//	  (PeekDirtyPages: DirtyPeeker)                         (ReadPage: PageReader)
//	      │                                                      ▲
//	      ▼                                                      │
//	Send: dirty bitmaps (pages.go) → batches of     Receive: frames → checks →
//	  pages → frames (wire.go), paced by the          state machine (receive.go)
//	  rate limit (send.go)  ──────── TCP ──────────▶
//	                        ◀──── Accept/Restored/Resumed/Error
//
// Clark et al.'s stages map onto the stream like this: pre-migration and
// reservation = Hello/Accept (the destination checks the layout and
// allocates memory before a page is sent); iterative pre-copy = rounds of
// Pages ending in RoundEnd; stop-and-copy = the final round and State;
// commitment = Restored/Go; activation = Resumed.
//
// # The sequence
//
//	source (Send)                                     destination (Receive)
//	  │ "GOVMMIG\0" + version 1                                     │
//	  │ Hello{page size, layout, name} ───────────────────────────▶ │ validate layout,
//	  │ ◀─────────────────────────────────────────────────── Accept │ PrepareMemory
//	  │ StartDirtyTracking                                          │
//	  │ round 1: Pages × n (every page; zero pages as a flag) ────▶ │ WritePage...
//	  │ RoundEnd{1, entries} ─────────────────────────────────────▶ │ check count
//	  │ round 2..k: Pages (dirtied since, minus the WWS) ─────────▶ │
//	  │ RoundEnd{k, entries} ─────────────────────────────────────▶ │
//	  │   ... until a stop rule fires ...                           │
//	  │ Pause ══ downtime starts ══                                 │
//	  │ SaveState; final DirtyPages; StopDirtyTracking              │
//	  │ final round: Pages (all remaining dirty pages) ───────────▶ │
//	  │ RoundEnd{k+1, entries} ───────────────────────────────────▶ │ memory complete?
//	  │ [Verify{CRC-32C per page}, with Options.Verify] ──────────▶ │ every page matches?
//	  │ State{blob} ──────────────────────────────────────────────▶ │ RestoreState
//	  │ ◀───────────────────────────────────────────────── Restored │ (vCPUs NOT running)
//	  │ Go ═══ commit point ══════════════════════════════════════▶ │ Resume
//	  │ ◀────────────────────────────────────────────────── Resumed │ guest runs here
//	  │ Stop ══ downtime ends (measured at Resumed) ══              │
//
// Either side may send Error{text} instead of its next message and give
// up; the other side reports the text (quoted) in its error.
//
// # Wire format (version 1)
//
// The source first writes the 8-byte magic "GOVMMIG\0" and a u32 version.
// Then both directions carry frames, integers big-endian:
//
//	type u8 | length u32 | payload [length]byte | crc u32 (CRC-32C of type, length, payload)
//
//	0x01 Hello     pageSize u32 | n u32 | n × (start u64, size u64) | nameLen u16 | name
//	0x02 Pages     count u32 (1..256) | count × (gpa|flags u64, data [4096]byte unless ZERO)
//	               flags are the GPA's low 12 bits: bit 0 = ZERO (all zeroes, no data,
//	               QEMU's RAM_SAVE_FLAG_ZERO); the others must be 0
//	0x03 RoundEnd  round u32 (1, 2, 3...) | entries u64 (Pages entries in the round)
//	0x04 State     the machine's blob, opaque here; the machine versions it
//	0x05 Go        empty
//	0x06 Verify    count u32 (the layout's pages) | count × crc u32 (CRC-32C of each page,
//	               in layout order); only with Options.Verify, between the final
//	               RoundEnd and State
//	0x81 Accept    empty          0x82 Restored   empty
//	0x83 Resumed   empty          0x7f Error      UTF-8 text, at most 1024 bytes
//
// Every frame has its own checksum, so corruption anywhere is caught before
// the payload is used, and a broken stream is detected at the first bad
// frame. The receiver bounds every length before allocating: the type's
// maximum (Hello 1.3 KiB, Pages 1 MiB, State ReceiveOptions.MaxStateSize,
// Verify 4 bytes per page of the layout in Hello, Error 1 KiB), and it
// grows its buffer only as data arrives.
//
// # The receiver
//
//	stream header (magic, version 1)
//	      │
//	      ▼
//	AWAIT HELLO ── Hello: layout valid, PrepareMemory ok ──▶ reply Accept
//	      │
//	      ▼
//	RECEIVE MEMORY ◀──┐
//	      │  │        │ Pages: flags, addresses, count vs bytes checked; WritePage
//	      │  └────────┘ RoundEnd: round number is the next one, entry count matches
//	      │             Verify (optional, once, after the last round): every page's
//	      │             CRC-32C matches the source's, read back through PageReader
//	      │ State: the last round has ended, every page arrived, RestoreState ok
//	      ▼
//	AWAIT GO ── reply Restored (vCPUs NOT running)
//	      │
//	      │ Go: Resume ok
//	      ▼
//	DONE ── reply Resumed; Receive returns nil: the guest runs here
//
//	In any state: a bad frame or value, a message not allowed in this
//	state, an Error from the source, EOF, timeout or cancel ──▶ FAILED:
//	reply Error (best effort), return an error. The vCPUs never started,
//	so the caller discards the Target.
//
// Everything from the source is untrusted: the layout (page-aligned, sorted,
// disjoint, below 2^52, within MaxMemory), each page's address (inside the
// layout) and flags, batch counts against the bytes present, round numbers
// and counts, and that every page of the layout arrived before State. The
// Target checks what only the machine can: that the layout fits its board,
// that the state's version is known and the CPUs are compatible (CPUID).
//
// # Pre-copy
//
// Round 1 sends every page; a page of zeroes (bytes.Equal against a zero
// page, the runtime's vectorised compare) goes as an 8-byte entry with the
// ZERO flag. Dirty tracking (KVM's log OR'd with the VMM's own writes, see
// Source) starts before round 1, so any write after a page is read lands in
// a later round. Each later round sends the pages dirtied during the one
// before.
//
// Writable working set (Clark et al. §4; Xen's to_skip): a page that is due
// but was written again since the round began is skipped: it changed again,
// the next round must send it anyway, so sending it now is wasted
// bandwidth. Send learns of those writes by peeking at the dirty log every
// PeekEvery pages (4 MiB) when the Source is a DirtyPeeker (the machine is,
// through KVM's manual dirty-log mode), as Xen peeks at its log between
// batches; the log is harvested, and the pages re-protected, only once per
// round, at its end. A Source that cannot peek is drained with DirtyPages
// after every batch instead, which re-protects the guest's hot pages each
// time and costs it a fault per page per batch.
//
// Rate limiting: in live rounds Send sleeps after each batch until the bytes
// sent fit the limit since the round began (QEMU's default max-bandwidth,
// 128 MiB/s); at low limits a batch shrinks to about 100 ms worth. With Options.Adaptive it follows Xen (xc_domain_save.c, Clark
// et al. §5): start at 100 Mbit/s; after a round whose dirty rate exceeded
// the limit, the next limit is dirty rate + 50 Mbit/s, capped at
// MaxBandwidth. The final round is never limited: the guest is paused.
//
// # When pre-copy stops
//
// After each live round, the first rule that holds ends the live rounds:
//
//  1. converged: dirty pages × page cost + a state estimate, at this round's
//     measured bandwidth, fit DowntimeLimit (QEMU's downtime-limit, 300 ms;
//     Cloud Hypervisor estimates the same way).
//  2. max-rounds: the next round would be the last allowed (MaxRounds, 30:
//     Xen's 29 live iterations plus the final one).
//  3. no-progress: at the highest allowed rate, the dirty rate is at least
//     the bandwidth, or the round sent more than the one before (Xen:
//     sent_this_iter > sent_last_iter && RATE_IS_MAX). Clark et al.'s
//     MMuncher never converges; more rounds only add to the total.
//  4. few-pages: fewer than 50 pages sent and skipped (Xen).
//  5. sent-3x-memory: more than 3 × guest RAM of page data sent (Xen's
//     max_factor).
//
// The estimate is best effort (a Cloud Hypervisor lesson): the true downtime
// is measured and reported, from Pause to reading Resumed.
//
// # Stop-and-copy
//
// Pause (vCPUs parked, devices quiesced, in-flight I/O done), then
// SaveState, then one last DirtyPages, then the final round. Memory goes
// after the device snapshot because quiescing devices can write guest RAM
// (a virtio device completing a request writes the used ring), and KVM's
// log does not see the VMM's writes: the final pass catches them (Cloud
// Hypervisor's lessons).
//
// # Verify
//
// With Options.Verify (govmm migrate --verify) the source follows the final
// round with a CRC-32C of every page, computed while the guest is paused,
// and the destination compares its own copy before it restores anything.
// A mismatch names the pages and fails the migration; the guest goes on at
// the source. A page can only differ if a write escaped the dirty log: the
// guest's (KVM's log) or the VMM's (a device that forgot MarkDirty). Such a
// bug otherwise shows up as a migrated guest that crashes later for no
// visible reason. It costs downtime (both sides read all of RAM), so it is
// off by default; the project's Linux migration tests turn it on.
//
// # Commit and rollback
//
// The guest must never run in two places; short of that, the source keeps
// a copy it can resume until it knows the destination runs the guest. Two
// parties over an unreliable link cannot both be sure of the outcome (the
// two generals' problem), so the protocol makes one point decisive, the
// Go message, and arranges that every failure on either side of it has a
// safe answer:
//
//   - Before Go, the destination cannot run the guest: it restores the
//     state but starts the vCPUs only on a complete, checksummed Go. So any
//     failure before Go leaves the source (connection cut, destination
//     crash, Error, bad reply, timeout, cancel) stops dirty tracking,
//     resumes the VM if it paused it, and returns an error saying the VM is
//     still running on the source. The destination, missing Go, discards.
//   - Go written only in part (Write returned fewer bytes than the frame)
//     cannot have been accepted, so that too rolls back.
//   - After Go left whole, the source waits for Resumed, then calls Stop.
//     An Error instead (Target.Resume failed, which by contract means the
//     guest does not run there) also rolls back.
//   - The one window left: Go left whole, and then the connection broke or
//     the answer timed out. The guest may be running on the destination or
//     nowhere. Send then neither resumes nor stops: the VM stays PAUSED on
//     the source, intact, and the error wraps ErrOutcomeUnknown. Whoever
//     called Send must find out from the destination (whose Receive returned
//     nil if the guest runs there, and noted AckError if it could not say
//     so) and then Resume or Stop the source. This is QEMU's choice too: once
//     its source has sent the final state it never resumes by itself unless
//     the destination reports failure. Downtime grows in this window; the
//     guest never runs twice.
//
// Nothing the source does before Stop alters the VM (it only reads memory
// and state), so resuming it after a failure is always correct.
//
// # Connections
//
// conn may be any io.ReadWriter that allows a Read concurrent with a Write
// (Send reads replies on a second goroutine, so an Error from a destination
// that stopped reading is seen at once). A net.Conn is best: its deadlines
// bound every write and wait by the timeout and let ctx interrupt blocked
// I/O. Neither side closes conn.
//
// # Reading order
//
//  1. api.go: Source, Target, Options and the defaults with their origins,
//     the Report.
//  2. wire.go: frames, limits, Hello and RoundEnd, layout validation.
//  3. pages.go: page numbering and dirty bitmaps.
//  4. send.go: Send — the rounds, the WWS skip, pacing, the stop rules,
//     stop-and-copy and the commit.
//  5. receive.go: Receive — the state machine and every check.
//  6. conn.go: deadlines and interruption.
//  7. fake_test.go and migration_test.go: a simulated guest and clock;
//     receive_test.go: hostile streams and FuzzReceive.
//
// References: Clark et al., NSDI 2005; Xen tools/libxc/xc_domain_save.c (the
// pre-4.6 save loop: rate limits, max_iters, max_factor); QEMU's migration
// parameters (downtime-limit, max-bandwidth) and stream (a version in the
// header, zero pages as a flag, the source never altered); Cloud
// Hypervisor's vm-migration protocol (a documented sequence and receiver
// state machine) and its issue tracker's lessons cited above.
package migration
