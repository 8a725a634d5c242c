//! The io_uring driver against real O_DIRECT files: every completion is decided explicitly.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use reel_store::driver::{Buf, Driver, DriverConfig, DriverError, Op};

fn direct_file(dir: &tempfile::TempDir, len: usize) -> std::fs::File {
    let path = dir.path().join("f.bin");
    let mut f = std::fs::File::create(&path).expect("create");
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).expect("fill");
    f.sync_all().expect("sync");
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("O_DIRECT open")
}

fn drv(ring: u32, bufs: usize) -> Driver {
    Driver::new(&DriverConfig {
        ring_entries: ring,
        buf_size: 64 << 10,
        buf_count: bufs,
        write_log: None,
    })
    .expect("driver")
}

/// A temp dir (keep it alive) holding an O_DIRECT file of `len` bytes, a driver of 8 entries
/// and 2 buffers, and one of the buffers.
fn file_and_driver(len: usize) -> (tempfile::TempDir, std::fs::File, Driver, Buf) {
    let dir = tempfile::tempdir().expect("tmp");
    let f = direct_file(&dir, len);
    let mut d = drv(8, 2);
    let buf = d.alloc_buf().expect("buf");
    (dir, f, d, buf)
}

/// `d.run` of one read of `len` bytes at `offset` of `f` into `buf` at `buf_offset`.
fn read(
    d: &mut Driver,
    f: &std::fs::File,
    buf: Buf,
    buf_offset: usize,
    len: usize,
    offset: u64,
) -> (Result<usize, DriverError>, Option<Buf>) {
    d.run(Op::Read {
        fd: f.as_raw_fd(),
        buf,
        buf_offset,
        len,
        offset,
    })
}

#[test]
fn short_read_at_end_of_file_is_continued_then_reported() {
    // 6 KiB file: an 8 KiB read returns 6 KiB, the continuation returns 0 = end of file.
    let (_dir, f, mut d, buf) = file_and_driver(6144);
    let (res, buf) = read(&mut d, &f, buf, 0, 8192, 0);
    match res {
        Err(DriverError::UnexpectedEof {
            done: 6144,
            len: 8192,
            ..
        }) => {}
        other => panic!("expected UnexpectedEof after 6144 bytes, got {other:?}"),
    }
    let buf = buf.expect("the buffer comes back on error too");
    assert!(
        d.buf(&buf)[..6144]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8),
        "the partial data is there"
    );
    assert_eq!(d.stats().short_transfers_continued, 1);
    // A read that fits is complete.
    let (res, buf) = read(&mut d, &f, buf, 4096, 4096, 0);
    assert_eq!(res.expect("read"), 4096);
    d.free_buf(buf.expect("buf"));
}

#[test]
fn misaligned_direct_io_is_a_typed_error_not_a_panic() {
    let (_dir, f, mut d, buf) = file_and_driver(16384);
    let (res, buf) = read(&mut d, &f, buf, 0, 4096, 100);
    match res {
        Err(DriverError::Io {
            op: "read", source, ..
        }) => assert_eq!(source.raw_os_error(), Some(libc::EINVAL)),
        other => panic!("expected EINVAL, got {other:?}"),
    }
    // Out of the buffer's bounds: refused before reaching the kernel.
    let (res, buf) = read(&mut d, &f, buf.expect("buf"), 60 << 10, 8192, 0);
    assert!(
        matches!(res, Err(DriverError::BufferRange { .. })),
        "{res:?}"
    );
    d.free_buf(buf.expect("buf"));
    assert_eq!(d.bufs_free(), 2, "no buffer was lost");
}

