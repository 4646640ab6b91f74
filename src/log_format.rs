//! The JSON log line, written by hand. Every forwarded request writes one access line of about 14
//! fields; tracing-subscriber's JSON formatter builds it through serde_json and tracing-serde,
//! whose writer adaptor checks each of ~120 fragments for UTF-8, with ~30 allocations: ~25,000
//! instructions a line. [`JsonLines`] appends the same line to a reused `String` for ~6,000.
//!
//! The line is the one `.json().flatten_event(true).with_current_span(true).with_span_list(false)`
//! writes, key for key and byte for byte apart from the timestamp's value: `timestamp`, `level`,
//! the event's fields in the order they were recorded, `target`, then the current span (its
//! fields and its `name`) when there is one. Strings are escaped as serde_json escapes them.
//! A span's fields are still formatted by tracing-subscriber's [`JsonFields`] (once per span,
//! not per line), and copied into the line as they are. The tests below hold the two formatters
//! to the same output.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::UNIX_EPOCH;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::calendar::civil_from_days;

/// One JSON object per event, one line each. Pair it with [`JsonFields`] for span fields:
/// `.fmt_fields(JsonFields::new()).event_format(JsonLines)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

/// A line longer than this does not keep its buffer.
const KEEP_AT_MOST: usize = 16 * 1024;

thread_local! {
    /// Each thread builds its lines here and hands each to the formatter's writer in one piece:
    /// appending to a `String` is cheaper than a call through the writer for every fragment.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                let written =
                    write_line(&mut line, ctx, event).and_then(|()| writer.write_str(&line));
                if line.capacity() > KEEP_AT_MOST {
                    *line = String::new();
                }
                written
            }
            // Formatting a line within a line (which tracing does not do: it drops an event
            // logged while one is dispatched) would get a buffer of its own.
            Err(_) => {
                let mut line = String::new();
                write_line(&mut line, ctx, event)?;
                writer.write_str(&line)
            }
        })
    }
}

fn write_line<S>(
    line: &mut String,
    ctx: &FmtContext<'_, S, JsonFields>,
    event: &Event<'_>,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // A `log` record (through tracing-log) is shown with its own target.
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());

    line.push_str("{\"timestamp\":\"");
    write_timestamp(line, std::time::SystemTime::now())?;
    line.push_str("\",\"level\":\"");
    line.push_str(meta.level().as_str());
    line.push('"');

    let mut fields = FieldWriter {
        line: &mut *line,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;

    line.push_str(",\"target\":");
    write_string(line, meta.target());

    // The same span as tracing-subscriber's: the explicit parent, else the current one.
    let span = event
        .parent()
        .and_then(|id| ctx.span(id))
        .or_else(|| ctx.lookup_current());
    if let Some(span) = span {
        line.push_str(",\"span\":{");
        let extensions = span.extensions();
        // `JsonFields` keeps a span's fields as one compact JSON object, keys sorted: its
        // members go in as they are.
        let members = extensions
            .get::<FormattedFields<JsonFields>>()
            .and_then(|fields| fields.fields.strip_prefix('{'))
            .and_then(|fields| fields.strip_suffix('}'))
            .unwrap_or("");
        if !members.is_empty() {
            line.push_str(members);
            line.push(',');
        }
        line.push_str("\"name\":");
        write_string(line, span.name());
        line.push('}');
    }
    line.push_str("}\n");
    Ok(())
}

/// `2026-11-25T03:31:21.793680Z`, tracing-subscriber's `SystemTime` format, without its
/// formatting machinery. A clock outside the years 0000-9999 is left to tracing-subscriber's
/// (which reads the clock itself).
fn write_timestamp(line: &mut String, now: std::time::SystemTime) -> fmt::Result {
    let (secs, micros) = match now.duration_since(UNIX_EPOCH) {
        Ok(since) => (
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            since.subsec_micros(),
        ),
        // Before 1970: whole seconds back, then the micros forward from there.
        Err(before) => {
            let (secs, nanos) = (
                i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
                before.duration().subsec_nanos(),
            );
            if nanos == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, (1_000_000_000 - nanos) / 1_000)
            }
        }
    };
    let date = civil_from_days(secs.div_euclid(86_400));
    let Ok(year @ 0..=9999) = u32::try_from(date.year) else {
        return SystemTime.format_time(&mut Writer::new(line));
    };
    let time = secs.rem_euclid(86_400) as u32;
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    for (at, width, value) in [
        (0, 4, year),
        (5, 2, date.month),
        (8, 2, date.day),
        (11, 2, time / 3600),
        (14, 2, time / 60 % 60),
        (17, 2, time % 60),
        (20, 6, micros),
    ] {
        let mut value = value;
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    line.push_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
    Ok(())
}

