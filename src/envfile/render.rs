//! Rendering the Envfile with minijinja, keeping track of which line of the
//! user's file produced each line of the rendered TOML.
//!
//! minijinja does not report where output came from, so the mapping is found
//! by rendering a second copy of the template in which every source line
//! starts with an invisible marker that carries its line number. When that
//! copy, with the markers taken out, equals the real output, the markers tell
//! exactly which source line each output line came from. When it does not
//! (whitespace control that a marker would disturb), errors fall back to
//! naming the rendered line and showing its text.

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior, Value};

const MARK_OPEN: char = '\u{F8FF}';
const MARK_CLOSE: char = '\u{F8FE}';

/// The rendered Envfile and the map back to the source.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub text: String,
    map: LineMap,
}

#[derive(Debug, Clone)]
enum LineMap {
    /// The file has no template syntax: rendered line N is source line N.
    Identity,
    /// Rendered line index (0-based) to source line (1-based).
    Lines(Vec<usize>),
    /// The mapping could not be established.
    Unknown,
}

/// A template error, located in the source file.
#[derive(Debug, Clone)]
pub struct RenderError {
    pub message: String,
    /// 1-based line in the source.
    pub line: Option<usize>,
    /// Byte range in the source.
    pub range: Option<std::ops::Range<usize>>,
}

impl Rendered {
    /// The source line (1-based) that produced rendered line `line` (1-based),
    /// or `None` when it is not known.
    pub fn source_line(&self, line: usize) -> Option<usize> {
        match &self.map {
            LineMap::Identity => Some(line),
            LineMap::Lines(lines) => lines.get(line.checked_sub(1)?).copied(),
            LineMap::Unknown => None,
        }
    }

    /// True when the rendered text is the source text.
    pub fn is_identity(&self) -> bool {
        matches!(self.map, LineMap::Identity)
    }
}

fn has_template_syntax(source: &str) -> bool {
    source.contains("{{") || source.contains("{%") || source.contains("{#")
}

/// How much work (instructions, and bytes allocated or written) one
/// template may do. An Envfile that loops over a few hundred machines uses a
/// small part of it; `{{ [1] * 99999999 }}` or nested `range(100000)` loops
/// run out at once instead of taking the machine's memory or hanging
/// every command.
pub const FUEL: u64 = 2_000_000;

/// The longest sequence a template may print as a value.
pub const MAX_PRINTED_ITEMS: usize = 10_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(100);
    // Printing a sequence is one step to the engine, however long it is
    // (`{{ [1] * 99999999 }}` is a lazy list of that length): refuse long
    // ones before they are written out.
    env.set_formatter(|out, state, value| {
        if value.len().is_some_and(|n| n > MAX_PRINTED_ITEMS)
            && !value.is_undefined()
            && value.as_str().is_none()
        {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("a value with more than {MAX_PRINTED_ITEMS} items cannot be printed"),
            ));
        }
        minijinja::escape_formatter(out, state, value)
    });
    // Undefined values may be tested (`{% if env.CI %}`) but not printed:
    // a typo in `{{ env.HOEM }}` is an error, not an empty string.
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .expect("static syntax config is valid"),
    );
    env
}

/// Render `source` with `ctx` in scope.
pub fn render(source: &str, ctx: &Value) -> Result<Rendered, RenderError> {
    if !has_template_syntax(source) {
        return Ok(Rendered {
            text: source.to_owned(),
            map: LineMap::Identity,
        });
    }
    let env = environment();
    let text = env
        .render_str(source, ctx)
        .map_err(|e| to_render_error(&e))?;
    let map = match env.render_str(&mark_lines(source), ctx) {
        Ok(marked) => build_map(&marked, &text),
        Err(_) => LineMap::Unknown,
    };
    Ok(Rendered { text, map })
}

/// Render a template that is not an Envfile (provisioner scripts, init
/// templates) with the same settings.
pub fn render_plain(source: &str, ctx: &Value) -> Result<String, RenderError> {
    environment()
        .render_str(source, ctx)
        .map_err(|e| to_render_error(&e))
}

fn to_render_error(e: &minijinja::Error) -> RenderError {
    let mut message = e.kind().to_string();
    if e.kind() == minijinja::ErrorKind::OutOfFuel {
        message = format!(
            "the template does more work than envup allows ({FUEL} units): \
             a loop or a repeated value is far too large"
        );
    }
    if let Some(detail) = e.detail() {
        message = format!("{message}: {detail}");
    }
    RenderError {
        message: format!("template error: {message}"),
        line: e.line(),
        range: e.range(),
    }
}

