//! Envfile problems, located in the file the user wrote and printed the way
//! compilers do: the message, `--> file:line:column`, the line, a caret, and
//! a hint.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::render::Rendered;

/// One step in a path to a value: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Idx(usize),
}

/// A path to a value inside the Envfile, such as `machines.web.forward[1].host`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        Self::default()
    }

    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    pub fn idx(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Idx(i));
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Idx(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A problem found in the rendered Envfile, with the byte range it is about.
#[derive(Debug, Clone)]
pub struct Problem {
    pub message: String,
    pub span: Option<Range<usize>>,
    pub help: Option<String>,
}

/// What the parsed document lets us look up: spans of keys and values.
pub struct Spans<'a> {
    root: &'a Spanned<DeTable<'a>>,
}

impl<'a> Spans<'a> {
    pub fn new(root: &'a Spanned<DeTable<'a>>) -> Self {
        Self { root }
    }

    fn lookup(&self, path: &KeyPath) -> Option<(Option<Range<usize>>, Range<usize>)> {
        let mut key_span = None;
        let mut span = self.root.span();
        let mut table: Option<&DeTable<'_>> = Some(self.root.get_ref());
        let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
        for seg in &path.0 {
            let next: &Spanned<DeValue<'_>> = match seg {
                Seg::Key(k) => {
                    let (key, value) = table?.iter().find(|(key, _)| key.get_ref() == k)?;
                    key_span = Some(key.span());
                    value
                }
                Seg::Idx(i) => {
                    key_span = None;
                    array?.get(*i)?
                }
            };
            span = next.span();
            table = None;
            array = None;
            match next.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        Some((key_span, span))
    }

    /// The span of the value at `path`, or of the nearest enclosing value
    /// that exists.
    pub fn value(&self, path: &KeyPath) -> Option<Range<usize>> {
        let mut p = path.clone();
        loop {
            if let Some((_, span)) = self.lookup(&p) {
                return Some(span);
            }
            p.0.pop()?;
        }
    }

    /// The span of the key at the end of `path` (falls back to the value).
    pub fn key(&self, path: &KeyPath) -> Option<Range<usize>> {
        match self.lookup(path) {
            Some((Some(k), _)) => Some(k),
            _ => self.value(path),
        }
    }

    /// The path of the deepest key or value whose span holds `offset`.
    pub fn path_at(&self, offset: usize) -> KeyPath {
        fn contains(s: Range<usize>, offset: usize) -> bool {
            s.start <= offset && offset < s.end.max(s.start + 1)
        }
        fn in_table(t: &DeTable<'_>, offset: usize) -> Option<Vec<Seg>> {
            for (k, v) in t.iter() {
                if contains(k.span(), offset) {
                    return Some(vec![Seg::Key(k.get_ref().to_string())]);
                }
                if let Some(mut sub) = in_value(v, offset) {
                    sub.insert(0, Seg::Key(k.get_ref().to_string()));
                    return Some(sub);
                }
            }
            None
        }
        fn in_value(v: &Spanned<DeValue<'_>>, offset: usize) -> Option<Vec<Seg>> {
            let deeper = match v.get_ref() {
                DeValue::Table(t) => in_table(t, offset),
                DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                    in_value(item, offset).map(|mut sub| {
                        sub.insert(0, Seg::Idx(i));
                        sub
                    })
                }),
                _ => None,
            };
            deeper.or_else(|| contains(v.span(), offset).then(Vec::new))
        }
        KeyPath(in_table(self.root.get_ref(), offset).unwrap_or_default())
    }
}

/// A problem placed in the user's file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub message: String,
    /// 1-based line in the user's file, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the line rendered unchanged.
    pub column: Option<usize>,
    pub width: usize,
    /// The user's line.
    pub source_line: Option<String>,
    /// The rendered line, when it differs from the user's (or the user's is unknown).
    pub rendered: Option<(usize, String, usize)>,
    pub help: Option<String>,
}

