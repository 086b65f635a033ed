//! A small HTTP/1.1 file server on 127.0.0.1 with the faults the download
//! code must survive.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// The first response stops halfway through the body and closes.
    DropHalfway,
    /// Drops halfway once, then answers range requests with the whole file.
    DropThenIgnoreRange,
    /// Answers with these bytes reversed.
    WrongBytes,
    /// Answers with this status and no body.
    Status(u16),
    /// Announces the whole file, sends this many bytes, then goes silent
    /// for a minute.
    StallAfter(usize),
    /// Sends zeros with no length until the client hangs up (at most
    /// 1 GiB).
    Endless,
    /// Announces this length, sends zeros until the client hangs up.
    Announces(u64),
    /// Announces the whole file, then sends one byte of it every this
    /// many milliseconds.
    Trickle(u64),
}

#[derive(Default)]
struct Routes {
    files: HashMap<String, (Vec<u8>, Mode)>,
    /// Requests seen: path and Range header.
    log: Vec<(String, Option<String>)>,
    dropped: HashMap<String, bool>,
}

#[derive(Clone)]
pub struct Server {
    pub base: String,
    routes: Arc<Mutex<Routes>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<Routes>> = Arc::default();
        let r = routes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let r = r.clone();
                std::thread::spawn(move || serve(stream, &r));
            }
        });
        Server { base, routes }
    }

    pub fn put(&self, path: &str, bytes: Vec<u8>, mode: Mode) -> String {
        self.routes
            .lock()
            .unwrap()
            .files
            .insert(path.to_owned(), (bytes, mode));
        format!("{}{path}", self.base)
    }

    pub fn requests(&self, path: &str) -> Vec<Option<String>> {
        self.routes
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn serve(stream: TcpStream, routes: &Mutex<Routes>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("range")
            {
                range = Some(v.trim().to_owned());
            }
        }
        let (file, first_drop) = {
            let mut r = routes.lock().unwrap();
            r.log.push((path.clone(), range.clone()));
            let file = r.files.get(&path).cloned();
            let first = !r.dropped.get(&path).copied().unwrap_or(false);
            if matches!(
                file,
                Some((_, Mode::DropHalfway | Mode::DropThenIgnoreRange))
            ) {
                r.dropped.insert(path.clone(), true);
            }
            (file, first)
        };
        let Some((mut body, mode)) = file else {
            let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        if let Mode::Status(code) = mode {
            let _ = write!(out, "HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\n\r\n");
            continue;
        }
        if mode == Mode::WrongBytes {
            body.reverse();
        }
        match mode {
            Mode::StallAfter(n) => {
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = out.write_all(&body[..n.min(body.len())]);
                let _ = out.flush();
                std::thread::sleep(std::time::Duration::from_secs(60));
                return;
            }
            Mode::Trickle(every) => {
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                for b in body {
                    if out.write_all(&[b]).and_then(|()| out.flush()).is_err() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(every));
                }
                return;
            }
            Mode::Endless | Mode::Announces(_) => {
                let head = match mode {
                    Mode::Announces(len) => format!("Content-Length: {len}\r\n"),
                    _ => "Connection: close\r\n".into(),
                };
                let _ = write!(out, "HTTP/1.1 200 OK\r\n{head}\r\n");
                let zeros = vec![0u8; 1 << 16];
                for _ in 0..(1 << 14) {
                    if out.write_all(&zeros).is_err() {
                        return;
                    }
                }
                return;
            }
            _ => {}
        }
        let total = body.len();
        let honour_range = mode != Mode::DropThenIgnoreRange || first_drop;
        let start = range
            .as_deref()
            .filter(|_| honour_range)
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
            .filter(|s| *s < total);
        let (status, slice) = match start {
            Some(s) => (
                format!(
                    "206 Partial Content\r\nContent-Range: bytes {s}-{}/{total}",
                    total - 1
                ),
                &body[s..],
            ),
            None => ("200 OK".to_owned(), &body[..]),
        };
        let _ = write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n\r\n",
            slice.len()
        );
        let drop_now = first_drop && matches!(mode, Mode::DropHalfway | Mode::DropThenIgnoreRange);
        if drop_now {
            let _ = out.write_all(&slice[..slice.len() / 2]);
            let _ = out.flush();
            return; // connection closed halfway
        }
        if out.write_all(slice).is_err() {
            return;
        }
    }
}
