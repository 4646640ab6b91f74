//! Finds the upstream's `_meta` figures in a JSON response while it streams past.
//!
//! The `_meta` object usually comes last, after a `data` that may be many megabytes, so the body
//! cannot be buffered and parsed whole. [`Tokenizer`] is a small state machine that survives chunk
//! splits anywhere (inside strings, escapes, numbers, keys) and keeps a constant amount of state
//! whatever the input:
//!
//! - only the objects on a path of interest (the root, `_meta`, `_meta._credits`, `_meta._cache`,
//!   `_meta._rate_limits`, `_pagination`, `_meta._pagination`) are followed key by key, so the
//!   stack of followed objects is at most three deep;
//! - every other object or array (`data`, whatever its size or depth) is skipped with a counter
//!   that only has to tell strings from brackets;
//! - keys are kept up to [`KEY_CAP`] bytes (longer keys are simply not ours), numbers are
//!   accumulated into a `u64` as they arrive, strings are never kept.
//!
//! It is cheap per byte because it works on runs, not bytes. A skipped container is read eight
//! bytes at a time: one word test finds the quotes, backslashes and brackets among them, and only
//! those are looked at. Strings are crossed the same way up to their closing quote or next
//! backslash (long ones with `memchr2`), whitespace and numbers in one loop each. Only the few
//! bytes between the tokens of a followed object go through the state dispatch.
//!
//! Input that is not JSON makes the tokenizer stop quietly; what was found before stays found.
//! [`MetaScanner`] is the tokenizer used for the figures alone; the `next_page` rewriter
//! (`super::rewrite`) drives the same tokenizer, so one pass can do both.

use memchr::memchr2;

/// The `_meta` figures found so far are an [`UpstreamFacts`] (a field stays `None` when absent, of
/// the wrong type or out of range).
use crate::upstream::facts::UpstreamFacts;

/// Extracts [`UpstreamFacts`] from a JSON body fed in chunks split anywhere.
///
/// Holds no heap memory: its whole state is the struct itself (a few dozen bytes).
#[derive(Clone, Debug, Default)]
pub struct MetaScanner {
    tokenizer: Tokenizer,
}

impl MetaScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.tokenizer.feed_all(chunk);
    }

    /// What has been found so far.
    pub fn found(&self) -> UpstreamFacts {
        self.tokenizer.found
    }

    /// True once the input turned out not to be JSON (or had more after the top-level value):
    /// later chunks are ignored.
    pub fn is_stopped(&self) -> bool {
        self.tokenizer.is_stopped()
    }
}

/// Longest key kept; longer keys cannot be one of ours (the longest is `remaining_minute`).
pub(crate) const KEY_CAP: usize = 24;

/// Objects followed key by key: root, `_meta`, and one of `_meta`'s children.
const FRAME_CAP: usize = 3;

/// An object on a path of interest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Ctx {
    #[default]
    Root,
    Meta,
    Credits,
    Cache,
    RateLimits,
    /// `_pagination` at the top level or inside `_meta`: both hold `next_page`.
    Pagination,
}

/// What the value after the current key means to us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Slot {
    #[default]
    Nothing,
    Open(Ctx),
    CreditsUsed,
    Balance,
    IsCached,
    LimitMinute,
    RemainingMinute,
    NextPage,
}

impl Slot {
    fn of(parent: Ctx, key: &[u8]) -> Self {
        match (parent, key) {
            (Ctx::Root, b"_meta") => Slot::Open(Ctx::Meta),
            (Ctx::Root | Ctx::Meta, b"_pagination") => Slot::Open(Ctx::Pagination),
            (Ctx::Meta, b"_credits") => Slot::Open(Ctx::Credits),
            (Ctx::Meta, b"_cache") => Slot::Open(Ctx::Cache),
            (Ctx::Meta, b"_rate_limits") => Slot::Open(Ctx::RateLimits),
            (Ctx::Credits, b"used") => Slot::CreditsUsed,
            (Ctx::Credits, b"balance") => Slot::Balance,
            (Ctx::Cache, b"is_cached") => Slot::IsCached,
            (Ctx::RateLimits, b"limit_minute") => Slot::LimitMinute,
            (Ctx::RateLimits, b"remaining_minute") => Slot::RemainingMinute,
            (Ctx::Pagination, b"next_page") => Slot::NextPage,
            _ => Slot::Nothing,
        }
    }