/// Line (1-based), column (1-based, characters) of a byte offset.
/// `offset` moved back to the start of the character it falls in: spans
/// from other parsers (the template engine's) may point inside one.
fn char_floor(text: &str, offset: usize) -> usize {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = char_floor(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

fn nth_line(text: &str, line: usize) -> Option<&str> {
    text.split('\n')
        .nth(line.checked_sub(1)?)
        .map(|l| l.trim_end_matches('\r'))
}

impl Diagnostic {
    /// Place a problem found in the rendered text into the source.
    pub fn locate(source: &str, rendered: &Rendered, p: Problem) -> Self {
        let Some(span) = p.span else {
            return Self::unplaced(p.message, p.help);
        };
        let (rline, rcol) = line_col(&rendered.text, span.start);
        let rtext = nth_line(&rendered.text, rline).unwrap_or("").to_owned();
        let width = rendered.text
            [span.start.min(rendered.text.len())..span.end.min(rendered.text.len())]
            .split('\n')
            .next()
            .map_or(1, |s| s.chars().count().max(1));
        match rendered.source_line(rline) {
            Some(sline) => {
                let stext = nth_line(source, sline).unwrap_or("").to_owned();
                let same = stext == rtext;
                Self {
                    message: p.message,
                    line: Some(sline),
                    column: same.then_some(rcol),
                    width,
                    source_line: Some(stext),
                    rendered: (!same).then_some((rline, rtext, rcol)),
                    help: p.help,
                }
            }
            None => Self {
                message: p.message,
                line: None,
                column: None,
                width,
                source_line: None,
                rendered: Some((rline, rtext, rcol)),
                help: p.help,
            },
        }
    }

    /// A problem found directly in the source (template errors).
    pub fn in_source(
        source: &str,
        message: String,
        line: Option<usize>,
        range: Option<Range<usize>>,
    ) -> Self {
        let Some(line) = line else {
            return Self::unplaced(message, None);
        };
        let (column, width) = match range {
            Some(r) if r.start <= source.len() => {
                let (l, c) = line_col(source, r.start);
                let start = char_floor(source, r.start);
                let end = char_floor(source, r.end).max(start);
                let w = source[start..end]
                    .split('\n')
                    .next()
                    .map_or(1, |s| s.chars().count().max(1));
                if l == line { (Some(c), w) } else { (None, 1) }
            }
            _ => (None, 1),
        };
        Self {
            message,
            line: Some(line),
            column,
            width,
            source_line: nth_line(source, line).map(str::to_owned),
            rendered: None,
            help: None,
        }
    }

    pub fn unplaced(message: String, help: Option<String>) -> Self {
        Self {
            message,
            line: None,
            column: None,
            width: 1,
            source_line: None,
            rendered: None,
            help,
        }
    }
}

/// All the problems of one Envfile; printing it prints every one of them.
#[derive(Debug)]
pub struct EnvfileError {
    pub path: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl EnvfileError {
    pub fn new(path: &Path, diagnostics: Vec<Diagnostic>) -> Self {
        Self {
            path: path.to_owned(),
            diagnostics,
        }
    }
}

fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

impl fmt::Display for EnvfileError {
    /// The first message comes bare (the caller prefixes `error: `); the
    /// others carry their own prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = display_path(&self.path);
        for (n, d) in self.diagnostics.iter().enumerate() {
            if n > 0 {
                write!(f, "\n\nerror: ")?;
            }
            write!(f, "{}", d.message)?;
            let gutter = d
                .line
                .into_iter()
                .chain(d.rendered.as_ref().map(|r| r.0))
                .max()
                .unwrap_or(1)
                .to_string()
                .len();
            let pad = " ".repeat(gutter);
            match (d.line, d.column) {
                (Some(l), Some(c)) => write!(f, "\n{pad}--> {path}:{l}:{c}")?,
                (Some(l), None) => write!(f, "\n{pad}--> {path}:{l}")?,
                (None, _) => write!(f, "\n{pad}--> {path}")?,
            }
            if let (Some(l), Some(text)) = (d.line, &d.source_line) {
                let (text, col, width) = window(text, d.column, d.width);
                write!(f, "\n{pad} |\n{l:>gutter$} | {text}")?;
                if let Some(c) = col {
                    let lead = " ".repeat(c - 1);
                    write!(f, "\n{pad} | {lead}{}", "^".repeat(width))?;
                }
            }
            if let Some((rl, text, c)) = &d.rendered {
                let what = if d.line.is_some() {
                    "after templating, this line reads"
                } else {
                    "in the rendered Envfile"
                };
                let (text, c, width) = window(text, Some(*c), d.width);
                let c = c.unwrap_or(1);
                write!(f, "\n{pad} = note: {what} (rendered line {rl}):")?;
                write!(f, "\n{pad} | {text}")?;
                write!(f, "\n{pad} | {}{}", " ".repeat(c - 1), "^".repeat(width))?;
            }
            if let Some(h) = &d.help {
                write!(f, "\n{pad} = help: {h}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for EnvfileError {}

/// A line as a diagnostic shows it: whole when short, else a window of it
/// around column `col` (1-based, in characters) with `…` where it is cut,
/// and the column and caret width in that window. A template can make a
/// line of megabytes; the error that points into it stays a few lines.
fn window(text: &str, col: Option<usize>, width: usize) -> (String, Option<usize>, usize) {
    const BEFORE: usize = 60;
    const SHOWN: usize = 160;
    let n = text.chars().count();
    if n <= SHOWN {
        return (text.to_owned(), col, width);
    }
    let c = col.unwrap_or(1);
    let start = c.saturating_sub(BEFORE + 1);
    let end = (start + SHOWN).min(n);
    let mut shown = String::new();
    let mut at = c - start;
    if start > 0 {
        shown.push('…');
        at += 1;
    }
    shown.extend(text.chars().skip(start).take(end - start));
    if end < n {
        shown.push('…');
    }
    (shown, col.map(|_| at), width.min(SHOWN - BEFORE))
}

/// The closest of `candidates` to `word`, if any is close enough to be a
/// likely typo.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let lev = strsim::levenshtein(&word.to_lowercase(), &c.to_lowercase());
        let score = if lev <= 2.max(c.len() / 4) && lev < c.len() {
            2.0 - lev as f64 / 10.0
        } else {
            strsim::jaro_winkler(word, c)
        };
        if score >= 0.85 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_show_a_window() {
        let line = format!("{}bad{}", "a".repeat(10_000), "b".repeat(10_000));
        let (shown, col, width) = window(&line, Some(10_001), 3);
        assert!(shown.chars().count() < 200, "{}", shown.len());
        let col = col.unwrap();
        assert_eq!(
            shown.chars().skip(col - 1).take(3).collect::<String>(),
            "bad"
        );
        assert_eq!(width, 3);
        assert_eq!(
            window("short", Some(2), 1),
            ("short".to_owned(), Some(2), 1)
        );
    }

    #[test]
    fn suggestions() {
        let keys = ["box", "backend", "memory", "depends_on", "provision"];
        assert_eq!(did_you_mean("bxo", keys), Some("box"));
        assert_eq!(did_you_mean("memroy", keys), Some("memory"));
        assert_eq!(did_you_mean("depends", keys), Some("depends_on"));
        assert_eq!(did_you_mean("provisioner", keys), Some("provision"));
        assert_eq!(did_you_mean("zzzzzz", keys), None);
    }

    #[test]
    fn spans_by_path() {
        let text = "[machines.web]\nbox = \"x\"\nforward = [{ guest = 1, host = 2 }]\n";
        let doc = DeTable::parse(text).unwrap();
        let spans = Spans::new(&doc);
        let p = KeyPath::root()
            .key("machines")
            .key("web")
            .key("forward")
            .idx(0)
            .key("host");
        let s = spans.value(&p).unwrap();
        assert_eq!(&text[s], "2");
        let k = spans
            .key(&KeyPath::root().key("machines").key("web").key("box"))
            .unwrap();
        assert_eq!(&text[k], "box");
        assert_eq!(p.to_string(), "machines.web.forward[0].host");
    }
}
