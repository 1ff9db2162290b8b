//! Downloading the official SAM checkpoints into a local cache.
//!
//! Checkpoints are fetched over HTTP(S) into `<cache>/<file>.part`, resumed with a `Range`
//! request when a partial file is already there, checked against the expected size and
//! SHA-256, and only then renamed into `<cache>/<file>`: a file in the cache under its final
//! name is always complete.
//!
//! The cache directory is `$SAM_CACHE_DIR` when set, else the platform cache directory
//! followed by `segment-anything` (e.g. `~/.cache/segment-anything` on Linux). The base URL
//! is `$SAM_WEIGHTS_BASE_URL` when set, else [`OFFICIAL_WEIGHTS_BASE_URL`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::config::{SamVariant, OFFICIAL_WEIGHTS_BASE_URL};
use crate::error::{Error, Result};

/// Environment variable that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "SAM_CACHE_DIR";
/// Environment variable that overrides the base URL the checkpoints are downloaded from.
pub const BASE_URL_ENV: &str = "SAM_WEIGHTS_BASE_URL";

/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for the response headers to arrive.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for any single read of the response body (a stalled transfer).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Buffer size for streaming and hashing.
const CHUNK: usize = 1 << 16;

/// The cache directory: `$SAM_CACHE_DIR` if set, else `<platform cache dir>/segment-anything`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV) {
        if !dir.is_empty() {
            return Ok(PathBuf::from(dir));
        }
    }
    match dirs::cache_dir() {
        Some(dir) => Ok(dir.join("segment-anything")),
        None => Err(Error::Config(format!(
            "cannot determine the platform cache directory; set ${CACHE_DIR_ENV} to choose one"
        ))),
    }
}

/// The base URL of the checkpoints: `$SAM_WEIGHTS_BASE_URL` if set (with a trailing `/`),
/// else the official one.
pub fn weights_base_url() -> String {
    match std::env::var(BASE_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => with_trailing_slash(url.trim()),
        _ => OFFICIAL_WEIGHTS_BASE_URL.to_string(),
    }
}

fn with_trailing_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// Where the checkpoint of `variant` lives inside `cache_dir` (whether or not it is there).
pub fn checkpoint_path_in(cache_dir: &Path, variant: SamVariant) -> PathBuf {
    cache_dir.join(variant.checkpoint_file_name())
}

/// The cached checkpoint of `variant` in [`cache_dir()`], if a complete one is there.
///
/// "Complete" means a regular file of the official size; the hash is checked once, when the
/// file is downloaded, not on every call.
pub fn cached_checkpoint(variant: SamVariant) -> Result<Option<PathBuf>> {
    cached_checkpoint_in(&cache_dir()?, variant)
}