/// Writes each field as `,"name":value`. The kinds it does not handle (`i128`, `u128`, bytes,
/// errors) come as `record_debug` by tracing's defaults, as with tracing-subscriber's visitor.
struct FieldWriter<'a> {
    line: &'a mut String,
    /// A `Debug` impl's error, kept to fail the line with.
    result: fmt::Result,
}

impl FieldWriter<'_> {
    fn key(&mut self, field: &Field) -> &mut String {
        self.line.push(',');
        write_string(self.line, field.name());
        self.line.push(':');
        self.line
    }
}

impl Visit for FieldWriter<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let line = self.key(field);
        // serde_json's own float text; NaN and the infinities are `null`, as serde_json has it.
        match serde_json::Number::from_f64(value) {
            Some(number) => {
                let written = write!(line, "{number}");
                self.result = self.result.and(written);
            }
            None => line.push_str("null"),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let line = self.key(field);
        if value < 0 {
            line.push('-');
        }
        write_u64(line, value.unsigned_abs());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        write_u64(self.key(field), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field)
            .push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        write_string(self.key(field), value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let line = self.key(field);
        line.push('"');
        let written = write!(Escaped(&mut *line), "{value:?}");
        line.push('"');
        self.result = self.result.and(written);
    }
}

/// An unsigned integer in decimal, without the formatting machinery.
fn write_u64(line: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    line.extend(digits[start..].iter().map(|&b| char::from(b)));
}

/// A JSON string: quoted and escaped.
fn write_string(line: &mut String, value: &str) {
    line.push('"');
    write_escaped(line, value);
    line.push('"');
}

/// A string's contents escaped as serde_json escapes them: `"` and `\`, the control characters
/// as `\b \t \n \f \r` or `\u00XX` (lower-case hex); everything else, DEL and non-ASCII
/// included, as it is.
fn write_escaped(line: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = value;
    while let Some(at) = find_escape(rest.as_bytes()) {
        // Only ASCII bytes are escaped, so both ends are character boundaries.
        let (run, escaped) = (&rest[..at], rest.as_bytes()[at]);
        line.push_str(run);
        match escaped {
            b'"' => line.push_str("\\\""),
            b'\\' => line.push_str("\\\\"),
            b'\n' => line.push_str("\\n"),
            b'\r' => line.push_str("\\r"),
            b'\t' => line.push_str("\\t"),
            0x08 => line.push_str("\\b"),
            0x0c => line.push_str("\\f"),
            byte => {
                line.push_str("\\u00");
                line.push(char::from(HEX[usize::from(byte >> 4)]));
                line.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
        }
        rest = &rest[at + 1..];
    }
    line.push_str(rest);
}

/// Where the first byte that JSON must escape is (`"`, `\` or below 0x20), eight bytes at a
/// time: most strings have none, and a byte-at-a-time scan was most of a line's cost.
fn find_escape(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    for (n, chunk) in chunks.by_ref().enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if let Some(at) = find_escape_in_word(word) {
            return Some(n * 8 + at);
        }
    }
    // The last few bytes, padded with spaces (which need no escape).
    let tail = chunks.remainder();
    let mut word = [b' '; 8];
    word[..tail.len()].copy_from_slice(tail);
    find_escape_in_word(word).map(|at| bytes.len() - tail.len() + at)
}