    fn wants_integer(self) -> bool {
        matches!(
            self,
            Slot::CreditsUsed | Slot::Balance | Slot::LimitMinute | Slot::RemainingMinute
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Literal {
    True,
    False,
    Null,
}

impl Literal {
    fn word(self) -> &'static [u8] {
        match self {
            Literal::True => b"true",
            Literal::False => b"false",
            Literal::Null => b"null",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// A value must come next (start of input, after `:`).
    #[default]
    Value,
    /// Just after `{`: a key or `}`.
    FirstKey,
    /// After `,` in a followed object: a key.
    NextKey,
    /// Inside a key string.
    Key,
    KeyEscape,
    KeyUnicode {
        left: u8,
        code: u16,
    },
    /// After a key: `:`.
    Colon,
    /// Inside a string value of a followed object (`escaped` says if a backslash came last).
    Str,
    Number,
    Literal {
        literal: Literal,
        matched: u8,
    },
    /// After a value in a followed object: `,` or `}`.
    AfterValue,
    /// Inside a container nobody follows; `skip_depth` counts the open brackets.
    Skip,
    /// Inside a string of a skipped container (`escaped` says if a backslash came last).
    SkipStr,
    /// After the top-level value: only whitespace may follow.
    End,
    /// Not JSON: everything from here on is ignored.
    Stopped,
}

/// Where [`Tokenizer::skip_words`] stopped.
enum Skipped {
    /// At this index: just past the container, or the end of the input.
    To(usize),
    /// In a long string, whose contents go on at least up to this index.
    LongString(usize),
}

/// What [`Tokenizer::advance`] stopped at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The whole input was consumed.
    Done,
    /// A `next_page` string value opens; its contents start at this index of the input, all
    /// bytes before it consumed.
    NextPageAt(usize),
}

/// The incremental JSON tokenizer shared by the scanner and the rewriter.
///
/// Invariants: `depth` ≤ [`FRAME_CAP`], and `frames[..depth]` are the followed objects from the
/// root down (only objects are ever followed; arrays are always skipped); `skip_depth` ≥ 1 in
/// `Skip` and `SkipStr`; `escaped` is false outside `Str` and `SkipStr`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tokenizer {
    state: State,
    frames: [Ctx; FRAME_CAP],
    depth: u8,
    /// The key being read, decoded, while it fits.
    key: [u8; KEY_CAP],
    key_len: u8,
    /// False once the key being read is too long or has a non-ASCII escape: not ours.
    key_ours: bool,
    /// In a string: the input so far ended just after a backslash, so the next byte is escaped.
    escaped: bool,
    /// Meaning of the value being read or about to be read.
    slot: Slot,
    /// The integer being read for a slot that wants one; `None` once it overflows, is negative
    /// or has a fraction or exponent.
    number: Option<u64>,
    /// Open brackets inside a skipped container (the container's own included).
    skip_depth: u64,
    pub(crate) found: UpstreamFacts,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The bytes a number is made of, as far as telling where it ends goes (its form is not checked).
fn is_number_byte(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
}

fn hex(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

/// The low seven bits of each byte of a word.
const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// 0x80 in each byte of the result whose byte in `t` is zero, 0 in the others. Exact, with no
/// carry from byte to byte: `(t & LO7) + LO7` stays under 0x100 in each byte.
fn zero_bytes(t: u64) -> u64 {
    !(((t & LO7) + LO7) | t | LO7)
}

/// Eight input bytes read as one little-endian word, then tested all at once ("SWAR"): 0x80 in
/// each byte of the result whose byte in `word` is `"` or `\`, 0 in the others.
fn quotes_or_backslashes(word: u64) -> u64 {
    zero_bytes(word ^ 0x2222_2222_2222_2222) | zero_bytes(word ^ 0x5c5c_5c5c_5c5c_5c5c)
}

/// [`quotes_or_backslashes`] and brackets as well: `| 0x20` turns `[` into `{` and `]` into `}`
/// (and no other byte into either).
fn skip_stops(word: u64) -> u64 {
    let folded = word | 0x2020_2020_2020_2020;
    quotes_or_backslashes(word)
        | zero_bytes(folded ^ 0x7b7b_7b7b_7b7b_7b7b)
        | zero_bytes(folded ^ 0x7d7d_7d7d_7d7d_7d7d)
}

/// Index of the first `"` or `\` in `bytes`. Most strings are short, and a call to `memchr2`
/// costs more than searching them eight bytes at a time: the first 32 bytes are looked at here.
fn find_quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(word) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let hits = quotes_or_backslashes(u64::from_le_bytes(*word));
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
        if at == 32 {
            break;
        }
    }
    memchr2(b'"', b'\\', bytes.get(at..)?).map(|k| at + k)
}

/// Crosses the contents of a string from `input[at..]`: returns the index just past its closing
/// quote, or `None` when the input ends first. `escaped` carries a backslash that ended the
/// previous input over to this one, and is set again if this one ends the same way.
fn string_end(input: &[u8], mut at: usize, escaped: &mut bool) -> Option<usize> {
    if *escaped {
        // The escaped byte, whatever it is (`\u`'s four hex digits need no special care: none
        // of them is a quote or a backslash).
        input.get(at)?;
        at += 1;
        *escaped = false;
    }
    loop {
        let rest = input.get(at..)?;
        let k = find_quote_or_backslash(rest)?;
        at += k + 1;
        if rest.get(k) == Some(&b'"') {
            return Some(at);
        }
        if input.get(at).is_none() {
            *escaped = true;
            return None;
        }
        at += 1;
    }
}

impl Tokenizer {
    pub(crate) fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Consumes all of `input`, ignoring `next_page` events.
    pub(crate) fn feed_all(&mut self, mut input: &[u8]) {
        while let Step::NextPageAt(at) = self.advance(input) {
            input = input.get(at..).unwrap_or_default();
        }
    }

    /// Consumes `input` up to its end or just past the opening quote of a `next_page` string
    /// value, whichever comes first.
    ///
    /// Each arm consumes at least one byte or changes state to one that will, and returns the
    /// index of the first byte it did not consume.
    pub(crate) fn advance(&mut self, input: &[u8]) -> Step {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match self.state {
                State::Stopped => return Step::Done,
                // Runs: each handler consumes as much as its token allows.
                State::Skip | State::SkipStr => i = self.skip(input, i),
                State::Str => i = self.string(input, i),
                State::Key => i = self.key(input, i),
                State::Number => i = self.number(input, i),
                State::Literal { literal, matched } => i = self.literal(input, i, literal, matched),
                State::KeyEscape => {
                    i += 1;
                    self.state = State::Key;
                    match b {
                        b'"' | b'\\' | b'/' => self.push_key(&[b]),
                        b'b' => self.push_key(&[0x08]),
                        b'f' => self.push_key(&[0x0c]),
                        b'n' => self.push_key(b"\n"),
                        b'r' => self.push_key(b"\r"),
                        b't' => self.push_key(b"\t"),
                        b'u' => self.state = State::KeyUnicode { left: 4, code: 0 },
                        _ => self.state = State::Stopped,
                    }
                }
                State::KeyUnicode { left, code } => {
                    i += 1;
                    let Some(digit) = hex(b) else {
                        self.state = State::Stopped;
                        continue;
                    };
                    let code = code << 4 | digit;
                    if left > 1 {
                        self.state = State::KeyUnicode {
                            left: left - 1,
                            code,
                        };
                        continue;
                    }
                    self.state = State::Key;
                    match u8::try_from(code) {
                        Ok(ascii) if ascii.is_ascii() => self.push_key(&[ascii]),
                        _ => self.key_ours = false,
                    }
                }
                // Between tokens: whitespace is crossed in one go, then one byte decides.
                _ if is_ws(b) => {
                    let rest = input.get(i..).unwrap_or_default();
                    i += rest.iter().position(|&c| !is_ws(c)).unwrap_or(rest.len());
                }
                // The handler of a value's run is called at once rather than on the next turn.
                State::Value => {
                    i += 1;
                    match b {
                        b'{' => match self.slot {
                            Slot::Nothing if self.depth == 0 => self.open(Ctx::Root),
                            Slot::Open(ctx) => self.open(ctx),
                            _ => i = self.start_skip(input, i),
                        },
                        b'[' => i = self.start_skip(input, i),
                        b'"' => {
                            self.state = State::Str;
                            if self.slot == Slot::NextPage {
                                return Step::NextPageAt(i);
                            }
                            i = self.string(input, i);
                        }
                        b'0'..=b'9' => {
                            self.state = State::Number;
                            self.number = self.slot.wants_integer().then_some(u64::from(b - b'0'));
                            i = self.number(input, i);
                        }
                        b'-' => {
                            self.state = State::Number;
                            self.number = None;
                            i = self.number(input, i);
                        }
                        b't' => i = self.literal(input, i, Literal::True, 1),
                        b'f' => i = self.literal(input, i, Literal::False, 1),
                        b'n' => i = self.literal(input, i, Literal::Null, 1),
                        _ => self.state = State::Stopped,
                    }
                }
                State::FirstKey | State::NextKey => {
                    i += 1;
                    match b {
                        b'"' => i = self.start_key(input, i),
                        b'}' if self.state == State::FirstKey => self.close(),
                        _ => self.state = State::Stopped,
                    }
                }
                State::Colon => {
                    i += 1;
                    self.state = if b == b':' {
                        State::Value
                    } else {
                        State::Stopped
                    };
                }
                State::AfterValue => {
                    i += 1;
                    match b {
                        // `,"`: the next key starts at once.
                        b',' if input.get(i) == Some(&b'"') => i = self.start_key(input, i + 1),
                        b',' => self.state = State::NextKey,
                        b'}' => self.close(),
                        _ => self.state = State::Stopped,
                    }
                }
                State::End => self.state = State::Stopped,
            }
        }
        Step::Done
    }

    /// In `Skip` or `SkipStr`: crosses the skipped container up to its closing bracket or the
    /// end of the input; returns the index after it.
    fn skip(&mut self, input: &[u8], mut i: usize) -> usize {
        loop {
            match self.skip_words(input, i) {
                Skipped::To(end) => return end,
                // Inside a long string, which `memchr2` crosses faster: its next quote or
                // backslash is the next stop.
                Skipped::LongString(at) => {
                    match input.get(at..).and_then(|rest| memchr2(b'"', b'\\', rest)) {
                        Some(k) => i = at + k,
                        None => return input.len(),
                    }
                }
            }
        }
    }

    /// [`Self::skip`]'s work, eight bytes at a time: one word test finds every quote, backslash
    /// and bracket among them, and only those are looked at. Stops early when a string goes on
    /// for 32 bytes without a stop.
    fn skip_words(&mut self, input: &[u8], mut i: usize) -> Skipped {
        let mut in_string = self.state == State::SkipStr;
        let mut depth = self.skip_depth;
        // 0x80 when the next word's first byte is escaped (a backslash in a string came last).
        let mut escaped = if self.escaped { 0x80 } else { 0 };
        // Words in a row inside one string without a stop.
        let mut quiet = 0;
        while let Some(rest) = input.get(i..).filter(|rest| !rest.is_empty()) {
            let (word, len) = match rest.first_chunk::<8>() {
                Some(bytes) => (u64::from_le_bytes(*bytes), 8),
                None => {
                    // Padded with zeros, which are not stops.
                    let mut bytes = [0; 8];
                    bytes.iter_mut().zip(rest).for_each(|(b, &r)| *b = r);
                    (u64::from_le_bytes(bytes), rest.len())
                }
            };
            let mut stops = skip_stops(word) & !escaped;
            escaped = 0;
            if stops == 0 && in_string {
                quiet += 1;
                if quiet == 4 {
                    self.skip_depth = depth;
                    self.escaped = false;
                    self.state = State::SkipStr;
                    return Skipped::LongString(i + len);
                }
            } else {
                quiet = 0;
            }
            while stops != 0 {
                let k = (stops.trailing_zeros() / 8) as usize;
                stops &= stops - 1;
                match (in_string, (word >> (8 * k)) as u8) {
                    (true, b'"') => in_string = false,
                    // The escaped byte is not a stop, whatever it is.
                    (true, b'\\') if k + 1 < len => stops &= !(0x80 << (8 * (k + 1))),
                    (true, b'\\') => escaped = 0x80,
                    (false, b'"') => in_string = true,
                    (false, b'{' | b'[') => depth += 1,
                    (false, b'}' | b']') => {
                        depth -= 1;
                        if depth == 0 {
                            self.skip_depth = 0;
                            self.escaped = false;
                            self.value_done();
                            return Skipped::To(i + k + 1);
                        }
                    }
                    // A bracket in a string; a backslash outside one (not JSON, ignored).
                    _ => {}
                }
            }
            i += len;
        }
        self.skip_depth = depth;
        self.escaped = escaped != 0;
        self.state = if in_string {
            State::SkipStr
        } else {
            State::Skip
        };
        Skipped::To(input.len())
    }

    /// In `Str`: crosses a string value of a followed object up to its closing quote or the end
    /// of the input. (A `next_page` value is compared by the rewriter, not here.)
    fn string(&mut self, input: &[u8], i: usize) -> usize {
        match string_end(input, i, &mut self.escaped) {
            Some(end) => {
                self.value_done();
                end
            }
            None => input.len(),
        }
    }

    /// In `Key`: reads a key of a followed object up to its closing quote, a backslash or the
    /// end of the input.
    fn key(&mut self, input: &[u8], i: usize) -> usize {
        let rest = input.get(i..).unwrap_or_default();
        let Some(k) = find_quote_or_backslash(rest) else {
            self.push_key(rest);
            return input.len();
        };
        let (run, end) = rest.split_at(k);
        if end.first() == Some(&b'\\') {
            self.push_key(run);
            self.state = State::KeyEscape;
            return i + k + 1;
        }
        // The usual case, a whole key without escapes in this input, is looked at in place.
        let key = if self.key_len == 0 {
            run
        } else {
            self.push_key(run);
            self.key
                .get(..usize::from(self.key_len))
                .unwrap_or_default()
        };
        self.slot = match (self.key_ours, self.top()) {
            (true, Some(parent)) => Slot::of(parent, key),
            _ => Slot::Nothing,
        };
        // `":`: the value comes next at once.
        let after = i + k + 1;
        if input.get(after) == Some(&b':') {
            self.state = State::Value;
            return after + 1;
        }
        self.state = State::Colon;
        after
    }

    /// In `Number`: crosses the number's bytes, accumulating them if the slot wants an integer.
    fn number(&mut self, input: &[u8], i: usize) -> usize {
        let rest = input.get(i..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&c| !is_number_byte(c))
            .unwrap_or(rest.len());
        let (run, after) = rest.split_at(len);
        if let Some(n) = self.number {
            // Digits only: a sign, fraction or exponent makes it not an integer we take.
            self.number = run.iter().try_fold(n, |n, &c| {
                let digit = c.checked_sub(b'0').filter(|d| *d <= 9)?;
                n.checked_mul(10)?.checked_add(u64::from(digit))
            });
        }
        if after.is_empty() {
            // The number may go on in the next input.
            return input.len();
        }
        // The delimiter is read again by the state after the value.
        if let Some(n) = self.number.take() {
            self.store_integer(n);
        }
        self.value_done();
        i + len
    }

    /// In `Literal`: matches the rest of `true`, `false` or `null`.
    fn literal(&mut self, input: &[u8], mut i: usize, literal: Literal, mut matched: u8) -> usize {
        let word = literal.word();
        while let Some(&want) = word.get(usize::from(matched)) {
            match input.get(i) {
                None => {
                    self.state = State::Literal { literal, matched };
                    return i;
                }
                Some(&b) if b == want => {
                    i += 1;
                    matched += 1;
                }
                Some(_) => {
                    self.state = State::Stopped;
                    return i;
                }
            }
        }
        if self.slot == Slot::IsCached {
            match literal {
                Literal::True => self.found.cached = Some(true),
                Literal::False => self.found.cached = Some(false),
                Literal::Null => {}
            }
        }
        self.value_done();
        i
    }

    fn top(&self) -> Option<Ctx> {
        let depth = usize::from(self.depth);
        depth
            .checked_sub(1)
            .and_then(|top| self.frames.get(top))
            .copied()
    }

    fn open(&mut self, ctx: Ctx) {
        match self.frames.get_mut(usize::from(self.depth)) {
            Some(frame) => {
                *frame = ctx;
                self.depth += 1;
                self.state = State::FirstKey;
            }
            // Cannot happen (each followed object's children are at most one level deeper and
            // FRAME_CAP covers the deepest), but a full stack only means "not ours".
            None => {
                self.skip_depth = 1;
                self.state = State::Skip;
            }
        }
    }

    fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        self.value_done();
    }