/// Like [`cached_checkpoint`], in an explicit cache directory.
pub fn cached_checkpoint_in(cache_dir: &Path, variant: SamVariant) -> Result<Option<PathBuf>> {
    let path = checkpoint_path_in(cache_dir, variant);
    match fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.len() == variant.checkpoint_size() => Ok(Some(path)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// Options of [`download_checkpoint`] and [`ensure_checkpoint`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Base URL to download from instead of [`weights_base_url()`] (a trailing `/` is added
    /// if missing).
    pub base_url: Option<String>,
}

impl DownloadOptions {
    fn base_url(&self) -> String {
        match &self.base_url {
            Some(url) => with_trailing_slash(url.trim()),
            None => weights_base_url(),
        }
    }
}

/// Download the official checkpoint of `variant` into [`cache_dir()`] and return its path.
///
/// Always downloads (resuming a partial `.part` file if there is one), even when the
/// checkpoint is already cached; see [`ensure_checkpoint`] for the cached-or-download variant.
pub fn download_checkpoint(variant: SamVariant, opts: &DownloadOptions) -> Result<PathBuf> {
    download_checkpoint_into(variant, &cache_dir()?, opts)
}

/// Like [`download_checkpoint`], into an explicit cache directory.
pub fn download_checkpoint_into(
    variant: SamVariant,
    cache_dir: &Path,
    opts: &DownloadOptions,
) -> Result<PathBuf> {
    let file_name = variant.checkpoint_file_name();
    let url = format!("{}{}", opts.base_url(), file_name);
    download_into(
        &url,
        cache_dir,
        file_name,
        Some(variant.checkpoint_sha256()),
        Some(variant.checkpoint_size()),
        opts.progress,
    )
    .map_err(|e| with_manual_hint(e, variant, cache_dir))
}

/// The cached checkpoint of `variant` if there is one, else download it (see
/// [`download_checkpoint`]).
pub fn ensure_checkpoint(variant: SamVariant, opts: &DownloadOptions) -> Result<PathBuf> {
    ensure_checkpoint_in(variant, &cache_dir()?, opts)
}

/// Like [`ensure_checkpoint`], with an explicit cache directory.
pub fn ensure_checkpoint_in(
    variant: SamVariant,
    cache_dir: &Path,
    opts: &DownloadOptions,
) -> Result<PathBuf> {
    match cached_checkpoint_in(cache_dir, variant)? {
        Some(path) => Ok(path),
        None => download_checkpoint_into(variant, cache_dir, opts),
    }
}

/// Add to a download error of an official checkpoint how to get it by hand.
fn with_manual_hint(err: Error, variant: SamVariant, cache_dir: &Path) -> Error {
    match err {
        Error::Download { url, message } => Error::Download {
            message: format!(
                "{message}\nTo get the {name} checkpoint by hand, download {official} \
                 ({size} bytes, SHA-256 {sha}) and save it as {dest}; \
                 or pass `--checkpoint PATH` to use a checkpoint file you already have.",
                name = variant.name(),
                official = variant.checkpoint_url(),
                size = variant.checkpoint_size(),
                sha = variant.checkpoint_sha256(),
                dest = checkpoint_path_in(cache_dir, variant).display(),
            ),
            url,
        },
        other => other,
    }
}

/// Download `url` into `cache_dir/file_name` (creating `cache_dir`) with [`download_file`],
/// and return the final path.
pub fn download_into(
    url: &str,
    cache_dir: &Path,
    file_name: &str,
    expected_sha256: Option<&str>,
    expected_size: Option<u64>,
    progress: bool,
) -> Result<PathBuf> {
    if file_name.is_empty()
        || file_name.contains(['/', '\\'])
        || file_name == "."
        || file_name == ".."
    {
        return Err(Error::arg(
            "file_name",
            format!("`{file_name}` is not a plain file name"),
        ));
    }
    let dest = cache_dir.join(file_name);
    download_file(url, &dest, expected_sha256, expected_size, progress)?;
    Ok(dest)
}

/// The `.part` file a download of `dest` goes to before it is verified.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Download `url` to `dest`, resumably, through `dest` + `.part`.
///
/// * An existing `.part` is resumed with `Range: bytes=N-`; a server that ignores the range
///   (answers 200) makes the download start again from zero.
/// * When given, the size and the SHA-256 (hex, either case) are checked before the `.part`
///   is renamed to `dest`. On a mismatch the `.part` is deleted and `dest` is left untouched.
/// * A dropped connection keeps the `.part`, so that the next call resumes it.
/// * `progress` draws a progress bar on stderr.
pub fn download_file(
    url: &str,
    dest: &Path,
    expected_sha256: Option<&str>,
    expected_size: Option<u64>,
    progress: bool,
) -> Result<()> {
    let expected_sha256 = match expected_sha256 {
        Some(sha) => Some(parse_sha256(sha)?),
        None => None,
    };
    if dest.file_name().is_none() {
        return Err(Error::arg(
            "dest",
            format!("{} does not name a file", dest.display()),
        ));
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let job = Job {
        url,
        dest,
        part: part_path(dest),
        expected_sha256,
        expected_size,
        progress,
    };
    job.run()
}

fn parse_sha256(sha: &str) -> Result<String> {
    let sha = sha.trim().to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::arg(
            "expected_sha256",
            format!("`{sha}` is not a SHA-256 (64 hexadecimal digits)"),
        ));
    }
    Ok(sha)
}

struct Job<'a> {
    url: &'a str,
    dest: &'a Path,
    part: PathBuf,
    expected_sha256: Option<String>,
    expected_size: Option<u64>,
    progress: bool,
}

/// What one HTTP exchange ended with.
enum Outcome {
    /// The `.part` holds the whole file; its SHA-256 is given.
    Complete(String),
    /// The server cannot resume the `.part` (bad `Content-Range`, 416...): start again from zero.
    Restart,
}

