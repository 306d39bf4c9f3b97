//! Request body decoding for HTTP/1.1 (RFC 9112 §6 and §7).
//!
//! A [`BodyDecoder`] is fed byte slices as they arrive from the network. It appends the
//! decoded body bytes to a caller-supplied buffer and reports how many input bytes it
//! consumed and whether the body is complete. It does no I/O and never looks past the end
//! of the body, so whatever follows (the next pipelined request) stays with the caller.
//!
//! The chunked decoder is a state machine in the style of hyper's `ChunkedState`: one enum
//! variant per position in the grammar and one small function per state. It can be
//! suspended and resumed at every byte, so any split of the input gives the same result.
//! It is strict about framing because lenient chunked parsing is what request smuggling
//! exploits: every line must end in CRLF, a bare CR or a bare LF is an error, the chunk
//! size is bounded in digits, and every unbounded part of the grammar (whitespace and
//! extensions, trailers, data) is counted against a limit.

use thiserror::Error;

/// Default for [`BodyLimits::max_body`] (`--max-body-bytes`): 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// Most bytes of chunk extensions accepted, in total across the whole body.
///
/// Everything between the last digit of a chunk size and the CR that ends the line counts,
/// including whitespace, like hyper's `CHUNKED_EXTENSIONS_LIMIT`.
pub const MAX_CHUNK_EXTENSION_BYTES: usize = 4096;

/// Most bytes of the trailer section accepted, line endings and the final CRLF included.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Most hex digits accepted in a chunk size, leading zeros included.
pub const MAX_CHUNK_SIZE_DIGITS: usize = 16;

/// Limits a body decoder enforces; all come from flags or named constants.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Largest decoded body accepted (`--max-body-bytes`, default 16 MiB).
    pub max_body: u64,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Why a request body could not be decoded.
///
/// [`BodyError::TooLarge`] maps to 413; every other variant means the framing is broken,
/// so the caller answers 400 and closes the connection.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BodyError {
    /// The body is, or declares that it will be, longer than the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded, in bytes.
        limit: u64,
    },
    /// A chunk size is missing or contains something other than hex digits.
    #[error("chunk size is not a hexadecimal number")]
    InvalidChunkSize,
    /// A chunk size has more hex digits than allowed.
    #[error("chunk size has more than {max} hex digits", max = MAX_CHUNK_SIZE_DIGITS)]
    ChunkSizeTooLong,
    /// A chunk extension contains a control character.
    #[error("chunk extension contains a control character")]
    InvalidChunkExtension,
    /// The chunk extensions of the body are longer in total than allowed.
    #[error("chunk extensions are longer than {max} bytes in total", max = MAX_CHUNK_EXTENSION_BYTES)]
    ExtensionsTooLong,
    /// Chunk data is not followed by CRLF.
    #[error("chunk data is not followed by CRLF")]
    MissingCrlf,
    /// A CR is followed by something other than LF.
    #[error("CR is not followed by LF")]
    BareCr,
    /// An LF is not preceded by CR.
    #[error("LF is not preceded by CR")]
    BareLf,
    /// A trailer field line is not of the form `token ":" value`.
    #[error("trailer field line is malformed")]
    InvalidTrailer,
    /// A trailer field line starts with whitespace, which is obsolete line folding.
    #[error("trailer field uses obsolete line folding")]
    ObsFoldInTrailer,
    /// The trailer section is longer than allowed.
    #[error("trailer section is longer than {max} bytes", max = MAX_TRAILER_BYTES)]
    TrailersTooLarge,
}

impl BodyError {
    /// Tells whether this error means the body is too large (413) rather than malformed (400).
    #[must_use]
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }
}

/// What one call to [`BodyDecoder::decode`] achieved.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    /// How many bytes at the start of the input were consumed.
    pub consumed: usize,
    /// Whether the body, including any trailer section, is complete.
    pub done: bool,
}

/// Decodes one request body, which has either a known length or chunked framing.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    kind: Kind,
}

/// The framing of the body being decoded.
#[derive(Clone, Debug)]
enum Kind {
    /// A `Content-Length` body with this many bytes still to come.
    Length { remaining: u64 },
    /// A `Transfer-Encoding: chunked` body.
    Chunked { chunked: Chunked },
}

/// The state of a chunked body together with the totals its limits apply to.
#[derive(Clone, Debug)]
struct Chunked {
    /// Where in the grammar the next byte falls.
    state: ChunkedState,
    /// The limits in force.
    limits: BodyLimits,
    /// The sum of the chunk sizes seen so far, which is never more than `limits.max_body`.
    declared: u64,
    /// Bytes of chunk extensions (and whitespace after chunk sizes) seen so far.
    extension_bytes: usize,
    /// Bytes of the trailer section seen so far.
    trailer_bytes: usize,
}

