//! The guest-to-host result protocol on the serial console, and its parser.
//!
//! The guest's `/init` and the workload scripts print lines such as
//!
//! ```text
//! @@VMTEST-INIT
//! @@VMTEST-READY
//! @@VMTEST key=value with spaces
//! @@VMTEST-ERROR something went wrong
//! @@VMTEST-EXIT 0
//! ```
//!
//! Kernel messages may be interleaved with them on the same console, so a marker is
//! recognised anywhere in a line (the text before it is ignored). Every serial line is kept
//! with the host time it arrived, which the coherence test uses to measure delays between
//! two guests.

use std::collections::BTreeMap;
use std::time::Instant;

use thiserror::Error;

/// Marker of a `key=value` result line.
pub const RESULT_MARK: &str = "@@VMTEST ";
/// Marker of the workload's exit code.
pub const EXIT_MARK: &str = "@@VMTEST-EXIT ";
/// Marker of an error reported by `/init` or a workload.
pub const ERROR_MARK: &str = "@@VMTEST-ERROR ";
/// Marker printed by `/init` once the share is mounted, before the workload starts.
pub const READY_MARK: &str = "@@VMTEST-READY";
/// Marker printed by `/init` first of all: the kernel's boot is over.
pub const INIT_MARK: &str = "@@VMTEST-INIT";

/// A malformed protocol line.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// A result line without `=`, or with an invalid key.
    #[error("bad result line {0:?} (want `@@VMTEST key=value`, key of [A-Za-z0-9_.:-])")]
    BadResult(String),
    /// An exit line whose code is not an integer.
    #[error("bad exit line {0:?}")]
    BadExit(String),
}

/// One recognised line of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `@@VMTEST key=value`.
    Result { key: String, value: String },
    /// `@@VMTEST-EXIT code`.
    Exit(i32),
    /// `@@VMTEST-ERROR message`.
    Error(String),
    /// `@@VMTEST-READY`.
    Ready,
    /// `@@VMTEST-INIT`.
    Init,
    /// Anything else (kernel messages, command output).
    Other,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Parses one serial line (without its line ending; a trailing `\r` is ignored).