/// The first of eight bytes that must be escaped.
fn find_escape_in_word(word: [u8; 8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let x = u64::from_le_bytes(word);
    let (quote, backslash) = (x ^ (ONES * u64::from(b'"')), x ^ (ONES * u64::from(b'\\')));
    // The high bit of a byte is set where the byte is zero, or below 0x20 in `x`. A bit can also
    // be set above a byte that matched (by the borrow), never below the first: the lowest one
    // set is the first byte to escape.
    let found = (quote.wrapping_sub(ONES) & !quote
        | backslash.wrapping_sub(ONES) & !backslash
        | x.wrapping_sub(ONES * 0x20) & !x)
        & HIGH;
    (found != 0).then(|| found.trailing_zeros() as usize / 8)
}

/// Escapes what is written through it (a `Debug` value) into a JSON string.
struct Escaped<'a>(&'a mut String);

impl Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::subscriber::with_default;
    use tracing::{debug, error, info, info_span, trace, warn, Level};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Lines written into memory.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// tracing-subscriber's JSON formatter, set up as `init_tracing` had it.
    fn builtin<W>(writer: W) -> impl Subscriber + Send + Sync
    where
        W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .finish()
    }

    /// This module's formatter, set up as `init_tracing` has it.
    fn by_hand<W>(writer: W) -> impl Subscriber + Send + Sync
    where
        W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(writer)
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish()
    }

    /// What `emit` logs, through each formatter.
    fn both(emit: impl Fn()) -> (String, String) {
        let (old, new) = (Buffer::default(), Buffer::default());
        with_default(builtin(old.clone()), &emit);
        with_default(by_hand(new.clone()), &emit);
        (old.text(), new.text())
    }

    /// The line with its timestamp's value replaced, after checking its shape:
    /// `2026-11-25T03:31:21.793680Z`.
    fn without_timestamp(line: &str) -> String {
        let prefix = "{\"timestamp\":\"";
        let rest = line.strip_prefix(prefix).expect(line);
        let end = rest.find('"').expect(line);
        let shape: String = rest[..end]
            .chars()
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect();
        assert_eq!(shape, "0000-00-00T00:00:00.000000Z", "{line}");
        format!("{prefix}TIME{}", &rest[end..])
    }

    /// Each line's keys in order, from a small JSON tokenizer (serde_json's maps sort them).
    fn keys(line: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut depth = 0;
        let mut chars = line.chars().peekable();
        let mut expect_key = false;
        while let Some(c) = chars.next() {
            match c {
                '{' => {
                    depth += 1;
                    expect_key = true;
                }
                '}' => depth -= 1,
                ',' => expect_key = true,
                '"' => {
                    let mut s = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => {
                                s.push(c);
                                s.push(chars.next().unwrap());
                            }
                            '"' => break,
                            c => s.push(c),
                        }
                    }
                    if expect_key {
                        keys.push(format!("{depth}:{s}"));
                        expect_key = false;
                    }
                }
                _ => {}
            }
        }
        keys
    }

    /// Both formatters write the same lines, apart from the time; each is one JSON object.
    fn assert_same(emit: impl Fn()) -> Vec<serde_json::Value> {
        let (old, new) = both(emit);
        assert!(!new.is_empty());
        assert!(new.ends_with("}\n") && !new.ends_with("\n\n"), "{new:?}");
        let (old, new): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
        assert_eq!(old.len(), new.len(), "{old:#?}\n{new:#?}");
        let mut parsed = Vec::new();
        for (old, new) in old.iter().zip(&new) {
            assert_eq!(without_timestamp(old), without_timestamp(new));
            assert_eq!(keys(old), keys(new));
            let (old_value, new_value): (serde_json::Value, serde_json::Value) = (
                serde_json::from_str(old).unwrap(),
                serde_json::from_str(new).expect(new),
            );
            assert!(new_value.is_object(), "{new}");
            let strip = |mut v: serde_json::Value| {
                v["timestamp"] = serde_json::Value::Null;
                v
            };
            assert_eq!(strip(old_value), strip(new_value.clone()));
            parsed.push(new_value);
        }
        parsed
    }

    #[test]
    fn access_line() {
        let lines = assert_same(|| {
            let request_id = "d391a7c0e2b44f5c8d6e1f2a3b4c5d6e".to_owned();
            for (account, used, upstream_ms) in [
                (Some("fansly_acct_bench"), Some(1u64), Some(53u64)),
                (None, None, None),
            ] {
                info!(
                    request_id = %request_id,
                    client = "bench",
                    method = %http::Method::PUT,
                    route = "PUT /api/fansly/{account}/tracking-links/{id}",
                    account,
                    status = 200u16,
                    credits_used = used,
                    credit_balance = Some(10_055_796u64),
                    cached = Some(false),
                    upstream_ms,
                    total_ms = 72u64,
                    outcome = "complete",
                    bytes = 678u64,
                    "request"
                );
            }
        });
        let keys: Vec<&str> = lines[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 17);
        assert_eq!(lines[0]["message"], "request");
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[0]["cached"], false);
        assert!(lines[1].get("account").is_none());
    }

    #[test]
    fn value_kinds() {
        assert_same(|| {
            let err = io::Error::other("disk \"full\"\n");
            let dyn_err: &(dyn std::error::Error + 'static) = &err;
            info!(
                unsigned = u64::MAX,
                zero = 0u64,
                signed = i64::MIN,
                negative = -42i64,
                positive = 7i32,
                yes = true,
                no = false,
                wide = i128::MIN,
                uwide = u128::MAX,
                bytes = &b"a\"b\x00"[..],
                error = dyn_err,
                "kinds"
            );
            for f in [
                0.0,
                -0.0,
                1.0,
                1.5,
                0.1,
                -2.5e-7,
                1e20,
                1e21,
                123456789.125,
                f64::MAX,
                f64::MIN_POSITIVE,
                5e-324,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ] {
                info!(f, "float");
            }
        });
    }

    #[test]
    fn strings_needing_escapes() {
        let all_ascii: String = (0u8..0x80).map(char::from).collect();
        let samples = [
            "plain",
            "",
            "quote \" and backslash \\ and slash /",
            "new\nline\rreturn\ttab\u{8}back\u{c}feed",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "é 日本 😀 \u{2028}\u{2029} \u{feff}",
            "\"\\\"",
            &all_ascii,
        ];
        assert_same(|| {
            for s in samples {
                info!(s, debug = ?s, display = %s, "{s}");
                info!(message = s);
                warn!("{s:?} in a message");
            }
            #[derive(Debug)]
            #[allow(dead_code)]
            struct Thing {
                name: &'static str,
                list: Vec<&'static str>,
            }
            let thing = Thing {
                name: "a \"thing\"",
                list: vec!["x\ny", "é"],
            };
            info!(thing = ?thing, pretty = format!("{thing:#?}"), "things");
        });
    }

    #[test]
    fn field_names() {
        assert_same(|| {
            info!(r#type = "raw", http.method = "GET", "names");
            info!("a \"quoted\" name" = 1u64, "names");
        });
    }

    #[test]
    fn levels_and_targets() {
        let lines = assert_same(|| {
            trace!("trace");
            debug!(n = 1u64, "debug");
            info!("info only");
            warn!(target: "my::target", "warn");
            error!(error = "boom", "error {}", 3);
        });
        let levels: Vec<&str> = lines.iter().map(|l| l["level"].as_str().unwrap()).collect();
        assert_eq!(levels, ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]);
    }

    #[test]
    fn spans() {
        let lines = assert_same(|| {
            let outer = info_span!("outer", depth = 1u64);
            let _outer = outer.enter();
            info!("in one span");
            let span = info_span!(
                "request",
                request_id = %"abc\"d",
                n = 3u64,
                f = 1.5,
                neg = -0.0,
                s = "q\"\n",
                later = tracing::field::Empty,
                name = "a field called name",
            );
            {
                let _span = span.enter();
                info!(status = 200u64, "inner");
                span.record("later", "recorded afterwards");
                span.record("n", 4u64);
                warn!("after a record");
            }
            let bare = info_span!("bare");
            info!(parent: &bare, "explicit parent");
            info!(parent: None, "explicit root");
            {
                let _bare = bare.enter();
                info!("in a span without fields");
            }
        });
        assert_eq!(lines[0]["span"]["name"], "outer");
        assert_eq!(lines[2]["span"]["later"], "recorded afterwards");
        assert_eq!(lines[3]["span"], serde_json::json!({"name": "bare"}));
    }

    /// An event logged by a `Debug` impl while a line is being formatted (tracing drops it), and
    /// a line too long for the buffer to be kept.
    #[test]
    fn nested_and_long_lines() {
        struct Loud;
        impl fmt::Debug for Loud {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                info!(inner = "yes", "logged while formatting");
                f.write_str("loud")
            }
        }
        let lines = assert_same(|| {
            info!(value = ?Loud, "outer");
            info!(long = "x\"".repeat(20_000), "long");
            info!("after");
        });
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["value"], "loud");
        assert_eq!(lines[2]["message"], "after");
    }

    #[test]
    fn log_records() {
        let lines = assert_same(|| {
            let record = tracing_log::log::Record::builder()
                .args(format_args!("from \"log\""))
                .level(tracing_log::log::Level::Warn)
                .target("rustls::conn")
                .module_path_static(Some("rustls::conn"))
                .file_static(Some("src/conn.rs"))
                .line(Some(12))
                .build();
            tracing_log::format_trace(&record).unwrap();
        });
        assert_eq!(lines[0]["target"], "rustls::conn");
        assert_eq!(lines[0]["log.target"], "rustls::conn");
    }

    fn escaped(s: &str) -> String {
        let mut ours = String::new();
        write_string(&mut ours, s);
        ours
    }

    /// Every ASCII byte and a few others, alone, in pairs, and at each place in and after the
    /// first eight-byte words.
    #[test]
    fn escaping_matches_serde_json() {
        let chars = (0u32..0x80)
            .chain([0xe9, 0x2028, 0xfeff, 0x1f600])
            .filter_map(char::from_u32);
        for c in chars {
            for at in 0..20 {
                let filler = "abcdefghijklmnopqrstuvwxyz";
                for s in [
                    format!("{c}"),
                    format!("{}{c}{}", &filler[..at], &filler[at..]),
                    format!("{}{c}{c}é\"{}", &filler[..at], &filler[at..]),
                    format!("{}\u{1}{c}{}", &filler[..at], &filler[at..]),
                ] {
                    assert_eq!(escaped(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_escapes_as_serde_json(s in "(\\PC|[\\x00-\\x1f\"\\\\])*") {
            proptest::prop_assert_eq!(escaped(&s), serde_json::to_string(&s).unwrap());
        }
    }

    #[test]
    fn integers() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
            let mut s = String::new();
            write_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    fn timestamp(since_epoch: i128) -> String {
        let micros = |m: i128| std::time::Duration::from_micros(m.unsigned_abs() as u64);
        let at = if since_epoch >= 0 {
            UNIX_EPOCH + micros(since_epoch)
        } else {
            UNIX_EPOCH - micros(since_epoch)
        };
        let mut s = String::new();
        write_timestamp(&mut s, at).unwrap();
        s
    }

    #[test]
    fn timestamps() {
        const DAY: i128 = 86_400_000_000;
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(timestamp(-1_000_000), "1969-12-31T23:59:59.000000Z");
        assert_eq!(
            timestamp(951_827_696_789_012),
            "2000-02-29T12:34:56.789012Z"
        );
        assert_eq!(
            timestamp(253_402_300_799_999_999),
            "9999-12-31T23:59:59.999999Z"
        );
        // Every day from 1900 to 2200, against a plain count of days.
        let (mut year, mut month, mut day) = (1900, 1, 1);
        let mut days = -25_567;
        while year < 2200 {
            let expected = format!("{year:04}-{month:02}-{day:02}T23:59:58.000001Z");
            assert_eq!(timestamp(days * DAY + DAY - 1_999_999), expected);
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let month_days = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            days += 1;
            day += 1;
            if day > month_days {
                (day, month) = (1, month + 1);
                if month > 12 {
                    (month, year) = (1, year + 1);
                }
            }
        }
    }

    /// Ours reads the clock between two readings of tracing-subscriber's: it falls between them.
    #[test]
    fn timestamps_read_the_same_clock() {
        let theirs = || {
            let mut s = String::new();
            SystemTime.format_time(&mut Writer::new(&mut s)).unwrap();
            s
        };
        let before = theirs();
        let mut ours = String::new();
        write_timestamp(&mut ours, std::time::SystemTime::now()).unwrap();
        let after = theirs();
        assert!(before <= ours && ours <= after, "{before} {ours} {after}");
        assert_eq!(before.len(), ours.len());
    }
}