/// A position in the chunked grammar of RFC 9112 §7.1.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ChunkedState {
    /// Reading the hex digits of a chunk size.
    Size { value: u64, digits: usize },
    /// Reading whitespace after a chunk size, which must lead to a `;`.
    SizeBws { size: u64 },
    /// Reading chunk extensions up to the CR that ends the chunk-size line.
    Extension { size: u64 },
    /// Expecting the LF that ends the chunk-size line.
    SizeLf { size: u64 },
    /// Copying chunk data.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer field line or of the final CRLF.
    TrailerStart,
    /// Reading a trailer field name.
    TrailerName,
    /// Reading a trailer field value.
    TrailerValue,
    /// Expecting the LF that ends a trailer field line.
    TrailerLf,
    /// Expecting the LF of the final CRLF.
    EndLf,
    /// The body is complete.
    Done,
    /// Decoding failed; the error is returned again on every later call.
    Failed { error: BodyError },
}

impl BodyDecoder {
    /// Creates a decoder for a body of `Content-Length: n` bytes.
    ///
    /// # Errors
    ///
    /// Fails at once with [`BodyError::TooLarge`] when `n` is more than `limits.max_body`.
    pub fn length(n: u64, limits: BodyLimits) -> Result<Self, BodyError> {
        if n > limits.max_body {
            return Err(BodyError::TooLarge {
                limit: limits.max_body,
            });
        }
        Ok(Self {
            kind: Kind::Length { remaining: n },
        })
    }

    /// Creates a decoder for a `Transfer-Encoding: chunked` body.
    #[must_use]
    pub fn chunked(limits: BodyLimits) -> Self {
        Self {
            kind: Kind::Chunked {
                chunked: Chunked {
                    state: ChunkedState::Size {
                        value: 0,
                        digits: 0,
                    },
                    limits,
                    declared: 0,
                    extension_bytes: 0,
                    trailer_bytes: 0,
                },
            },
        }
    }

    /// Feeds bytes that arrived from the network.
    ///
    /// Decoded body bytes are appended to `out`. The result says how many input bytes were
    /// consumed and whether the body (for a chunked body, including the trailer section and
    /// its final CRLF) is complete. Bytes after the end of the body are not consumed, since
    /// they belong to the next pipelined request. While the body is not complete, all of the
    /// input is consumed, and the caller calls again when more arrives. An empty `input`
    /// gives `(0, false)` unless the body is already complete. Once an error has been
    /// returned, every later call returns the same error.
    ///
    /// # Errors
    ///
    /// Fails when a chunked body is malformed, with [`BodyError::TooLarge`] when it declares
    /// more than `max_body` bytes, or when its extensions or trailers pass their limits.
    /// A length body never fails here.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, BodyError> {
        match &mut self.kind {
            Kind::Length { remaining } => {
                let taken = take(*remaining, input);
                out.extend_from_slice(taken);
                *remaining = remaining.saturating_sub(len_u64(taken));
                Ok(Progress {
                    consumed: taken.len(),
                    done: *remaining == 0,
                })
            }
            Kind::Chunked { chunked } => chunked.decode(input, out),
        }
    }

    /// Tells whether the whole body has been decoded.
    #[must_use]
    pub fn is_done(&self) -> bool {
        match &self.kind {
            Kind::Length { remaining } => *remaining == 0,
            Kind::Chunked { chunked } => chunked.state == ChunkedState::Done,
        }
    }

    /// Returns how many body bytes are still expected for a length body, so the caller can
    /// size its reads; a chunked body gives `None`.
    #[must_use]
    pub fn remaining_hint(&self) -> Option<u64> {
        match &self.kind {
            Kind::Length { remaining } => Some(*remaining),
            Kind::Chunked { .. } => None,
        }
    }
}

impl Chunked {
    /// Runs the state machine over `input` until it is used up or the body is complete.
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, BodyError> {
        let mut consumed = 0usize;
        loop {
            match &self.state {
                ChunkedState::Done => {
                    return Ok(Progress {
                        consumed,
                        done: true,
                    })
                }
                ChunkedState::Failed { error } => return Err(error.clone()),
                _ => {}
            }
            let rest = input.get(consumed..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(Progress {
                    consumed,
                    done: false,
                });
            }
            match self.step(rest, out) {
                Ok(n) => consumed = consumed.saturating_add(n),
                Err(error) => {
                    self.state = ChunkedState::Failed {
                        error: error.clone(),
                    };
                    return Err(error);
                }
            }
        }
    }