#[test]
fn more_ops_than_the_submission_queue_holds() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = direct_file(&dir, 1 << 20);
    // 4 SQ entries, 30 buffers: pushes overflow the SQ and go through flush and backlog.
    let mut d = drv(4, 30);
    let mut bufs = Vec::new();
    while let Some(b) = d.alloc_buf() {
        bufs.push(b);
    }
    for (i, b) in bufs.into_iter().enumerate() {
        d.push(
            Op::Read {
                fd: f.as_raw_fd(),
                buf: b,
                buf_offset: 0,
                len: 4096,
                offset: (i as u64 % 256) * 4096,
            },
            i as u64,
        )
        .expect("push");
    }
    let mut seen = [false; 30];
    while d.in_flight() > 0 || !seen.iter().all(|s| *s) {
        d.wait().expect("wait");
        while let Some(c) = d.pop() {
            assert_eq!(c.result.expect("read"), 4096);
            let buf = c.buf.expect("buf");
            let off = (c.tag % 256) as usize * 4096;
            assert_eq!(
                d.buf(&buf)[0],
                (off % 251) as u8,
                "tag {} read the right block",
                c.tag
            );
            seen[c.tag as usize] = true;
            d.free_buf(buf);
        }
    }
    assert_eq!(d.bufs_free(), 30);
}

#[test]
fn dropping_the_driver_with_operations_in_flight_waits_for_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = direct_file(&dir, 4 << 20);
    for _ in 0..20 {
        let mut d = drv(16, 16);
        for i in 0..16u64 {
            let b = d.alloc_buf().expect("buf");
            d.push(
                Op::Read {
                    fd: f.as_raw_fd(),
                    buf: b,
                    buf_offset: 0,
                    len: 64 << 10,
                    offset: i * (64 << 10),
                },
                i,
            )
            .expect("push");
        }
        d.submit().expect("submit");
        drop(d); // must not unmap buffers the kernel is still filling
    }
}

/// A socket of the caller's, connected through the ring: `CONNECT`, then an exact receive into
/// a registered buffer (continued over the peer's small writes), `NOP` handing a buffer back,
/// and the peer closing before the length is a typed end of file. A refused connect is an error.
#[test]
fn connect_and_receive_exactly_into_a_registered_buffer() {
    use reel_store::driver::PeerAddr;
    use std::net::TcpListener;

    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let to_send = sent.clone();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        // Small writes, so that the receive is short several times.
        for piece in to_send.chunks(7_000) {
            s.write_all(piece).expect("write");
            s.flush().expect("flush");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Ten more bytes, then close: a receive of more than that is cut short.
        s.write_all(&[9; 10]).expect("write");
    });
    let mut d = drv(8, 4);
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let fd = sock.as_raw_fd();
    let (res, _) = d.run(Op::Connect {
        fd,
        addr: PeerAddr::new(addr),
    });
    assert_eq!(res.expect("connected"), 0);
    let buf = d.alloc_buf().expect("buf");
    let (res, buf) = d.run(Op::RecvBuf {
        fd,
        buf,
        buf_offset: 3,
        len: 60_000,
    });
    assert_eq!(res.expect("received"), 60_000);
    let buf = buf.expect("the buffer comes back");
    assert_eq!(&d.buf(&buf)[3..60_003], &sent[..60_000]);
    let (res, buf) = d.run(Op::RecvBuf {
        fd,
        buf,
        buf_offset: 0,
        len: 40_000,
    });
    assert_eq!(res.expect("received"), 40_000);
    let buf = buf.expect("the buffer comes back");
    assert_eq!(&d.buf(&buf)[..40_000], &sent[60_000..]);
    let (res, buf) = d.run(Op::Nop { buf });
    assert_eq!(res.expect("nop"), 0);
    let buf = buf.expect("nop gives the buffer back");
    peer.join().expect("peer");
    let (res, buf) = d.run(Op::RecvBuf {
        fd,
        buf,
        buf_offset: 0,
        len: 20,
    });
    assert!(
        matches!(
            res,
            Err(DriverError::UnexpectedEof {
                done: 10,
                len: 20,
                ..
            })
        ),
        "{res:?}"
    );
    d.free_buf(buf.expect("the buffer comes back on error too"));
    drop(sock);
    // Nothing listens on a port just released: refused.
    let gone = TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone_addr = gone.local_addr().expect("addr");
    drop(gone);
    let s2 =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let (res, _) = d.run(Op::Connect {
        fd: s2.as_raw_fd(),
        addr: PeerAddr::new(gone_addr),
    });
    assert!(res.is_err(), "a connect to a closed port fails: {res:?}");
}