    /// Skips the container whose opening bracket was just read; returns as [`Self::skip`].
    fn start_skip(&mut self, input: &[u8], i: usize) -> usize {
        self.skip_depth = 1;
        self.state = State::Skip;
        self.skip(input, i)
    }

    /// Reads the key whose opening quote was just read; returns as [`Self::key`].
    fn start_key(&mut self, input: &[u8], i: usize) -> usize {
        self.state = State::Key;
        self.key_len = 0;
        self.key_ours = true;
        self.key(input, i)
    }

    /// A value ended; what comes next depends on whether it was the top-level one.
    fn value_done(&mut self) {
        self.slot = Slot::Nothing;
        self.state = if self.depth == 0 {
            State::End
        } else {
            State::AfterValue
        };
    }

    /// Appends decoded key bytes; a key that outgrows [`KEY_CAP`] is not ours.
    fn push_key(&mut self, bytes: &[u8]) {
        let len = usize::from(self.key_len);
        match self.key.get_mut(len..len + bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                // At most KEY_CAP (24): fits.
                self.key_len = u8::try_from(len + bytes.len()).unwrap_or(u8::MAX);
            }
            None => self.key_ours = false,
        }
    }

    fn store_integer(&mut self, n: u64) {
        let found = &mut self.found;
        match self.slot {
            Slot::CreditsUsed => found.credits_used = Some(n),
            Slot::Balance => found.balance = Some(n),
            Slot::LimitMinute => {
                if let Ok(n) = u32::try_from(n) {
                    found.limit_minute = Some(n);
                }
            }
            Slot::RemainingMinute => {
                if let Ok(n) = u32::try_from(n) {
                    found.remaining_minute = Some(n);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const FIXTURE: &[u8] =
        include_bytes!("../../sandbox/fixtures/update-tracking-link.200.json");

    pub(crate) fn fixture_found() -> UpstreamFacts {
        UpstreamFacts {
            credits_used: Some(1),
            balance: Some(10_055_796),
            cached: Some(false),
            limit_minute: Some(5000),
            remaining_minute: Some(4999),
        }
    }

    fn scan(chunks: &[&[u8]]) -> UpstreamFacts {
        let mut scanner = MetaScanner::new();
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.found()
    }

    /// A tiny deterministic PRNG (xorshift64*), enough for random split points.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed.max(1))
        }
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Cuts `body` into random pieces (including empty ones).
    pub(crate) fn random_split<'a>(body: &'a [u8], rng: &mut Rng) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let n = rng.below(rest.len().min(17) + 1);
            let (piece, tail) = rest.split_at(n);
            pieces.push(piece);
            rest = tail;
        }
        pieces
    }

    #[test]
    fn the_fixture_fed_whole_yields_every_figure() {
        assert_eq!(scan(&[FIXTURE]), fixture_found());
    }

    #[test]
    fn the_fixture_fed_byte_by_byte_yields_every_figure() {
        let bytes: Vec<&[u8]> = FIXTURE.chunks(1).collect();
        assert_eq!(scan(&bytes), fixture_found());
    }

    #[test]
    fn the_fixture_split_at_every_point_yields_every_figure() {
        for at in 0..=FIXTURE.len() {
            let (a, b) = FIXTURE.split_at(at);
            assert_eq!(scan(&[a, b]), fixture_found(), "split at {at}");
        }
    }

    #[test]
    fn meta_before_data_is_found() {
        let body = br#"{"_meta":{"_credits":{"used":3,"balance":7},"_cache":{"is_cached":true},
            "_rate_limits":{"limit_minute":60,"remaining_minute":59}},"data":[1,2,{"a":"b"}]}"#;
        assert_eq!(
            scan(&[body]),
            UpstreamFacts {
                credits_used: Some(3),
                balance: Some(7),
                cached: Some(true),
                limit_minute: Some(60),
                remaining_minute: Some(59),
            }
        );
    }

    #[test]
    fn a_meta_nested_inside_data_is_ignored() {
        let body = br#"{"data":{"_meta":{"_credits":{"used":999,"balance":999}},
            "list":[{"_meta":{"_cache":{"is_cached":true}}}]},
            "other":{"_credits":{"used":5}},
            "_meta":{"_credits":{"used":2},"x":{"_credits":{"balance":8}}}}"#;
        assert_eq!(
            scan(&[body]),
            UpstreamFacts {
                credits_used: Some(2),
                ..UpstreamFacts::default()
            }
        );
    }

    #[test]
    fn a_top_level_array_has_no_meta() {
        let body = br#"[{"_meta":{"_credits":{"used":1}}}]"#;
        assert_eq!(scan(&[body]), UpstreamFacts::default());
    }

    #[test]
    fn strings_full_of_json_syntax_do_not_confuse_the_tokenizer() {
        let body = br#"{"data":{"text":"a \"quoted\" {brace} [bracket] \\ \/ \u0022 \"_meta\":{",
            "k\"ey}":"v","\u005fmeta":"not an object","emoji":"\ud83d\ude00"},
            "note":"\"}\\","_m\u0065ta":{"_credits":{"us\u0065d":4,"balance":1}}}"#;
        assert_eq!(
            scan(&[body]),
            UpstreamFacts {
                credits_used: Some(4),
                balance: Some(1),
                ..UpstreamFacts::default()
            }
        );
    }

    #[test]
    fn values_of_the_wrong_type_are_ignored() {
        let body = br#"{"_meta":{"_credits":{"used":"1","balance":null},
            "_cache":{"is_cached":"true"},
            "_rate_limits":{"limit_minute":-5,"remaining_minute":1.5}}}"#;
        assert_eq!(scan(&[body]), UpstreamFacts::default());
        let body = br#"{"_meta":{"_credits":{"used":[1],"balance":{"v":2}},
            "_cache":{"is_cached":0},
            "_rate_limits":{"limit_minute":4294967296,"remaining_minute":1e3}}}"#;
        assert_eq!(scan(&[body]), UpstreamFacts::default());
        let body = br#"{"_meta":{"_credits":{"used":18446744073709551616,"balance":18446744073709551615}}}"#;
        assert_eq!(
            scan(&[body]),
            UpstreamFacts {
                balance: Some(u64::MAX),
                ..UpstreamFacts::default()
            }
        );
    }

    #[test]
    fn garbage_and_truncated_input_never_panics_and_keeps_what_was_found() {
        let truncated = &FIXTURE[..FIXTURE.len() - 200];
        let found = scan(&[truncated]);
        assert_eq!(found.credits_used, Some(1));
        assert_eq!(found.balance, Some(10_055_796));

        let mut garbled =
            br#"{"_meta":{"_credits":{"used":1}}, oops "_meta":{"_credits":{"used":2}}}"#.to_vec();
        let mut scanner = MetaScanner::new();
        scanner.feed(&garbled);
        assert!(scanner.is_stopped());
        assert_eq!(scanner.found().credits_used, Some(1));
        garbled.reverse();
        let _ = scan(&[&garbled]);

        for input in [
            &b"<html>502 Bad Gateway</html>"[..],
            b"\x1f\x8b\x08\x00gzip",
            b"}}}]]]",
            b"{\"a\":tru",
            b"{\"\\uZZZZ\":1}",
            b"{\"\\x\":1}",
            b"{\"a\" 1}",
            b"{\"_meta\":{\"_credits\":{\"used\":12",
            b"",
            b"   ",
            b"{\"a\":1}{\"b\":2}",
        ] {
            let _ = scan(&[input]);
        }
        let mut rng = Rng::new(7);
        for _ in 0..2000 {
            let len = rng.below(64);
            let alphabet = b"{}[]\":,\\ ntrue0123456789-_meta";
            let noise: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let _ = scan(&[&noise]);
        }
    }

    #[test]
    fn nesting_deeper_than_any_stack_is_skipped_in_constant_memory() {
        let mut body = b"{\"data\":".to_vec();
        body.extend(std::iter::repeat_n(b"[{\"a\":".as_slice(), 100_000).flatten());
        body.extend_from_slice(b"1");
        body.extend(std::iter::repeat_n(b"}]".as_slice(), 100_000).flatten());
        body.extend_from_slice(br#","_meta":{"_credits":{"used":6}}}"#);
        assert_eq!(scan(&[&body]).credits_used, Some(6));
    }

    #[test]
    fn a_key_longer_than_the_cap_is_not_ours() {
        let long = "_meta".repeat(10);
        let body = format!(
            r#"{{"{long}":{{"_credits":{{"used":1}}}},"_meta":{{"_credits":{{"balance":2}}}}}}"#
        );
        let found = scan(&[body.as_bytes()]);
        assert_eq!(found.credits_used, None);
        assert_eq!(found.balance, Some(2));
    }

    #[test]
    fn strings_and_escapes_at_every_offset_of_a_word_are_crossed_at_every_split() {
        for pad in 0..9 {
            for len in [0, 7, 8, 9, 24, 31, 32, 33, 40, 64, 100] {
                let (pad, fill) = ("p".repeat(pad), "x".repeat(len));
                let body = format!(
                    r#"{{"data":["{pad}",["{fill}\"{fill}\\","\\{{\u005d\"",{{"{fill}":"]"}}]],
                    "_meta":{{"_cache":{{"n":"{pad}\"{fill}\\","is_cached":true}},"_credits":{{"used":{}}}}}}}"#,
                    len + 1
                );
                let expected = UpstreamFacts {
                    credits_used: Some(len as u64 + 1),
                    cached: Some(true),
                    ..UpstreamFacts::default()
                };
                assert_eq!(properties::reference(&body), expected, "{body}");
                let body = body.as_bytes();
                for at in 0..=body.len() {
                    let (a, b) = body.split_at(at);
                    assert_eq!(scan(&[a, b]), expected, "split at {at}");
                }
            }
        }
    }

    /// Bodies whose scan must not depend on where the chunks are cut.
    pub(crate) fn sample_bodies() -> Vec<Vec<u8>> {
        vec![
            FIXTURE.to_vec(),
            br#"{"_meta":{"_credits":{"used":3,"balance":7}},"data":[1,-2.5e3,true,null]}"#
                .to_vec(),
            br#"{"data":{"s":"\\\"\u0041}{","_meta":{"_credits":{"used":9}}},
              "_pagination":{"next_page":"https:\/\/app.onlyfansapi.com\/api\/x?offset=10"},
              "_meta":{"_cache":{"is_cached":true},"_rate_limits":{"limit_minute":10,
              "remaining_minute":0},"_pagination":{"next_page":null}}}"#
                .to_vec(),
            br#"{"_meta":{"_credits":{"used":"1"}}, oops"#.to_vec(),
            br#"  {  "_meta" : { "_credits" : { "used" : 12345678901234 } } }  "#.to_vec(),
        ]
    }

    #[test]
    fn random_splits_give_the_same_result_as_the_whole_body() {
        let mut rng = Rng::new(0x5eed);
        for body in sample_bodies() {
            let whole = scan(&[&body]);
            for _ in 0..500 {
                let pieces = random_split(&body, &mut rng);
                assert_eq!(scan(&pieces), whole, "{}", String::from_utf8_lossy(&body));
            }
        }
    }

    /// A `data` array of objects whose strings are full of escapes and brackets, then `_meta`.
    pub(crate) fn big_body(min_len: usize) -> Vec<u8> {
        let item = br#"{"id":"100000000000000003","label":"Twitter \"bio\" {x} [y] \\ \/ \u00e9","n":12345,"f":-1.5e3,"ok":true,"none":null,"nested":{"_meta":{"_credits":{"used":999}}},"tags":["a","b",[1,[2,[3]]]]},"#;
        let mut body = Vec::with_capacity(min_len + 1024);
        body.extend_from_slice(b"{\"data\":[");
        while body.len() < min_len {
            body.extend_from_slice(item);
        }
        body.extend_from_slice(b"{}],");
        // The fixture minus its opening brace: its own `data` becomes a second key, then `_meta`.
        body.extend_from_slice(&FIXTURE[FIXTURE.iter().position(|&b| b == b'"').unwrap_or(0)..]);
        body
    }

    #[test]
    fn a_fifty_megabyte_body_in_64k_chunks_is_scanned_in_constant_memory() {
        let body = big_body(50 * 1024 * 1024);
        let mut scanner = MetaScanner::new();
        let started = std::time::Instant::now();
        for chunk in body.chunks(64 * 1024) {
            scanner.feed(chunk);
        }
        let elapsed = started.elapsed();
        assert_eq!(scanner.found(), fixture_found());
        // No heap: the struct is all the state there is.
        assert!(std::mem::size_of::<MetaScanner>() <= 128);
        let mb = body.len() as f64 / 1e6;
        eprintln!(
            "meter scan: {mb:.1} MB in {elapsed:?} = {:.0} MB/s",
            mb / elapsed.as_secs_f64()
        );
    }

    /// Property tests: generated documents, cut anywhere (the `meta_scanner` fuzz target in
    /// `fuzz/` explores arbitrary bytes; these run in every `cargo test`).
    pub(crate) mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        /// Any JSON value a response's `data` could hold, a few levels deep, with keys that look
        /// like ours to tempt the scanner.
        pub(crate) fn json_noise() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                // Fractions that print and parse back exactly (serde_json's default float
                // parsing is not exact to the last bit).
                (-4000i32..4000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
                "[ -~\u{e9}\u{1f600}]{0,12}".prop_map(Value::from),
                // Long enough to be crossed in bulk, with an escape now and then.
                "[a-z]{20,60}[\"\\\\/\n]?[a-z ]{0,40}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 32, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::vec(
                        (
                            "_meta|_credits|used|balance|next_page|_pagination|[a-z]{1,6}",
                            inner
                        ),
                        0..4
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// `body` cut at the given points.
        pub(crate) fn cut<'a>(body: &'a [u8], at: &[prop::sample::Index]) -> Vec<&'a [u8]> {
            let mut points: Vec<usize> = at.iter().map(|i| i.index(body.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for p in points {
                pieces.push(&body[from..p]);
                from = p;
            }
            pieces.push(&body[from..]);
            pieces
        }

        /// A `{"data": ..., "_meta": {...}}` response holding `found`, `_meta` first or last.
        fn response(found: UpstreamFacts, data: &Value, note: &Value, meta_first: bool) -> String {
            let mut credits = serde_json::Map::new();
            credits.insert("note".into(), note.clone());
            if let Some(n) = found.credits_used {
                credits.insert("used".into(), n.into());
            }
            if let Some(n) = found.balance {
                credits.insert("balance".into(), n.into());
            }
            let mut cache = serde_json::Map::new();
            if let Some(b) = found.cached {
                cache.insert("is_cached".into(), b.into());
            }
            let mut limits = serde_json::Map::new();
            limits.insert("limit_day".into(), Value::Null);
            if let Some(n) = found.limit_minute {
                limits.insert("limit_minute".into(), n.into());
            }
            if let Some(n) = found.remaining_minute {
                limits.insert("remaining_minute".into(), n.into());
            }
            let meta = serde_json::json!({
                "_credits": credits, "_cache": cache, "_rate_limits": limits, "x": data,
            });
            if meta_first {
                format!(r#"{{"_meta":{meta},"data":{data}}}"#)
            } else {
                format!(r#"{{"data":{data}, "_meta" : {meta:#}}}"#)
            }
        }

        fn figures() -> impl Strategy<Value = UpstreamFacts> {
            (
                any::<Option<u64>>(),
                any::<Option<u64>>(),
                any::<Option<bool>>(),
                any::<Option<u32>>(),
                any::<Option<u32>>(),
            )
                .prop_map(
                    |(credits_used, balance, is_cached, limit_minute, remaining_minute)| {
                        UpstreamFacts {
                            credits_used,
                            balance,
                            cached: is_cached,
                            limit_minute,
                            remaining_minute,
                        }
                    },
                )
        }

        /// A generated JSON document, written out by [`Doc::write`] with members in the order
        /// generated (serde_json would sort them) and whitespace and key escapes as chosen.
        #[derive(Clone, Debug)]
        pub(crate) enum Doc {
            /// Any value, as JSON text.
            Text(String),
            Object(Vec<(String, Doc)>),
        }

        impl Doc {
            /// `ws` goes around every token of the followed-looking objects; `escape` writes
            /// each key's letters `e`, `t` and `_` as `\u` escapes.
            pub(crate) fn write(&self, ws: &str, escape: bool, out: &mut String) {
                match self {
                    Doc::Text(text) => out.push_str(text),
                    Doc::Object(members) => {
                        out.push('{');
                        for (n, (key, value)) in members.iter().enumerate() {
                            if n > 0 {
                                out.push(',');
                            }
                            out.push_str(ws);
                            let mut quoted = serde_json::to_string(key).unwrap();
                            if escape {
                                quoted = quoted
                                    .replace('e', "\\u0065")
                                    .replace('t', "\\u0074")
                                    .replace('_', "\\u005F");
                            }
                            out.push_str(&quoted);
                            out.push_str(ws);
                            out.push(':');
                            out.push_str(ws);
                            value.write(ws, escape, out);
                            out.push_str(ws);
                        }
                        out.push('}');
                    }
                }
            }
        }

        /// What may stand where a figure is expected: every type and range the scanner must
        /// tell apart, in the forms JSON allows.
        fn field_value() -> impl Strategy<Value = Doc> {
            prop_oneof![
                2 => any::<u64>().prop_map(|n| n.to_string()),
                2 => any::<u32>().prop_map(|n| n.to_string()),
                2 => (0u64..1000).prop_map(|n| n.to_string()),
                2 => any::<bool>().prop_map(|b| b.to_string()),
                1 => any::<i64>().prop_map(|n| n.to_string()),
                // Not integers, or out of range: never taken. (Not `-0`, which serde_json reads
                // as the integer 0.)
                2 => prop::sample::select(vec![
                    "1.0", "1e2", "1E+2", "0.5", "-1", "18446744073709551616",
                    "99999999999999999999999", "true", "false", "null", "\"1\"", "[1]",
                    "{\"used\":1}", "\"\\\"}\"",
                ])
                .prop_map(str::to_owned),
                1 => json_noise().prop_map(|v| v.to_string()),
            ]
            .prop_map(Doc::Text)
        }

        /// An object holding some of `fields` (each a figure or not) among noise, in any order;
        /// or, now and then, something that is not an object at all.
        fn object_with(
            fields: Vec<(&'static str, BoxedStrategy<Doc>)>,
        ) -> impl Strategy<Value = Doc> {
            let members: Vec<_> = fields
                .into_iter()
                .map(|(key, value)| {
                    prop::option::weighted(0.85, value.prop_map(move |v| (key.to_owned(), v)))
                })
                .collect();
            let noise = prop::collection::vec(
                (
                    "_meta|_credits|_cache|used|balance|is_cached|next_page|note|[a-z]{1,5}",
                    json_noise().prop_map(|v| Doc::Text(v.to_string())),
                ),
                0..3,
            );
            let object = (members, noise)
                .prop_flat_map(|(members, noise)| {
                    let all: Vec<_> = members.into_iter().flatten().chain(noise).collect();
                    Just(all).prop_shuffle()
                })
                .prop_map(|members| {
                    // One value per key, as in an object from serde_json (JSON leaves repeated
                    // keys to the reader).
                    let mut seen = std::collections::HashSet::new();
                    Doc::Object(
                        members
                            .into_iter()
                            .filter(|(k, _)| seen.insert(k.clone()))
                            .collect(),
                    )
                });
            prop_oneof![19 => object, 1 => field_value()]
        }

        /// A response: `data` noise, `_meta` with its objects, `_pagination`, in any order.
        pub(crate) fn document() -> impl Strategy<Value = Doc> {
            let figure = || field_value().boxed();
            let credits = object_with(vec![("used", figure()), ("balance", figure())]).boxed();
            let cache = object_with(vec![("is_cached", figure())]).boxed();
            let limits = object_with(vec![
                ("limit_minute", figure()),
                ("remaining_minute", figure()),
                ("limit_day", figure()),
            ])
            .boxed();
            let pagination = object_with(vec![("next_page", figure())]).boxed();
            let meta = object_with(vec![
                ("_credits", credits),
                ("_cache", cache),
                ("_rate_limits", limits),
                ("_pagination", pagination.clone()),
            ])
            .boxed();
            let data = json_noise().prop_map(|v| Doc::Text(v.to_string())).boxed();
            object_with(vec![
                ("data", data),
                ("_meta", meta),
                ("_pagination", pagination),
            ])
        }

        /// The figures of a whole document, read by serde_json.
        pub(crate) fn reference(text: &str) -> UpstreamFacts {
            let root: Value = serde_json::from_str(text).unwrap();
            let field = |object: &str, name: &str| {
                root.get("_meta")
                    .and_then(|m| m.get(object))
                    .and_then(|o| o.get(name))
            };
            let small = |object, name| {
                field(object, name)
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
            };
            UpstreamFacts {
                credits_used: field("_credits", "used").and_then(Value::as_u64),
                balance: field("_credits", "balance").and_then(Value::as_u64),
                cached: field("_cache", "is_cached").and_then(Value::as_bool),
                limit_minute: small("_rate_limits", "limit_minute"),
                remaining_minute: small("_rate_limits", "remaining_minute"),
            }
        }

        /// `found` and `is_stopped` after feeding `pieces`.
        fn scan_pieces(pieces: &[&[u8]]) -> (UpstreamFacts, bool) {
            let mut scanner = MetaScanner::new();
            for piece in pieces {
                scanner.feed(piece);
            }
            (scanner.found(), scanner.is_stopped())
        }

        proptest! {
            #[test]
            fn a_response_yields_its_figures_however_it_is_cut(
                found in figures(),
                data in json_noise(),
                note in json_noise(),
                meta_first in any::<bool>(),
                at in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let body = response(found, &data, &note, meta_first);
                let pieces = cut(body.as_bytes(), &at);
                let mut scanner = MetaScanner::new();
                for piece in &pieces {
                    scanner.feed(piece);
                }
                prop_assert_eq!(scanner.found(), found, "{}", body);
                prop_assert!(!scanner.is_stopped());
            }

            #[test]
            fn any_bytes_scan_the_same_however_they_are_cut(
                body in prop::collection::vec(
                    prop::sample::select(b"{}[]\":,\\ -.eE0123456789tfnrulsa_metcdibgp".to_vec()),
                    0..160,
                ),
                at in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let mut whole = MetaScanner::new();
                whole.feed(&body);
                let mut pieces = MetaScanner::new();
                for piece in cut(&body, &at) {
                    pieces.feed(piece);
                }
                prop_assert_eq!(pieces.found(), whole.found());
                prop_assert_eq!(pieces.is_stopped(), whole.is_stopped());
            }

            #[test]
            fn any_document_cut_anywhere_yields_what_serde_json_reads_in_it(
                doc in document(),
                ws in prop::sample::select(vec!["", "", " ", "\n  ", " \t\r\n"]),
                escape in prop::bool::weighted(0.2),
                at in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
            ) {
                let mut text = String::new();
                doc.write(ws, escape, &mut text);
                let expected = reference(&text);
                let bytes: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
                prop_assert_eq!(scan_pieces(&cut(text.as_bytes(), &at)), (expected, false), "{}", text);
                prop_assert_eq!(scan_pieces(&bytes), (expected, false), "{}", text);
            }

            #[test]
            fn arbitrary_bytes_never_panic_and_scan_the_same_however_they_are_cut(
                body in prop::collection::vec(any::<u8>(), 0..400),
                at in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                prop_assert_eq!(scan_pieces(&cut(&body, &at)), scan_pieces(&[&body]));
            }

            #[test]
            fn damaged_documents_never_panic_and_scan_the_same_however_they_are_cut(
                doc in document(),
                damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                at in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let mut text = String::new();
                doc.write("", false, &mut text);
                let mut body = text.into_bytes();
                for (index, byte) in damage {
                    let len = body.len();
                    body[index.index(len)] = byte;
                }
                prop_assert_eq!(scan_pieces(&cut(&body, &at)), scan_pieces(&[&body]));
            }
        }
    }
}