    /// Advances over the start of `rest`, which is not empty, and returns how many bytes
    /// that took; chunk data is copied in bulk, everything else a byte at a time.
    fn step(&mut self, rest: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyError> {
        let Some(&byte) = rest.first() else {
            return Ok(0);
        };
        if self.state.in_trailer_section() {
            self.count_trailer_byte()?;
        }
        let next = match self.state {
            ChunkedState::Data { remaining } => {
                let taken = take(remaining, rest);
                out.extend_from_slice(taken);
                self.state = read_data(remaining, taken);
                return Ok(taken.len());
            }
            ChunkedState::Size { value, digits } => self.read_size(value, digits, byte)?,
            ChunkedState::SizeBws { size } => self.read_size_bws(size, byte)?,
            ChunkedState::Extension { size } => self.read_extension(size, byte)?,
            ChunkedState::SizeLf { size } => read_size_lf(size, byte)?,
            ChunkedState::DataCr => read_data_cr(byte)?,
            ChunkedState::DataLf => read_data_lf(byte)?,
            ChunkedState::TrailerStart => read_trailer_start(byte)?,
            ChunkedState::TrailerName => read_trailer_name(byte)?,
            ChunkedState::TrailerValue => read_trailer_value(byte)?,
            ChunkedState::TrailerLf => read_trailer_lf(byte)?,
            ChunkedState::EndLf => read_end_lf(byte)?,
            ChunkedState::Done | ChunkedState::Failed { .. } => return Ok(0),
        };
        self.state = next;
        Ok(1)
    }

    /// Reads a byte of a chunk size: another hex digit, or the byte that ends the size.
    fn read_size(
        &mut self,
        value: u64,
        digits: usize,
        byte: u8,
    ) -> Result<ChunkedState, BodyError> {
        if let Some(digit) = char::from(byte).to_digit(16) {
            let digits = digits
                .checked_add(1)
                .filter(|&d| d <= MAX_CHUNK_SIZE_DIGITS)
                .ok_or(BodyError::ChunkSizeTooLong)?;
            let value = value
                .checked_mul(16)
                .and_then(|v| v.checked_add(u64::from(digit)))
                .ok_or(BodyError::ChunkSizeTooLong)?;
            return Ok(ChunkedState::Size { value, digits });
        }
        if digits == 0 {
            return Err(BodyError::InvalidChunkSize);
        }
        let next = match byte {
            b' ' | b'\t' => ChunkedState::SizeBws { size: value },
            b';' => ChunkedState::Extension { size: value },
            b'\r' => ChunkedState::SizeLf { size: value },
            b'\n' => return Err(BodyError::BareLf),
            _ => return Err(BodyError::InvalidChunkSize),
        };
        self.admit_chunk(value)?;
        if byte != b'\r' {
            self.count_extension_byte()?;
        }
        Ok(next)
    }

    /// Reads whitespace after a chunk size, which may only lead to a `;`.
    fn read_size_bws(&mut self, size: u64, byte: u8) -> Result<ChunkedState, BodyError> {
        match byte {
            b' ' | b'\t' => {
                self.count_extension_byte()?;
                Ok(ChunkedState::SizeBws { size })
            }
            b';' => {
                self.count_extension_byte()?;
                Ok(ChunkedState::Extension { size })
            }
            b'\n' => Err(BodyError::BareLf),
            _ => Err(BodyError::InvalidChunkSize),
        }
    }

    /// Reads a byte of chunk extensions; they are checked only for control characters.
    fn read_extension(&mut self, size: u64, byte: u8) -> Result<ChunkedState, BodyError> {
        match byte {
            b'\r' => Ok(ChunkedState::SizeLf { size }),
            b'\n' => Err(BodyError::BareLf),
            b'\t' | b' '..=b'~' | 0x80..=0xff => {
                self.count_extension_byte()?;
                Ok(ChunkedState::Extension { size })
            }
            _ => Err(BodyError::InvalidChunkExtension),
        }
    }

    /// Adds a chunk of `size` bytes to the declared total, before any of its data is read.
    fn admit_chunk(&mut self, size: u64) -> Result<(), BodyError> {
        let limit = self.limits.max_body;
        self.declared = self
            .declared
            .checked_add(size)
            .filter(|&total| total <= limit)
            .ok_or(BodyError::TooLarge { limit })?;
        Ok(())
    }

    /// Counts one byte against [`MAX_CHUNK_EXTENSION_BYTES`].
    fn count_extension_byte(&mut self) -> Result<(), BodyError> {
        self.extension_bytes = self
            .extension_bytes
            .checked_add(1)
            .filter(|&n| n <= MAX_CHUNK_EXTENSION_BYTES)
            .ok_or(BodyError::ExtensionsTooLong)?;
        Ok(())
    }

    /// Counts one byte against [`MAX_TRAILER_BYTES`].
    fn count_trailer_byte(&mut self) -> Result<(), BodyError> {
        self.trailer_bytes = self
            .trailer_bytes
            .checked_add(1)
            .filter(|&n| n <= MAX_TRAILER_BYTES)
            .ok_or(BodyError::TrailersTooLarge)?;
        Ok(())
    }
}

impl ChunkedState {
    /// Tells whether a byte read in this state is part of the trailer section.
    fn in_trailer_section(&self) -> bool {
        matches!(
            self,
            Self::TrailerStart
                | Self::TrailerName
                | Self::TrailerValue
                | Self::TrailerLf
                | Self::EndLf
        )
    }
}

/// Moves on after `taken` bytes of a chunk that had `remaining` bytes left.
fn read_data(remaining: u64, taken: &[u8]) -> ChunkedState {
    match remaining.saturating_sub(len_u64(taken)) {
        0 => ChunkedState::DataCr,
        remaining => ChunkedState::Data { remaining },
    }
}

/// Expects the LF that ends a chunk-size line; a zero size starts the trailer section.
fn read_size_lf(size: u64, byte: u8) -> Result<ChunkedState, BodyError> {
    match (byte, size) {
        (b'\n', 0) => Ok(ChunkedState::TrailerStart),
        (b'\n', remaining) => Ok(ChunkedState::Data { remaining }),
        _ => Err(BodyError::BareCr),
    }
}

/// Expects the CR after chunk data.
fn read_data_cr(byte: u8) -> Result<ChunkedState, BodyError> {
    match byte {
        b'\r' => Ok(ChunkedState::DataLf),
        b'\n' => Err(BodyError::BareLf),
        _ => Err(BodyError::MissingCrlf),
    }
}

/// Expects the LF after chunk data; the next chunk-size line follows.
fn read_data_lf(byte: u8) -> Result<ChunkedState, BodyError> {
    match byte {
        b'\n' => Ok(ChunkedState::Size {
            value: 0,
            digits: 0,
        }),
        _ => Err(BodyError::BareCr),
    }
}

/// Reads the first byte of a line in the trailer section.
fn read_trailer_start(byte: u8) -> Result<ChunkedState, BodyError> {
    match byte {
        b'\r' => Ok(ChunkedState::EndLf),
        b'\n' => Err(BodyError::BareLf),
        b' ' | b'\t' => Err(BodyError::ObsFoldInTrailer),
        _ if is_tchar(byte) => Ok(ChunkedState::TrailerName),
        _ => Err(BodyError::InvalidTrailer),
    }
}

/// Reads a byte of a trailer field name, which ends at the colon.
fn read_trailer_name(byte: u8) -> Result<ChunkedState, BodyError> {
    match byte {
        b':' => Ok(ChunkedState::TrailerValue),
        b'\n' => Err(BodyError::BareLf),
        _ if is_tchar(byte) => Ok(ChunkedState::TrailerName),
        _ => Err(BodyError::InvalidTrailer),
    }
}

/// Reads a byte of a trailer field value, which ends at CR.
fn read_trailer_value(byte: u8) -> Result<ChunkedState, BodyError> {
    match byte {
        b'\r' => Ok(ChunkedState::TrailerLf),
        b'\n' => Err(BodyError::BareLf),
        b'\t' | b' '..=b'~' | 0x80..=0xff => Ok(ChunkedState::TrailerValue),
        _ => Err(BodyError::InvalidTrailer),
    }
}

/// Expects the LF that ends a trailer field line.
fn read_trailer_lf(byte: u8) -> Result<ChunkedState, BodyError> {
    match byte {
        b'\n' => Ok(ChunkedState::TrailerStart),
        _ => Err(BodyError::BareCr),
    }
}

/// Expects the LF of the CRLF that ends the body.
fn read_end_lf(byte: u8) -> Result<ChunkedState, BodyError> {
    match byte {
        b'\n' => Ok(ChunkedState::Done),
        _ => Err(BodyError::BareCr),
    }
}

/// Tells whether `byte` may appear in a token (RFC 9110 §5.6.2).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Returns the first `remaining` bytes of `input`, or all of it when it is shorter.
fn take(remaining: u64, input: &[u8]) -> &[u8] {
    let n = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
    input.get(..n).unwrap_or(input)
}

/// Returns the length of `bytes` as a `u64`.
fn len_u64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of a pipelined request that follows each body and must not be consumed.
    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n";