/// Insert a marker at the start of every source line that starts outside a
/// template tag and whose whitespace control would not be changed by it.
fn mark_lines(source: &str) -> String {
    #[derive(PartialEq)]
    enum State {
        Text,
        Tag { close: u8, quote: Option<u8> },
    }
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len() + source.len() / 8);
    let mut state = State::Text;
    let mut line = 1usize;
    let mut line_start = 0usize;
    let mut prev_line_trims_after = false;
    // A line after a `-%}` gets its marker after its leading whitespace,
    // which the tag trims away.
    let mut pending: Option<usize> = None;
    let mut i = 0usize;
    while i <= bytes.len() {
        if i == line_start && state == State::Text {
            let rest = source[i..].trim_start_matches([' ', '\t']);
            let trims_before = ["{%-", "{{-", "{#-"].iter().any(|t| rest.starts_with(t));
            if prev_line_trims_after {
                pending = Some(line);
            } else if !trims_before {
                push_marker(&mut out, line);
            }
        }
        if i == bytes.len() {
            break;
        }
        let b = bytes[i];
        if let Some(l) = pending
            && b != b' '
            && b != b'\t'
        {
            if b != b'\n' && state == State::Text {
                push_marker(&mut out, l);
            }
            pending = None;
        }
        match &mut state {
            State::Text => {
                if b == b'{' && i + 1 < bytes.len() {
                    let close = match bytes[i + 1] {
                        b'{' => Some(b'}'),
                        b'%' => Some(b'%'),
                        b'#' => Some(b'#'),
                        _ => None,
                    };
                    if let Some(close) = close {
                        state = State::Tag { close, quote: None };
                        out.push_str(&source[i..i + 2]);
                        i += 2;
                        continue;
                    }
                }
            }
            State::Tag { close, quote } => {
                if let Some(q) = *quote {
                    if b == b'\\' && i + 1 < bytes.len() && bytes[i + 1] != b'\n' {
                        out.push_str(&source[i..i + 2]);
                        i += 2;
                        continue;
                    }
                    if b == q {
                        *quote = None;
                    }
                } else if (b == b'"' || b == b'\'') && *close != b'#' {
                    *quote = Some(b);
                } else if b == *close && bytes.get(i + 1) == Some(&b'}') {
                    state = State::Text;
                    out.push_str(&source[i..i + 2]);
                    i += 2;
                    continue;
                }
            }
        }
        // Copy one whole UTF-8 character.
        let ch_len = source[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&source[i..i + ch_len]);
        if b == b'\n' {
            let this_line = &source[line_start..i];
            let trimmed = this_line.trim_end();
            prev_line_trims_after =
                state == State::Text && ["-%}", "-}}", "-#}"].iter().any(|t| trimmed.ends_with(t));
            line += 1;
            line_start = i + 1;
        }
        i += ch_len;
    }
    out
}

fn push_marker(out: &mut String, line: usize) {
    out.push(MARK_OPEN);
    out.push_str(&line.to_string());
    out.push(MARK_CLOSE);
}

/// Strip the markers from `marked` and, if the result is `plain`, map every
/// output line to the source line of the last marker before its content.
fn build_map(marked: &str, plain: &str) -> LineMap {
    let mut stripped = String::with_capacity(plain.len());
    let mut lines = Vec::new();
    let mut current = 1usize;
    let mut line_source: Option<usize> = None;
    let mut chars = marked.chars();
    while let Some(c) = chars.next() {
        if c == MARK_OPEN {
            let mut num = String::new();
            for d in chars.by_ref() {
                if d == MARK_CLOSE {
                    break;
                }
                num.push(d);
            }
            if let Ok(n) = num.parse() {
                current = n;
            }
            continue;
        }
        if c == '\n' {
            lines.push(line_source.unwrap_or(current));
            line_source = None;
        } else if line_source.is_none() {
            line_source = Some(current);
        }
        stripped.push(c);
    }
    lines.push(line_source.unwrap_or(current));
    if stripped == plain {
        LineMap::Lines(lines)
    } else {
        LineMap::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Value {
        minijinja::context! { env => minijinja::context!{ HOME => "/root" }, project => minijinja::context!{ name => "p" } }
    }

    #[test]
    fn plain_text_is_identity() {
        let r = render("a = 1\nb = 2\n", &ctx()).unwrap();
        assert!(r.is_identity());
        assert_eq!(r.source_line(2), Some(2));
    }

    #[test]
    fn loop_lines_map_back() {
        let src = "x = 1\n{% for i in range(2) %}\n[machines.n{{ i }}]\nbox = \"b\"\n{% endfor %}\nz = 3\n";
        let r = render(src, &ctx()).unwrap();
        let lines: Vec<&str> = r.text.lines().collect();
        assert_eq!(lines[1], "[machines.n0]");
        assert_eq!(r.source_line(1), Some(1));
        assert_eq!(r.source_line(2), Some(3));
        assert_eq!(r.source_line(3), Some(4));
        assert_eq!(r.source_line(4), Some(3));
        assert_eq!(r.source_line(5), Some(4));
        assert_eq!(lines[5], "z = 3");
        assert_eq!(r.source_line(6), Some(6));
    }

    #[test]
    fn whitespace_control_falls_back_or_maps() {
        let src = "a = 1\n{% if true -%}\nb = 2\n{%- endif %}\nc = 3\n";
        let r = render(src, &ctx()).unwrap();
        assert_eq!(r.text, "a = 1\nb = 2c = 3\n");
        assert_eq!(r.source_line(2), Some(3));
    }

    #[test]
    fn tags_spanning_lines_are_not_marked() {
        let src = "{{\n \"a = 1\"\n}}\nb = 2\n";
        let r = render(src, &ctx()).unwrap();
        assert_eq!(r.text, "a = 1\nb = 2\n");
        assert_eq!(r.source_line(2), Some(4));
    }

    #[test]
    fn undefined_print_is_an_error_with_line() {
        let e = render("a = 1\nb = \"{{ env.NOPE }}\"\n", &ctx()).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("undefined"), "{}", e.message);
    }

    #[test]
    fn syntax_error_has_line() {
        let e = render("a = 1\n\n{% for x in %}\n", &ctx()).unwrap_err();
        assert_eq!(e.line, Some(3));
    }
}