impl Job<'_> {
    fn run(&self) -> Result<()> {
        // At most two rounds: a resume that the server cannot honour restarts from zero once.
        let mut allow_resume = true;
        loop {
            if !allow_resume {
                self.remove_part()?;
            }
            let offset = self.part_len()?;
            let outcome = match (self.expected_size, offset) {
                (Some(size), off) if off > size => {
                    // Longer than the expected file: not a prefix of it.
                    self.remove_part()?;
                    continue;
                }
                (Some(size), off) if off == size && off > 0 => {
                    // A complete .part left by an earlier run: only verify it.
                    let sha = self.hash_part(off)?;
                    if self.sha_matches(&sha) {
                        Outcome::Complete(sha)
                    } else {
                        Outcome::Restart
                    }
                }
                _ => self.fetch(offset)?,
            };
            match outcome {
                Outcome::Complete(sha) => return self.finish(&sha),
                Outcome::Restart if allow_resume => allow_resume = false,
                Outcome::Restart => {
                    return Err(self.error("the server could not resume the download"))
                }
            }
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Download {
            url: self.url.to_string(),
            message: message.into(),
        }
    }

    fn io_error(&self, path: &Path, source: io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn part_len(&self) -> Result<u64> {
        match fs::metadata(&self.part) {
            Ok(meta) if meta.is_file() => Ok(meta.len()),
            Ok(_) => Err(self.io_error(
                &self.part,
                io::Error::other("exists and is not a regular file"),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(self.io_error(&self.part, e)),
        }
    }

    fn remove_part(&self) -> Result<()> {
        match fs::remove_file(&self.part) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error(&self.part, e)),
        }
    }

    fn sha_matches(&self, actual: &str) -> bool {
        self.expected_sha256
            .as_deref()
            .is_none_or(|expected| expected == actual)
    }

    fn agent(&self) -> ureq::Agent {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .user_agent(concat!("segment-anything-rs/", env!("CARGO_PKG_VERSION")));
        if is_loopback_url(self.url) {
            // Never send requests to this machine through a proxy.
            config = config.proxy(None);
        }
        config.build().into()
    }

    /// One GET of the URL, resuming from `offset`, appending to the `.part`.
    fn fetch(&self, offset: u64) -> Result<Outcome> {
        let agent = self.agent();
        let mut request = agent.get(self.url).header("Accept-Encoding", "identity");
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let response = request.call().map_err(|e| self.request_error(e))?;
        let status = response.status();
        let headers = response.headers();
        let content_length = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());

        let start = match status.as_u16() {
            206 if offset > 0 => {
                let range = headers
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                match range {
                    Some((first, total)) if first == offset => {
                        if let (Some(total), Some(size)) = (total, self.expected_size) {
                            if total != size {
                                return Err(self.size_mismatch(size, total));
                            }
                        }
                        offset
                    }
                    // A range that does not start where the .part ends: start again.
                    _ => return Ok(Outcome::Restart),
                }
            }
            // A 206 to a request without a range is unexpected; only a whole body will do.
            206 => {
                return Err(self.error(
                    "the server answered 206 Partial Content to a request for the whole file",
                ))
            }
            // 200 to a resumed request: the server ignored the range, the body is the whole file.
            200..=299 => {
                if let (Some(len), Some(size)) = (content_length, self.expected_size) {
                    if len != size {
                        return Err(self.size_mismatch(size, len));
                    }
                }
                0
            }
            416 if offset > 0 => return Ok(Outcome::Restart),
            _ => {
                let reason = status.canonical_reason().unwrap_or("");
                return Err(self.error(
                    format!("the server answered HTTP {} {reason}", status.as_u16())
                        .trim_end()
                        .to_string(),
                ));
            }
        };
        let total = match (self.expected_size, content_length) {
            (Some(size), _) => Some(size),
            (None, Some(len)) => Some(start + len),
            (None, None) => None,
        };

        let mut hasher = Sha256::new();
        let mut file = if start > 0 {
            // Hash what is already there, then append.
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.part)
                .map_err(|e| self.io_error(&self.part, e))?;
            hash_prefix(&mut file, start, &mut hasher).map_err(|e| self.io_error(&self.part, e))?;
            file.set_len(start)
                .and_then(|()| file.seek(SeekFrom::Start(start)).map(drop))
                .map_err(|e| self.io_error(&self.part, e))?;
            file
        } else {
            File::create(&self.part).map_err(|e| self.io_error(&self.part, e))?
        };

        let bar = self.progress_bar(total, start);
        let mut reader = response.into_body().into_reader();
        let mut buf = vec![0u8; CHUNK];
        let mut written = start;
        let read_failure = loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Some(e),
            };
            if let Some(size) = self.expected_size {
                if written + n as u64 > size {
                    drop(file);
                    bar.abandon();
                    self.remove_part()?;
                    return Err(self.error(format!(
                        "the server sent more than the expected {size} bytes; \
                         the partial download was deleted"
                    )));
                }
            }
            file.write_all(&buf[..n])
                .map_err(|e| self.io_error(&self.part, e))?;
            hasher.update(&buf[..n]);
            written += n as u64;
            bar.set_position(written);
        };
        file.flush()
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io_error(&self.part, e))?;
        drop(file);
        bar.finish_and_clear();

        let incomplete = |what: String| {
            self.error(format!(
                "{what} after {written}{} bytes; the partial download is kept in {} \
                 and the next attempt resumes it",
                total.map(|t| format!(" of {t}")).unwrap_or_default(),
                self.part.display()
            ))
        };
        if let Some(e) = read_failure {
            return Err(incomplete(format!("connection lost ({e})")));
        }
        if let Some(expected) = content_length.map(|len| start + len) {
            if written < expected {
                return Err(incomplete("connection closed early".to_string()));
            }
        }
        if let Some(size) = self.expected_size {
            if written < size {
                return Err(incomplete("the transfer ended early".to_string()));
            }
        }
        Ok(Outcome::Complete(hex(&hasher.finalize())))
    }

    /// Verify the hash of the complete `.part` and move it into place.
    fn finish(&self, actual_sha: &str) -> Result<()> {
        if let Some(expected) = &self.expected_sha256 {
            if expected != actual_sha {
                self.remove_part()?;
                return Err(self.error(format!(
                    "SHA-256 mismatch for {}: expected {expected}, got {actual_sha}; \
                     the download was deleted",
                    self.dest.display()
                )));
            }
        }
        fs::rename(&self.part, self.dest).map_err(|e| self.io_error(self.dest, e))
    }

    fn size_mismatch(&self, expected: u64, actual: u64) -> Error {
        self.error(format!(
            "the server reports a size of {actual} bytes, expected {expected}"
        ))
    }

    fn request_error(&self, err: ureq::Error) -> Error {
        let message = match &err {
            ureq::Error::ConnectionFailed => "cannot connect to the server".to_string(),
            ureq::Error::HostNotFound => "host not found (is the network reachable?)".to_string(),
            ureq::Error::Timeout(t) => format!("timed out ({t})"),
            ureq::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                "connection refused".to_string()
            }
            ureq::Error::BadUri(uri) => format!("invalid URL `{uri}`"),
            other => other.to_string(),
        };
        self.error(message)
    }

    fn hash_part(&self, len: u64) -> Result<String> {
        let mut hasher = Sha256::new();
        let mut file = File::open(&self.part).map_err(|e| self.io_error(&self.part, e))?;
        hash_prefix(&mut file, len, &mut hasher).map_err(|e| self.io_error(&self.part, e))?;
        Ok(hex(&hasher.finalize()))
    }

    fn progress_bar(&self, total: Option<u64>, position: u64) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let name = self
            .dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bar = match total {
            Some(total) => {
                let bar = ProgressBar::new(total);
                if let Ok(style) = ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar
            }
            None => {
                let bar = ProgressBar::new_spinner();
                if let Ok(style) =
                    ProgressStyle::with_template("{msg} {spinner} {bytes} ({bytes_per_sec})")
                {
                    bar.set_style(style);
                }
                bar
            }
        };
        bar.set_message(format!("downloading {name}"));
        bar.set_position(position);
        bar
    }
}

/// Hash the first `len` bytes of `file`.
fn hash_prefix(file: &mut File, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = (&mut *file).take(len);
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    if read != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("expected {len} bytes, found {read}"),
        ));
    }
    Ok(())
}

/// Parse `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`) into (FIRST, TOTAL).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < first {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first, total))
}

fn is_loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(h) = host.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn loopback() {
        assert!(is_loopback_url("http://127.0.0.1:8080/x"));
        assert!(is_loopback_url("http://localhost/x"));
        assert!(is_loopback_url("http://[::1]:80/x"));
        assert!(!is_loopback_url(
            "https://dl.fbaipublicfiles.com/segment_anything/"
        ));
    }

    #[test]
    fn part_file_name() {
        assert_eq!(
            part_path(Path::new("/c/sam_vit_b_01ec64.pth")),
            PathBuf::from("/c/sam_vit_b_01ec64.pth.part")
        );
    }

    #[test]
    fn trailing_slash() {
        let opts = DownloadOptions {
            progress: false,
            base_url: Some("http://example.com/mirror".into()),
        };
        assert_eq!(opts.base_url(), "http://example.com/mirror/");
    }
}
