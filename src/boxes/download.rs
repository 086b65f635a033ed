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
    pub sha256: String,
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

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(None::<Duration>)
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
            std::fs::create_dir_all(dir).map_err(werr)?;
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
    let mut resp = req.send().map_err(|e| Attempt {
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
    let progress = reporter.transfer(url, total);
    progress.set(part.len);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match resp.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                progress.finish();
                return Err(Attempt {
                    retry: true,
                    reason: format!("the connection broke after {} bytes ({e})", part.len),
                });
            }
        };
        if n == 0 {
            break;
        }
        part.append(&buf[..n]).map_err(|e| Attempt {
            retry: false,
            reason: e.to_string(),
        })?;
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
    expected: Option<&str>,
    dir: &Path,
    reporter: &dyn Reporter,
) -> Result<Downloaded, DownloadError> {
    let key = match expected {
        Some(d) => d.to_owned(),
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
        for n in 1..=TRIES {
            match attempt(&client, url, &mut part, reporter) {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(a) => {
                    last = a.reason;
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
            errors.push(DownloadError::Failed {
                url: url.clone(),
                reason: last,
            });
            continue;
        }
        let actual = hex(&part.hash.clone().finalize());
        match expected {
            Some(exp) if exp != actual => {
                drop(part);
                let _ = std::fs::remove_file(&part_path);
                errors.push(DownloadError::Mismatch {
                    url: url.clone(),
                    expected: exp.to_owned(),
                    actual,
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