pub fn parse_line(raw: &str) -> Result<Line, ParseError> {
    let line = raw.trim_end_matches(['\r', '\n']);
    let Some(pos) = line.find("@@VMTEST") else {
        return Ok(Line::Other);
    };
    let tail = &line[pos..];
    if let Some(rest) = tail.strip_prefix(EXIT_MARK) {
        return rest
            .trim()
            .parse::<i32>()
            .map(Line::Exit)
            .map_err(|_| ParseError::BadExit(line.to_string()));
    }
    if let Some(rest) = tail.strip_prefix(ERROR_MARK) {
        return Ok(Line::Error(rest.trim().to_string()));
    }
    if tail.trim_end() == READY_MARK {
        return Ok(Line::Ready);
    }
    if tail.trim_end() == INIT_MARK {
        return Ok(Line::Init);
    }
    if let Some(rest) = tail.strip_prefix(RESULT_MARK) {
        let (key, value) = rest
            .split_once('=')
            .ok_or_else(|| ParseError::BadResult(line.to_string()))?;
        let key = key.trim();
        if !valid_key(key) {
            return Err(ParseError::BadResult(line.to_string()));
        }
        return Ok(Line::Result {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    // "@@VMTEST" followed by something unknown (e.g. the shell echoing a command line).
    Ok(Line::Other)
}

/// A serial console line with the host time it was read.
#[derive(Debug, Clone)]
pub struct SerialLine {
    /// When the host read the line.
    pub at: Instant,
    /// The text, without the line ending.
    pub text: String,
}

/// One `key=value` result with its arrival time.
#[derive(Debug, Clone)]
pub struct ResultEntry {
    pub key: String,
    pub value: String,
    pub at: Instant,
}

/// Everything the guest reported, in order.
#[derive(Debug, Clone, Default)]
pub struct GuestResults {
    /// Results in arrival order (a key may repeat).
    pub entries: Vec<ResultEntry>,
    /// The workload's exit code, when `/init` printed it.
    pub exit_code: Option<i32>,
    /// `@@VMTEST-ERROR` messages and malformed protocol lines.
    pub errors: Vec<String>,
    /// When `@@VMTEST-READY` arrived.
    pub ready_at: Option<Instant>,
    /// When `@@VMTEST-INIT` arrived (the guest's `/init` started).
    pub init_at: Option<Instant>,
}

impl GuestResults {
    /// Feeds one serial line.
    pub fn push_line(&mut self, line: &SerialLine) {
        match parse_line(&line.text) {
            Ok(Line::Result { key, value }) => self.entries.push(ResultEntry {
                key,
                value,
                at: line.at,
            }),
            Ok(Line::Exit(code)) => self.exit_code = Some(code),
            Ok(Line::Error(msg)) => self.errors.push(msg),
            Ok(Line::Ready) => self.ready_at = Some(line.at),
            Ok(Line::Init) => self.init_at = Some(line.at),
            Ok(Line::Other) => {}
            Err(e) => self.errors.push(e.to_string()),
        }
    }

    /// Parses a whole log.
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a SerialLine>) -> Self {
        let mut r = GuestResults::default();
        for l in lines {
            r.push_line(l);
        }
        r
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    /// The last entry of `key`, with its time.
    pub fn entry(&self, key: &str) -> Option<&ResultEntry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }

    /// Every value of `key`, in order.
    pub fn get_all(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.key == key)
            .map(|e| e.value.as_str())
            .collect()
    }

    /// The last value of `key` parsed as an integer.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(|v| v.trim().parse().ok())
    }

    /// The last value of every key.
    pub fn map(&self) -> BTreeMap<&str, &str> {
        self.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sl(s: &str) -> SerialLine {
        SerialLine {
            at: Instant::now(),
            text: s.to_string(),
        }
    }

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            parse_line("@@VMTEST size=4096\r").unwrap(),
            Line::Result {
                key: "size".into(),
                value: "4096".into()
            }
        );
        assert_eq!(
            parse_line("@@VMTEST msg=a=b c ").unwrap(),
            Line::Result {
                key: "msg".into(),
                value: "a=b c ".into()
            }
        );
        assert_eq!(
            parse_line("@@VMTEST empty=").unwrap(),
            Line::Result {
                key: "empty".into(),
                value: "".into()
            }
        );
        assert_eq!(parse_line("@@VMTEST-EXIT 0").unwrap(), Line::Exit(0));
        assert_eq!(parse_line("@@VMTEST-EXIT -3\r").unwrap(), Line::Exit(-3));
        assert_eq!(
            parse_line("@@VMTEST-ERROR mount failed").unwrap(),
            Line::Error("mount failed".into())
        );
        assert_eq!(parse_line("@@VMTEST-READY").unwrap(), Line::Ready);
        assert_eq!(parse_line("@@VMTEST-INIT\r").unwrap(), Line::Init);
        assert_eq!(parse_line("[    1.0] virtio: hello").unwrap(), Line::Other);
        assert_eq!(parse_line("").unwrap(), Line::Other);
    }

    #[test]
    fn marker_after_kernel_noise() {
        assert_eq!(
            parse_line("[    3.14] fuse: init@@VMTEST k=v").unwrap(),
            Line::Result {
                key: "k".into(),
                value: "v".into()
            }
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(matches!(
            parse_line("@@VMTEST novalue"),
            Err(ParseError::BadResult(_))
        ));
        assert!(matches!(
            parse_line("@@VMTEST bad key=1"),
            Err(ParseError::BadResult(_))
        ));
        assert!(matches!(
            parse_line("@@VMTEST =1"),
            Err(ParseError::BadResult(_))
        ));
        assert!(matches!(
            parse_line("@@VMTEST-EXIT x"),
            Err(ParseError::BadExit(_))
        ));
        assert!(matches!(
            parse_line("@@VMTEST-EXIT "),
            Err(ParseError::BadExit(_))
        ));
        // A shell echoing its own script is not a protocol line.
        assert_eq!(parse_line("echo \"@@VMTEST_x\"").unwrap(), Line::Other);
    }

    #[test]
    fn collects_results() {
        let lines = [
            "boot noise",
            "@@VMTEST-INIT",
            "@@VMTEST-READY",
            "@@VMTEST a=1",
            "@@VMTEST b=two words",
            "@@VMTEST a=3",
            "@@VMTEST broken",
            "@@VMTEST-ERROR oops",
            "@@VMTEST-EXIT 7",
        ]
        .map(sl);
        let r = GuestResults::from_lines(lines.iter());
        assert!(r.ready_at.is_some());
        assert!(r.init_at.is_some_and(|i| Some(i) <= r.ready_at));
        assert_eq!(r.get("a"), Some("3"));
        assert_eq!(r.get_all("a"), ["1", "3"]);
        assert_eq!(r.get_i64("a"), Some(3));
        assert_eq!(r.get("b"), Some("two words"));
        assert_eq!(r.get("c"), None);
        assert_eq!(r.exit_code, Some(7));
        assert_eq!(r.errors.len(), 2);
        assert_eq!(r.map().len(), 2);
    }
}
