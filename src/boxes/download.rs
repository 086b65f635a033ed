//! Downloads that hash while they stream, resume where they stopped, retry
//! with backoff, fall back to mirrors, and keep nothing that does not match.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::archive::hex;
use crate::ui::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot download {url}: {reason}")]
    Failed { url: String, reason: String },
    #[error("{url} sent bytes that do not match: expected sha256 {expected}, got {actual}")]
    Mismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("every source failed: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<DownloadError>),
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
}

/// A finished download, waiting in the downloads directory.
#[derive(Debug)]
pub struct Downloaded {
    pub path: PathBuf,
    pub sha256: crate::ident::Digest,
    pub url: String,
}

/// Tries per mirror, and the first pause between them (doubling).
const TRIES: u32 = 4;
const FIRST_PAUSE: Duration = Duration::from_millis(200);

/// A failed attempt: worth trying the same URL again, or not.
struct Attempt {
    retry: bool,
    reason: String,
}

/// How long a server may send nothing (before its headers, or between
/// two reads of the body) before the attempt fails; `ENVUP_READ_TIMEOUT`
/// (seconds) changes it.
pub fn read_timeout() -> Duration {
    std::env::var("ENVUP_READ_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

/// The slowest a server may send: fewer than `bytes_per_sec` bytes a
/// second over any `window` fails the attempt, as curl's `--speed-limit`
/// and `--speed-time` do (a server that sends a byte now and then holds no
/// `up` for ever). `ENVUP_MIN_RATE` (bytes a second, 0 for none) and
/// `ENVUP_MIN_RATE_TIME` (seconds) change them: 1024 and 30.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    pub bytes_per_sec: u64,
    pub window: Duration,
}

impl MinRate {
    pub fn from_env() -> MinRate {
        let num = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
        MinRate {
            bytes_per_sec: num("ENVUP_MIN_RATE").unwrap_or(1024),
            window: Duration::from_secs(
                num("ENVUP_MIN_RATE_TIME").filter(|&s| s > 0).unwrap_or(30),
            ),
        }
    }

    /// What a too-slow server is told it did.
    fn words(&self, got: u64, over: Duration) -> String {
        format!(
            "the server sent {got} bytes in {} s, slower than the {} bytes a second over {} s \
             envup waits for (ENVUP_MIN_RATE, ENVUP_MIN_RATE_TIME)",
            over.as_secs(),
            self.bytes_per_sec,
            self.window.as_secs()
        )
    }
}

/// A reader that fails when what it reads comes in slower than a
/// [`MinRate`].
pub(crate) struct Paced<R> {
    inner: R,
    rate: MinRate,
    since: std::time::Instant,
    got: u64,
}

impl<R> Paced<R> {
    pub(crate) fn new(inner: R, rate: MinRate) -> Self {
        Paced {
            inner,
            rate,
            since: std::time::Instant::now(),
            got: 0,
        }
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.got += n as u64;
        let over = self.since.elapsed();
        if self.rate.bytes_per_sec > 0 && over >= self.rate.window {
            if self.got < self.rate.bytes_per_sec.saturating_mul(over.as_secs()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    TooSlow(self.rate.words(self.got, over)),
                ));
            }
            self.since = std::time::Instant::now();
            self.got = 0;
        }
        Ok(n)
    }
}

/// A server slower than the [`MinRate`].
#[derive(Debug)]
pub(crate) struct TooSlow(pub String);

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TooSlow {}

/// The most bytes one download may bring: 64 GiB, or
/// `ENVUP_MAX_DOWNLOAD` (bytes).
pub fn max_download() -> u64 {
    std::env::var("ENVUP_MAX_DOWNLOAD")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(64 << 30)
}

/// How often (in bytes written) a download looks at the free space again.
const SPACE_CHECK_EVERY: u64 = 16 << 20;

