//! Download tests against a local HTTP/1.1 server on 127.0.0.1 started by each test.
//!
//! The server is hand-written on `std::net::TcpListener`: it serves one generated file,
//! honours (or, on request, ignores) `Range: bytes=N-`, can drop the connection halfway,
//! records the requests it saw, and stops by itself once dropped or after a time limit.
#![cfg(feature = "download")]

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use segment_anything::download::{
    cached_checkpoint_in, checkpoint_path_in, download_file, download_into, ensure_checkpoint_in,
    part_path, DownloadOptions,
};
use segment_anything::{Error, SamVariant};
use sha2::{Digest, Sha256};

const FILE_NAME: &str = "weights.bin";
const FILE_LEN: usize = 3 * 1024 * 1024 + 12_345;
/// A server thread never outlives this.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);

fn payload() -> Vec<u8> {
    // Deterministic, non-repeating-looking bytes (xorshift).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..FILE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Answer 200 with the whole file even to a range request.
    ignore_range: bool,
    /// For the first N requests, send the headers and only half of the body, then close.
    drop_first: usize,
    /// Answer 404 to everything.
    not_found: bool,
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
}

struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(body: Vec<u8>, behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(body);
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + SERVER_LIFETIME;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let n = served.fetch_add(1, Ordering::SeqCst);
                            // One connection at a time is all the client needs.
                            handle(stream, &body, behaviour, n, &seen);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        Server {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn url(&self) -> String {
        format!("{}{FILE_NAME}", self.base_url())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(
    stream: TcpStream,
    body: &[u8],
    behaviour: Behaviour,
    index: usize,
    seen: &Mutex<Vec<Seen>>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let mut out = stream;

    if behaviour.not_found || path != format!("/{FILE_NAME}") {
        let msg = b"not found";
        let _ = write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        );
        let _ = out.write_all(msg);
        let _ = out.flush();
        let _ = out.shutdown(Shutdown::Both);
        return;
    }

    let start = range
        .as_deref()
        .filter(|_| !behaviour.ignore_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let (head, slice) = match start {
        Some(s) if s >= body.len() => {
            let _ = write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
        Some(s) => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                body.len() - 1,
                body.len(),
                body.len() - s
            ),
            &body[s..],
        ),
        None => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body,
        ),
    };
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let sent = if index < behaviour.drop_first {
        &slice[..slice.len() / 2]
    } else {
        slice
    };
    let _ = out.write_all(sent);
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The error's message, also printed (visible with `--nocapture`).
fn message(err: &Error) -> String {
    let msg = err.to_string();
    eprintln!("error: {msg}");
    msg
}

#[test]
fn normal_download() {
    let data = payload();
    let sha = sha256_hex(&data);
    let server = Server::start(data.clone(), Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");

    let path = download_into(
        &server.url(),
        &cache,
        FILE_NAME,
        Some(&sha),
        Some(data.len() as u64),
        false,
    )
    .expect("download");
    assert_eq!(path, cache.join(FILE_NAME));
    assert_eq!(read(&path), data);
    assert_eq!(sha256_hex(&read(&path)), sha);
    assert!(!part_path(&path).exists(), ".part left behind");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, format!("/{FILE_NAME}"));
    assert_eq!(seen[0].range, None);
}

#[test]
fn download_without_expectations() {
    let data = payload();
    let server = Server::start(data.clone(), Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("nested").join("out.bin");
    download_file(&server.url(), &dest, None, None, false).expect("download");
    assert_eq!(read(&dest), data);
}

#[test]
fn resumes_partial_download_with_range() {
    let data = payload();
    let sha = sha256_hex(&data);
    let server = Server::start(data.clone(), Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(FILE_NAME);
    let half = data.len() / 2;
    std::fs::write(part_path(&dest), &data[..half]).unwrap();

    download_file(
        &server.url(),
        &dest,
        Some(&sha.to_uppercase()),
        Some(data.len() as u64),
        false,
    )
    .expect("resumed download");
    assert_eq!(read(&dest), data);
    assert!(!part_path(&dest).exists());
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
}

#[test]
fn dropped_connection_keeps_part_then_resumes() {
    let data = payload();
    let sha = sha256_hex(&data);
    let server = Server::start(
        data.clone(),
        Behaviour {
            drop_first: 1,
            ..Behaviour::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path();
    let dest = cache.join(FILE_NAME);
    let size = Some(data.len() as u64);

    let err = download_into(&server.url(), cache, FILE_NAME, Some(&sha), size, false)
        .expect_err("the first attempt must fail");
    let msg = message(&err);
    assert!(matches!(err, Error::Download { .. }), "{msg}");
    assert!(msg.contains(&server.url()), "{msg}");
    assert!(msg.contains(".part"), "{msg}");
    assert!(!dest.exists(), "an incomplete file landed in the cache");
    let kept = std::fs::metadata(part_path(&dest))
        .expect(".part kept")
        .len();
    assert!(kept > 0 && kept < data.len() as u64, "kept {kept} bytes");
    assert_eq!(read(&part_path(&dest)), &data[..kept as usize]);

    let path = download_into(&server.url(), cache, FILE_NAME, Some(&sha), size, false)
        .expect("second attempt resumes");
    assert_eq!(read(&path), data);
    assert!(!part_path(&dest).exists());
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].range, None);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
}

#[test]
fn sha_mismatch_leaves_nothing() {
    let data = payload();
    let actual = sha256_hex(&data);
    let wrong = "0123456789abcdef".repeat(4);
    let server = Server::start(data.clone(), Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path();

    let err = download_into(
        &server.url(),
        cache,
        FILE_NAME,
        Some(&wrong),
        Some(data.len() as u64),
        false,
    )
    .expect_err("hash mismatch must fail");
    let msg = message(&err);
    assert!(msg.contains(&wrong), "expected hash not named: {msg}");
    assert!(msg.contains(&actual), "actual hash not named: {msg}");
    assert!(msg.contains(&server.url()), "{msg}");
    assert!(!cache.join(FILE_NAME).exists());
    assert!(!part_path(&cache.join(FILE_NAME)).exists(), ".part left");
}

#[test]
fn not_found_names_url_and_status() {
    let data = payload();
    let server = Server::start(
        data,
        Behaviour {
            not_found: true,
            ..Behaviour::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let err = download_into(&server.url(), dir.path(), FILE_NAME, None, None, false)
        .expect_err("404 must fail");
    let msg = message(&err);
    assert!(msg.contains(&server.url()), "{msg}");
    assert!(msg.contains("404"), "{msg}");
    assert!(!dir.path().join(FILE_NAME).exists());
}

#[test]
fn server_ignoring_range_restarts_from_zero() {
    let data = payload();
    let sha = sha256_hex(&data);
    let server = Server::start(
        data.clone(),
        Behaviour {
            ignore_range: true,
            ..Behaviour::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(FILE_NAME);
    let third = data.len() / 3;
    std::fs::write(part_path(&dest), &data[..third]).unwrap();

    download_file(
        &server.url(),
        &dest,
        Some(&sha),
        Some(data.len() as u64),
        false,
    )
    .expect("download despite ignored range");
    assert_eq!(read(&dest), data);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].range.as_deref(),
        Some(format!("bytes={third}-").as_str())
    );
}

#[test]
fn complete_part_is_verified_without_refetching() {
    let data = payload();
    let sha = sha256_hex(&data);
    let server = Server::start(data.clone(), Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(FILE_NAME);
    std::fs::write(part_path(&dest), &data).unwrap();
    download_file(
        &server.url(),
        &dest,
        Some(&sha),
        Some(data.len() as u64),
        false,
    )
    .expect("complete .part");
    assert_eq!(read(&dest), data);
    assert!(server.seen().is_empty());
}

#[test]
fn connection_refused_is_a_clear_error() {
    // Bind then drop a listener: its port is (very likely) closed now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/{FILE_NAME}");
    let dir = tempfile::tempdir().unwrap();
    let err = download_into(&url, dir.path(), FILE_NAME, None, None, false)
        .expect_err("nothing listens there");
    let msg = message(&err);
    assert!(matches!(err, Error::Download { .. }), "{msg}");
    assert!(msg.contains(&url), "{msg}");
}

#[test]
fn unreachable_checkpoint_error_says_what_to_do() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let opts = DownloadOptions {
        progress: false,
        base_url: Some(format!("http://127.0.0.1:{port}")),
    };
    let variant = SamVariant::VitB;
    let err = ensure_checkpoint_in(variant, dir.path(), &opts).expect_err("unreachable");
    let msg = message(&err);
    let dest = checkpoint_path_in(dir.path(), variant);
    assert!(
        msg.contains(&format!("http://127.0.0.1:{port}/sam_vit_b_01ec64.pth")),
        "{msg}"
    );
    assert!(msg.contains(&variant.checkpoint_url()), "{msg}");
    assert!(msg.contains(&dest.display().to_string()), "{msg}");
    assert!(msg.contains("--checkpoint PATH"), "{msg}");
}

#[test]
fn cached_checkpoint_checks_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let variant = SamVariant::VitB;
    assert_eq!(cached_checkpoint_in(dir.path(), variant).unwrap(), None);
    let path = checkpoint_path_in(dir.path(), variant);
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(1000).unwrap();
    assert_eq!(cached_checkpoint_in(dir.path(), variant).unwrap(), None);
    // A sparse file of the official size counts as cached (the hash is checked at download).
    file.set_len(variant.checkpoint_size()).unwrap();
    drop(file);
    assert_eq!(
        cached_checkpoint_in(dir.path(), variant).unwrap(),
        Some(path.clone())
    );
    let opts = DownloadOptions {
        progress: false,
        base_url: Some("http://127.0.0.1:9/".into()),
    };
    assert_eq!(
        ensure_checkpoint_in(variant, dir.path(), &opts).unwrap(),
        path
    );
}

#[test]
fn bad_expected_sha_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = download_into(
        "http://127.0.0.1:9/x",
        dir.path(),
        FILE_NAME,
        Some("abc"),
        None,
        false,
    )
    .expect_err("bad sha");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}
