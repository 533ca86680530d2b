// Package nbd speaks the Network Block Device protocol, as specified by
// doc/proto.md in the NetworkBlockDevice/nbd repository ("proto.md" in the
// comments, which cite its section names). It has both ends:
//
//   - Client (client.go, conn.go, negotiate.go) opens an export of any NBD
//     server (nbdkit, qemu-nbd, nbd-server, or Server) as a disk.Disk for
//     virtio-blk, and reconnects by itself when the server goes away.
//   - Server (server.go) serves disks to any NBD client (Client, qemu,
//     the Linux kernel's nbd-client); `govmm nas serve` is a Server over
//     an image file.
//
// Only the subset a disk needs is spoken: fixed newstyle negotiation, simple
// replies (no structured replies, no block status, no TLS). Both ends run
// several requests at once on one connection.
//
// # The conversation
//
// After the TCP or unix-socket connection, the handshake, then transmission
// (proto.md, "Fixed newstyle negotiation", "Option haggling",
// "Transmission"). Integers are big-endian.
//
//	client                                                         server
//	  │                                                              │
//	  │◀── "NBDMAGIC", "IHAVEOPT", flags FIXED_NEWSTYLE | NO_ZEROES ─│
//	  │── client flags C_FIXED_NEWSTYLE | C_NO_ZEROES ──────────────▶│
//	  │                                                              │
//	  │  option haggling: each option gets one or more replies       │
//	  │── NBD_OPT_GO: export name, asks for NBD_INFO_BLOCK_SIZE ────▶│
//	  │◀── NBD_REP_INFO NBD_INFO_EXPORT: size, transmission flags ───│
//	  │◀── NBD_REP_INFO NBD_INFO_BLOCK_SIZE: min, preferred, max ────│
//	  │◀── NBD_REP_ACK ──────────────────────────────────────────────│
//	  │  (or an error such as NBD_REP_ERR_UNKNOWN; after             │
//	  │  NBD_REP_ERR_UNSUP the client sends NBD_OPT_EXPORT_NAME,     │
//	  │  answered by size and flags alone)                           │
//	  │                                                              │
//	  │  transmission: requests pipelined, replies in any order      │
//	  │── NBD_CMD_WRITE cookie 7, offset, length, data ─────────────▶│
//	  │── NBD_CMD_READ cookie 8, offset, length ────────────────────▶│
//	  │◀── simple reply: cookie 8, error 0, data ────────────────────│
//	  │◀── simple reply: cookie 7, error 0 ──────────────────────────│
//	  │── NBD_CMD_FLUSH cookie 9 ───────────────────────────────────▶│
//	  │◀── simple reply: cookie 9, error 0 ──────────────────────────│
//	  │── NBD_CMD_DISC ─────────────────────────────────────────────▶│
//	  │  (no reply: the server finishes, then closes)                │
//
// A cookie (proto.md calls it "handle" in older versions) is chosen by the
// client and echoed by the server; it is the only link between a reply and
// its request. An error reply to NBD_CMD_READ carries no data.
//
// # The client's connection
//
//	ReadAt/WriteAt/Flush/Discard/WriteZeroes (any goroutine)
//	    │ split at the maximum block size, each piece:
//	    │ new cookie → pending[cookie] → header+payload written under writeMu
//	    ▼
//	  server ──replies──▶ readLoop (one goroutine): pending[cookie] → wake the caller
//
// When the connection fails (read or write error, protocol violation),
// readLoop fails every pending call with an error wrapping ErrDisconnected,
// and the Client starts a reconnect loop: 100 ms, then doubling up to 2 s,
// until the same address and export answer again with the same size.
// Requests made meanwhile fail at once, so the guest sees I/O errors, not a
// hang. Nothing is replayed: a failed write is the guest's to retry. Writes
// the old connection acknowledged but no flush covered may have died with
// the server, so the first Flush after a reconnection fails with EIO, as
// fsync reports a lost writeback. An export whose size changed is refused
// for good.
//
// # The server's connection
//
// One goroutine reads and checks requests; each valid one runs on its own
// goroutine, bounded per connection to 64 requests and 64 MiB of buffers.
// Replies are written whole under a mutex. Every value from the client is
// checked before use (marked UNTRUSTED in the source).
//
// Read client.go first, then conn.go for the transmission phase,
// negotiate.go for the client's handshake, and server.go for the other end;
// proto.go has the protocol's numbers.
package nbd