pub(crate) fn client() -> reqwest::blocking::Client {
    // The blocking client's timeout bounds the wait for the headers and
    // each read of the body, not the whole transfer.
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(read_timeout())
        .user_agent(concat!("envup/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds")
}

/// A partial download: its file, and the hash of the bytes it holds.
struct Part {
    path: PathBuf,
    file: File,
    hash: Sha256,
    len: u64,
}

impl Part {
    /// Open (or start) the part file, hashing what it already holds.
    fn open(path: &Path) -> Result<Part, DownloadError> {
        let werr = |e| DownloadError::Write(path.to_owned(), e);
        if let Some(dir) = path.parent() {
            crate::state::create_private_dir(dir).map_err(werr)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(werr)?;
        let mut hash = Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        file.seek(SeekFrom::Start(0)).map_err(werr)?;
        loop {
            let n = file.read(&mut buf).map_err(werr)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Part {
            path: path.to_owned(),
            file,
            hash,
            len,
        })
    }

    fn restart(&mut self) -> Result<(), DownloadError> {
        self.file
            .set_len(0)
            .map_err(|e| DownloadError::Write(self.path.clone(), e))?;
        self.hash = Sha256::new();
        self.len = 0;
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), DownloadError> {
        self.file
            .write_all(bytes)
            .map_err(|e| DownloadError::Write(self.path.clone(), e))?;
        self.hash.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// One request: resume from `part.len` when it holds bytes; start over
/// when the server ignores the range.
fn attempt(
    client: &reqwest::blocking::Client,
    url: &str,
    part: &mut Part,
    reporter: &dyn Reporter,
) -> Result<(), Attempt> {
    let mut req = client.get(url);
    if part.len > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={}-", part.len));
    }
    let resp = req.send().map_err(|e| Attempt {
        retry: true,
        reason: error_words(&e),
    })?;
    let status = resp.status();
    let total = match status.as_u16() {
        206 => {
            let range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !range.starts_with(&format!("bytes {}-", part.len)) {
                part.restart().map_err(|e| Attempt {
                    retry: false,
                    reason: e.to_string(),
                })?;
                return Err(Attempt {
                    retry: true,
                    reason: format!("the server resumed at the wrong place ({range})"),
                });
            }
            range.rsplit('/').next().and_then(|t| t.parse::<u64>().ok())
        }
        200 => {
            if part.len > 0 {
                tracing::info!("{url} ignored the range request; starting over");
                part.restart().map_err(|e| Attempt {
                    retry: false,
                    reason: e.to_string(),
                })?;
            }
            resp.content_length()
        }
        416 if part.len > 0 => return Ok(()), // the part is already whole; the hash decides
        s if (500..600).contains(&s) || s == 429 => {
            return Err(Attempt {
                retry: true,
                reason: format!("HTTP {status}"),
            });
        }
        _ => {
            return Err(Attempt {
                retry: false,
                reason: format!("HTTP {status}"),
            });
        }
    };
    let cap = max_download();
    let fatal = |reason: String| Attempt {
        retry: false,
        reason,
    };
    if let Some(t) = total {
        if t > cap {
            return Err(fatal(format!(
                "the server offers {t} bytes, more than envup takes in one download ({cap}; ENVUP_MAX_DOWNLOAD)"
            )));
        }
        if let Some(dir) = part.path.parent() {
            crate::host::check_space(dir, t.saturating_sub(part.len))
                .map_err(|e| fatal(e.to_string()))?;
        }
    }
    let progress = reporter.transfer(url, total);
    progress.set(part.len);
    let mut next_space_check = part.len + SPACE_CHECK_EVERY;
    let mut buf = vec![0u8; 256 * 1024];
    let mut resp = Paced::new(resp, MinRate::from_env());
    loop {
        let n = match resp.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                progress.finish();
                if let Some(slow) = e.get_ref().and_then(|i| i.downcast_ref::<TooSlow>()) {
                    return Err(Attempt {
                        retry: true,
                        reason: format!("{slow} (after {} bytes)", part.len),
                    });
                }
                let timed_out = e.kind() == std::io::ErrorKind::TimedOut
                    || e.get_ref()
                        .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
                        .is_some_and(reqwest::Error::is_timeout);
                let reason = if timed_out {
                    format!(
                        "the server sent nothing for {} s after {} bytes",
                        read_timeout().as_secs(),
                        part.len
                    )
                } else {
                    format!("the connection broke after {} bytes ({e})", part.len)
                };
                return Err(Attempt {
                    retry: true,
                    reason,
                });
            }
        };
        if n == 0 {
            break;
        }
        if part.len + n as u64 > total.unwrap_or(cap).min(cap) {
            progress.finish();
            return Err(fatal(format!(
                "the server sent more than the {} bytes {}",
                total.unwrap_or(cap).min(cap),
                if total.is_some_and(|t| t <= cap) {
                    "it announced"
                } else {
                    "envup takes in one download (ENVUP_MAX_DOWNLOAD)"
                }
            )));
        }
        part.append(&buf[..n]).map_err(|e| fatal(e.to_string()))?;
        if part.len >= next_space_check {
            next_space_check = part.len + SPACE_CHECK_EVERY;
            if let Some(dir) = part.path.parent()
                && let Err(e) = crate::host::check_space(dir, SPACE_CHECK_EVERY)
            {
                progress.finish();
                return Err(fatal(e.to_string()));
            }
        }
        progress.set(part.len);
    }
    progress.finish();
    if let Some(t) = total
        && part.len < t
    {
        return Err(Attempt {
            retry: true,
            reason: format!("the server stopped after {} of {t} bytes", part.len),
        });
    }
    Ok(())
}

fn error_words(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// Download from the first of `urls` that works into `dir`, checking the
/// bytes against `expected` (hex sha256) when given. A partial download
/// from an earlier run is resumed.
pub fn fetch(
    urls: &[String],
    expected: Option<&crate::ident::Digest>,
    dir: &Path,
    reporter: &dyn Reporter,
) -> Result<Downloaded, DownloadError> {
    // The part file's name is a digest, never a string from outside.
    let key = match expected {
        Some(d) => d.to_string(),
        None => hex(&Sha256::digest(
            urls.first().map_or("", String::as_str).as_bytes(),
        )),
    };
    let part_path = dir.join(format!("{key}.part"));
    let client = client();
    let mut errors = Vec::new();
    for url in urls {
        let mut part = Part::open(&part_path)?;
        let mut pause = FIRST_PAUSE;
        let mut last = String::new();
        let mut done = false;
        let mut resumable = true;
        for n in 1..=TRIES {
            match attempt(&client, url, &mut part, reporter) {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(a) => {
                    last = a.reason;
                    resumable = a.retry;
                    if !a.retry || n == TRIES {
                        break;
                    }
                    reporter.note(&format!(
                        "download of {url} failed ({last}); trying again in {}ms",
                        pause.as_millis()
                    ));
                    std::thread::sleep(pause);
                    pause *= 2;
                }
            }
        }
        if !done {
            // A stall or a broken connection keeps what arrived, to resume
            // next time; a refusal (too large, no space) or nothing at all
            // keeps nothing.
            if part.len == 0 || !resumable {
                drop(part);
                let _ = std::fs::remove_file(&part_path);
            }
            errors.push(DownloadError::Failed {
                url: url.clone(),
                reason: last,
            });
            continue;
        }
        let actual = crate::ident::Digest::from_sha256(&part.hash.clone().finalize());
        match expected {
            Some(exp) if *exp != actual => {
                drop(part);
                let _ = std::fs::remove_file(&part_path);
                errors.push(DownloadError::Mismatch {
                    url: url.clone(),
                    expected: exp.to_string(),
                    actual: actual.to_string(),
                });
            }
            _ => {
                return Ok(Downloaded {
                    path: part_path,
                    sha256: actual,
                    url: url.clone(),
                });
            }
        }
    }
    Err(match errors.len() {
        1 => errors.remove(0),
        _ => DownloadError::AllFailed(errors),
    })
}