    /// What feeding some input in pieces produced.
    #[derive(Debug, PartialEq, Eq)]
    enum Fed {
        /// The body completed after `consumed` bytes of the concatenated input.
        Done { body: Vec<u8>, consumed: usize },
        /// All input was consumed and the body is not complete yet.
        Pending { body: Vec<u8> },
        /// Decoding failed.
        Failed(BodyError),
    }

    fn limits(max_body: u64) -> BodyLimits {
        BodyLimits { max_body }
    }

    fn chunked() -> BodyDecoder {
        BodyDecoder::chunked(BodyLimits::default())
    }

    /// Feeds `pieces` in order, as a connection would, and checks the consumption rules.
    fn feed(mut decoder: BodyDecoder, pieces: &[&[u8]]) -> Fed {
        let mut body = Vec::new();
        let mut offset = 0;
        for piece in pieces {
            match decoder.decode(piece, &mut body) {
                Err(error) => return Fed::Failed(error),
                Ok(Progress {
                    consumed,
                    done: true,
                }) => {
                    assert!(consumed <= piece.len());
                    assert!(decoder.is_done());
                    // A finished decoder takes nothing more.
                    let again = decoder.decode(piece.get(consumed..).unwrap(), &mut body);
                    assert_eq!(
                        again,
                        Ok(Progress {
                            consumed: 0,
                            done: true
                        })
                    );
                    return Fed::Done {
                        body,
                        consumed: offset + consumed,
                    };
                }
                Ok(Progress {
                    consumed,
                    done: false,
                }) => {
                    assert_eq!(
                        consumed,
                        piece.len(),
                        "an unfinished decoder takes all input"
                    );
                    assert!(!decoder.is_done());
                    offset += consumed;
                }
            }
        }
        assert_eq!(
            decoder.decode(&[], &mut body),
            Ok(Progress {
                consumed: 0,
                done: false
            })
        );
        Fed::Pending { body }
    }

    /// Returns the points to split an input of `len` bytes at: every point, except that for
    /// long inputs (the limit tests) the middle is sampled to keep the tests quick.
    fn split_points(len: usize) -> impl Iterator<Item = usize> {
        const EDGE: usize = 512;
        (0..=len).filter(move |&at| at <= EDGE || len - at <= EDGE || at % 61 == 0)
    }

    /// Feeds `input` whole, split at every point, and a byte at a time, and checks that
    /// every way gives the same result, which it returns.
    fn feed_every_way(make: &dyn Fn() -> BodyDecoder, input: &[u8]) -> Fed {
        let whole = feed(make(), &[input]);
        for at in split_points(input.len()) {
            let (head, tail) = input.split_at(at);
            assert_eq!(
                feed(make(), &[head, tail]),
                whole,
                "split at {at} of {input:?}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(feed(make(), &bytes), whole, "byte at a time: {input:?}");
        whole
    }

    /// Checks that `input` decodes to `expected` however it is split, and that a pipelined
    /// request after a complete body is left unconsumed.
    fn check_with(
        make: &dyn Fn() -> BodyDecoder,
        input: &[u8],
        expected: Result<&[u8], BodyError>,
    ) {
        let with_next = [input, NEXT].concat();
        match expected {
            Ok(body) => {
                let done = Fed::Done {
                    body: body.to_vec(),
                    consumed: input.len(),
                };
                assert_eq!(feed_every_way(make, input), done, "{input:?}");
                assert_eq!(feed_every_way(make, &with_next), done, "{input:?} + next");
            }
            Err(error) => {
                assert_eq!(
                    feed_every_way(make, input),
                    Fed::Failed(error.clone()),
                    "{input:?}"
                );
                assert_eq!(
                    feed_every_way(make, &with_next),
                    Fed::Failed(error),
                    "{input:?} + next"
                );
            }
        }
    }

    /// Checks a chunked body under the default limits.
    fn check(input: &[u8], expected: Result<&[u8], BodyError>) {
        check_with(&chunked, input, expected);
    }

    /// Checks a chunked body under a `max_body` limit.
    fn check_max(max_body: u64, input: &[u8], expected: Result<&[u8], BodyError>) {
        check_with(&|| BodyDecoder::chunked(limits(max_body)), input, expected);
    }

    /// Checks that `input` is a valid but incomplete chunked body that decodes to `body` so far.
    fn check_pending(input: &[u8], body: &[u8]) {
        let pending = Fed::Pending {
            body: body.to_vec(),
        };
        assert_eq!(feed_every_way(&chunked, input), pending, "{input:?}");
    }

    fn too_large(limit: u64) -> BodyError {
        BodyError::TooLarge { limit }
    }

    #[test]
    fn simple() {
        check(b"5\r\nhello\r\n0\r\n\r\n", Ok(b"hello"));
    }

    #[test]
    fn multiple_chunks() {
        check(
            b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
            Ok(b"hello world"),
        );
        check(b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n", Ok(b"abc"));
    }

    #[test]
    fn data_may_contain_crlf_and_any_byte() {
        check(b"6\r\n\r\n0\r\n\r\r\n0\r\n\r\n", Ok(b"\r\n0\r\n\r"));
        check(b"3\r\n\x00\xff\n\r\n0\r\n\r\n", Ok(b"\x00\xff\n"));
    }

    #[test]
    fn hex_sizes_in_either_case() {
        check(b"A\r\n0123456789\r\n0\r\n\r\n", Ok(b"0123456789"));
        check(b"a\r\n0123456789\r\n0\r\n\r\n", Ok(b"0123456789"));
        let data = vec![b'x'; 0xAB];
        let input = [b"aB\r\n".as_slice(), &data, b"\r\n0\r\n\r\n"].concat();
        check(&input, Ok(&data));
        let data = vec![b'y'; 0x1F0];
        let input = [b"1F0\r\n".as_slice(), &data, b"\r\n0\r\n\r\n"].concat();
        check(&input, Ok(&data));
    }

    #[test]
    fn extensions() {
        check(b"5;name\r\nhello\r\n0\r\n\r\n", Ok(b"hello"));
        check(b"5;name=value\r\nhello\r\n0\r\n\r\n", Ok(b"hello"));
        check(
            b"5;name=\"quoted; value\"\r\nhello\r\n0\r\n\r\n",
            Ok(b"hello"),
        );
        check(b"5;a;b=1;c=\"2\"\r\nhello\r\n0\r\n\r\n", Ok(b"hello"));
        check(b"5 ; a = 1 ;\tb\r\nhello\r\n0\r\n\r\n", Ok(b"hello"));
        check(b"5\t;a\r\nhello\r\n0;last=yes\r\n\r\n", Ok(b"hello"));
    }

    #[test]
    fn extensions_with_control_characters() {
        check(
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkExtension),
        );
        check(
            b"5;a\x7f\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkExtension),
        );
        check(b"5;a\nhello\r\n0\r\n\r\n", Err(BodyError::BareLf));
        check(b"5;a\rhello\r\n0\r\n\r\n", Err(BodyError::BareCr));
    }

    #[test]
    fn whitespace_after_size_must_lead_to_extension() {
        check(
            b"5 \r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
        check(
            b"5 x\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
        check(b"5 \nhello\r\n0\r\n\r\n", Err(BodyError::BareLf));
        check(
            b"5 5\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
    }

    #[test]
    fn trailers() {
        check(b"5\r\nhello\r\n0\r\nExpires: never\r\n\r\n", Ok(b"hello"));
        check(
            b"0\r\nA: 1\r\nB-c:two words\r\nEmpty:\r\nx:\t\x80\xff \r\n\r\n",
            Ok(b""),
        );
    }

    #[test]
    fn malformed_trailers() {
        check(b"0\r\nno colon\r\n\r\n", Err(BodyError::InvalidTrailer));
        check(b"0\r\nnocolon\r\n\r\n", Err(BodyError::InvalidTrailer));
        check(b"0\r\n: value\r\n\r\n", Err(BodyError::InvalidTrailer));
        check(b"0\r\nName : value\r\n\r\n", Err(BodyError::InvalidTrailer));
        check(b"0\r\nA: b\x00\r\n\r\n", Err(BodyError::InvalidTrailer));
        check(b"0\r\nA: b\x7f\r\n\r\n", Err(BodyError::InvalidTrailer));
        check(b"0\r\n\x80: b\r\n\r\n", Err(BodyError::InvalidTrailer));
    }

    #[test]
    fn obs_fold_in_trailer() {
        check(b"0\r\nA: b\r\n c\r\n\r\n", Err(BodyError::ObsFoldInTrailer));
        check(
            b"0\r\nA: b\r\n\tc\r\n\r\n",
            Err(BodyError::ObsFoldInTrailer),
        );
        check(b"0\r\n A: b\r\n\r\n", Err(BodyError::ObsFoldInTrailer));
    }

    #[test]
    fn empty_body() {
        check(b"0\r\n\r\n", Ok(b""));
        check(b"000\r\n\r\n", Ok(b""));
    }

    #[test]
    fn leading_zeros_up_to_the_digit_limit() {
        check(b"0000000000000005\r\nhello\r\n0\r\n\r\n", Ok(b"hello"));
        check(b"0000000000000000\r\n\r\n", Ok(b""));
        check(
            b"00000000000000005\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::ChunkSizeTooLong),
        );
        check(
            b"0000000000000000001\r\na\r\n0\r\n\r\n",
            Err(BodyError::ChunkSizeTooLong),
        );
        check(
            b"00000000000000000\r\n\r\n",
            Err(BodyError::ChunkSizeTooLong),
        );
    }

    #[test]
    fn non_hex_sizes() {
        check(b"g\r\nhello\r\n0\r\n\r\n", Err(BodyError::InvalidChunkSize));
        check(
            b"5x\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
        check(
            b"0x5\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
        check(b"\r\nhello\r\n0\r\n\r\n", Err(BodyError::InvalidChunkSize));
        check(
            b";a\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
        check(
            b" 5\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
        check(
            b"\t5\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
        check(
            b"\xef\xbc\x95\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
        check(b"5\r\nhello\r\nz\r\n\r\n", Err(BodyError::InvalidChunkSize));
    }

    #[test]
    fn signed_sizes() {
        check(
            b"-5\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
        check(
            b"+5\r\nhello\r\n0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
        check(
            b"5\r\nhello\r\n-0\r\n\r\n",
            Err(BodyError::InvalidChunkSize),
        );
    }

    #[test]
    fn missing_crlf_after_data() {
        check(b"5\r\nhelloX\r\n0\r\n\r\n", Err(BodyError::MissingCrlf));
        check(b"5\r\nhello0\r\n\r\n", Err(BodyError::MissingCrlf));
        check(b"4\r\nhello\r\n0\r\n\r\n", Err(BodyError::MissingCrlf));
        check(b"5\r\nhello\rX0\r\n\r\n", Err(BodyError::BareCr));
    }

    #[test]
    fn bare_lf() {
        check(b"5\nhello\r\n0\r\n\r\n", Err(BodyError::BareLf));
        check(b"5\r\nhello\n0\r\n\r\n", Err(BodyError::BareLf));
        check(b"5\r\nhello\r\n0\n\r\n", Err(BodyError::BareLf));
        check(b"5\r\nhello\r\n0\r\n\n", Err(BodyError::BareLf));
        check(b"0\r\nA: b\n\r\n", Err(BodyError::BareLf));
        check(b"0\r\nA\n: b\r\n\r\n", Err(BodyError::BareLf));
        check(b"\n", Err(BodyError::InvalidChunkSize));
    }

    #[test]
    fn bare_cr() {
        check(b"5\rhello\r\n0\r\n\r\n", Err(BodyError::BareCr));
        check(b"5\r\rhello\r\n0\r\n\r\n", Err(BodyError::BareCr));
        check(b"5\r\nhello\r\r\n0\r\n\r\n", Err(BodyError::BareCr));
        check(b"5\r\nhello\r\n0\r\r\n", Err(BodyError::BareCr));
        check(b"0\r\n\rX", Err(BodyError::BareCr));
        check(b"0\r\n\r\r\n", Err(BodyError::BareCr));
        check(b"0\r\nA: b\rc\r\n\r\n", Err(BodyError::BareCr));
    }

    #[test]
    fn size_overflow() {
        check(b"ffffffffffffffffff\r\n", Err(BodyError::ChunkSizeTooLong));
        check(b"10000000000000000\r\n", Err(BodyError::ChunkSizeTooLong));
        check(
            b"ffffffffffffffff\r\n",
            Err(too_large(DEFAULT_MAX_BODY_BYTES)),
        );
        let unlimited = || BodyDecoder::chunked(limits(u64::MAX));
        let pending = Fed::Pending {
            body: b"abc".to_vec(),
        };
        assert_eq!(
            feed_every_way(&unlimited, b"ffffffffffffffff\r\nabc"),
            pending
        );
    }

    #[test]
    fn declared_total_overflow_is_too_large() {
        let mut decoder = BodyDecoder::chunked(limits(u64::MAX));
        if let Kind::Chunked { chunked } = &mut decoder.kind {
            chunked.declared = u64::MAX - 1;
        }
        let mut out = Vec::new();
        assert_eq!(
            decoder.decode(b"1\r\n", &mut out),
            Ok(Progress {
                consumed: 3,
                done: false
            })
        );
        let mut decoder = BodyDecoder::chunked(limits(u64::MAX));
        if let Kind::Chunked { chunked } = &mut decoder.kind {
            chunked.declared = u64::MAX - 1;
        }
        assert_eq!(decoder.decode(b"2\r\n", &mut out), Err(too_large(u64::MAX)));
    }

    #[test]
    fn chunked_max_body() {
        check_max(10, b"a\r\n0123456789\r\n0\r\n\r\n", Ok(b"0123456789"));
        check_max(10, b"b\r\n0123456789a\r\n0\r\n\r\n", Err(too_large(10)));
        check_max(
            10,
            b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
            Ok(b"helloworld"),
        );
        check_max(
            10,
            b"5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n",
            Err(too_large(10)),
        );
        check_max(0, b"0\r\n\r\n", Ok(b""));
        check_max(0, b"1\r\nx\r\n0\r\n\r\n", Err(too_large(0)));
    }

    #[test]
    fn chunked_too_large_is_found_before_the_data() {
        check_max(10, b"b\r\n", Err(too_large(10)));
        check_max(10, b"b;ext", Err(too_large(10)));
        check_max(10, b"b ", Err(too_large(10)));
        check_max(10, b"5\r\nhello\r\n6\r\n", Err(too_large(10)));
        assert!(too_large(10).is_too_large());
    }

    #[test]
    fn length_max_body() {
        let exact = BodyDecoder::length(10, limits(10));
        assert!(exact.is_ok());
        check_with(
            &|| BodyDecoder::length(10, limits(10)).unwrap(),
            b"0123456789",
            Ok(b"0123456789"),
        );
        assert_eq!(
            BodyDecoder::length(11, limits(10)).err(),
            Some(too_large(10))
        );
        assert_eq!(
            BodyDecoder::length(u64::MAX, BodyLimits::default()).err(),
            Some(too_large(DEFAULT_MAX_BODY_BYTES))
        );
    }

    #[test]
    fn extensions_over_the_limit() {
        let at_limit = [
            b"5;".as_slice(),
            &[b'a'; MAX_CHUNK_EXTENSION_BYTES - 1],
            b"\r\nhello\r\n0\r\n\r\n",
        ]
        .concat();
        check(&at_limit, Ok(b"hello"));
        let over = [
            b"5;".as_slice(),
            &[b'a'; MAX_CHUNK_EXTENSION_BYTES],
            b"\r\nhello\r\n0\r\n\r\n",
        ]
        .concat();
        check(&over, Err(BodyError::ExtensionsTooLong));
        let whitespace = [b"5".as_slice(), &[b' '; MAX_CHUNK_EXTENSION_BYTES + 1]].concat();
        check(&whitespace, Err(BodyError::ExtensionsTooLong));
    }

    #[test]
    fn extension_limit_is_for_the_whole_body() {
        let ext = [b";".as_slice(), &[b'e'; MAX_CHUNK_EXTENSION_BYTES / 2 - 1]].concat();
        let mut at_limit = Vec::new();
        for _ in 0..2 {
            at_limit.extend_from_slice(b"1");
            at_limit.extend_from_slice(&ext);
            at_limit.extend_from_slice(b"\r\nx\r\n");
        }
        at_limit.extend_from_slice(b"0\r\n\r\n");
        check(&at_limit, Ok(b"xx"));
        let over = [at_limit.get(..at_limit.len() - 5).unwrap(), b"0;\r\n\r\n"].concat();
        check(&over, Err(BodyError::ExtensionsTooLong));
    }

    #[test]
    fn trailers_over_the_limit() {
        // "0\r\n" then "X:" + value + "\r\n" + "\r\n" must total MAX_TRAILER_BYTES.
        let value = vec![b'v'; MAX_TRAILER_BYTES - 6];
        let at_limit = [b"0\r\nX:".as_slice(), &value, b"\r\n\r\n"].concat();
        check(&at_limit, Ok(b""));
        let over = [b"0\r\nX:".as_slice(), &value, b"v\r\n\r\n"].concat();
        check(&over, Err(BodyError::TrailersTooLarge));
        let many = b"0\r\n"
            .iter()
            .chain(b"A:b\r\n".repeat(MAX_TRAILER_BYTES / 5 + 1).iter())
            .copied()
            .collect::<Vec<u8>>();
        check(&many, Err(BodyError::TrailersTooLarge));
    }

    #[test]
    fn incomplete_bodies() {
        check_pending(b"", b"");
        check_pending(b"5", b"");
        check_pending(b"5\r\nhel", b"hel");
        check_pending(b"5\r\nhello\r", b"hello");
        check_pending(b"5\r\nhello\r\n0\r\n", b"hello");
        check_pending(b"5\r\nhello\r\n0\r\nA: b\r\n", b"hello");
        check_pending(b"5\r\nhello\r\n0\r\nA: b", b"hello");
        check_pending(b"5\r\nhello\r\n0\r\nA: b\r", b"hello");
        check_pending(b"5\r\nhello\r\n0\r\n\r", b"hello");
    }

    #[test]
    fn pipelined_bytes_after_chunked_body() {
        let mut decoder = chunked();
        let mut out = Vec::new();
        let input = b"3\r\nabc\r\n0\r\n\r\nPOST / HTTP/1.1\r\n";
        let progress = decoder.decode(input, &mut out);
        assert_eq!(
            progress,
            Ok(Progress {
                consumed: 13,
                done: true
            })
        );
        assert_eq!(out, b"abc");
        assert_eq!(input.get(13..), Some(b"POST / HTTP/1.1\r\n".as_slice()));
        assert!(decoder.is_done());
        assert_eq!(decoder.remaining_hint(), None);
    }

    #[test]
    fn pipelined_bytes_after_length_body() {
        let mut decoder = BodyDecoder::length(5, BodyLimits::default()).unwrap();
        assert_eq!(decoder.remaining_hint(), Some(5));
        let mut out = Vec::new();
        assert_eq!(
            decoder.decode(b"he", &mut out),
            Ok(Progress {
                consumed: 2,
                done: false
            })
        );
        assert_eq!(decoder.remaining_hint(), Some(3));
        assert!(!decoder.is_done());
        assert_eq!(
            decoder.decode(b"lloGET", &mut out),
            Ok(Progress {
                consumed: 3,
                done: true
            })
        );
        assert_eq!(out, b"hello");
        assert_eq!(decoder.remaining_hint(), Some(0));
        assert!(decoder.is_done());
        check_with(
            &|| BodyDecoder::length(5, BodyLimits::default()).unwrap(),
            b"hello",
            Ok(b"hello"),
        );
    }

    #[test]
    fn empty_length_body_is_done_at_once() {
        let mut decoder = BodyDecoder::length(0, BodyLimits::default()).unwrap();
        assert!(decoder.is_done());
        let mut out = Vec::new();
        assert_eq!(
            decoder.decode(b"", &mut out),
            Ok(Progress {
                consumed: 0,
                done: true
            })
        );
        assert_eq!(
            decoder.decode(b"GET", &mut out),
            Ok(Progress {
                consumed: 0,
                done: true
            })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn empty_input_makes_no_progress() {
        let mut out = Vec::new();
        assert_eq!(
            chunked().decode(b"", &mut out),
            Ok(Progress {
                consumed: 0,
                done: false
            })
        );
        let mut length = BodyDecoder::length(3, BodyLimits::default()).unwrap();
        assert_eq!(
            length.decode(b"", &mut out),
            Ok(Progress {
                consumed: 0,
                done: false
            })
        );
    }

    #[test]
    fn errors_are_sticky() {
        let mut decoder = chunked();
        let mut out = Vec::new();
        assert_eq!(
            decoder.decode(b"5\nhello", &mut out),
            Err(BodyError::BareLf)
        );
        assert_eq!(
            decoder.decode(b"\r\n0\r\n\r\n", &mut out),
            Err(BodyError::BareLf)
        );
        assert_eq!(decoder.decode(b"", &mut out), Err(BodyError::BareLf));
        assert!(!decoder.is_done());
    }

    #[test]
    fn errors_say_why() {
        assert_eq!(
            too_large(10).to_string(),
            "request body is larger than the limit of 10 bytes"
        );
        assert_eq!(
            BodyError::ChunkSizeTooLong.to_string(),
            "chunk size has more than 16 hex digits"
        );
        assert!(!BodyError::BareCr.is_too_large());
        assert!(!BodyError::InvalidChunkSize.to_string().is_empty());
    }

    /// Every input of up to four bytes from a small alphabet, fed whole and a byte at a time,
    /// must give the same result and never panic.
    #[test]
    fn exhaustive_short_inputs() {
        const ALPHABET: &[u8] = b"0a;=\r\n x";
        let makers: [&dyn Fn() -> BodyDecoder; 3] =
            [&chunked, &|| BodyDecoder::chunked(limits(5)), &|| {
                BodyDecoder::length(3, BodyLimits::default()).unwrap()
            }];
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        let mut all = inputs.clone();
        for _ in 0..4 {
            inputs = inputs
                .iter()
                .flat_map(|prefix| {
                    ALPHABET
                        .iter()
                        .map(move |&b| [prefix.as_slice(), &[b]].concat())
                })
                .collect();
            all.extend(inputs.iter().cloned());
        }
        assert_eq!(all.len(), 1 + 8 + 64 + 512 + 4096);
        for make in makers {
            for input in &all {
                let whole = feed(make(), &[input]);
                let bytes: Vec<&[u8]> = input.chunks(1).collect();
                assert_eq!(feed(make(), &bytes), whole, "{input:?}");
            }
        }
    }
}
