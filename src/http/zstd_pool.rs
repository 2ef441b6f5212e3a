//! zstd contexts kept from one request to the next. A fresh decoder for
//! every request body and a fresh compressor for every reply cost each
//! normal sync about 130 page faults and several mmap/munmap pairs (each
//! munmap makes the other cores flush their TLBs), measured with
//! `bench/run-profile --tool perf`. A body or reply borrows a context and
//! gives it back; the pool is emptied once the server has been idle, so a
//! quiet server's memory is what it was without the pool.

use std::io::{self, BufRead, Read};
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

/// Contexts kept per kind: the requests a small server has in progress at
/// once. Beyond that, a request makes its own and drops it.
const KEEP: usize = 4;

/// A context whose memory in use grew past this is dropped after use
/// rather than kept, so the pool holds only what small requests need: a
/// compressor's tables for a reply of up to some 200 KB, and a decoder that
/// wrote at most this much of its window buffer. (A decoder allocates the
/// frame's whole window, 2 MiB for the 26.9.3 client, but only what it
/// writes of it takes memory.)
const KEEP_UP_TO: usize = 512 * 1024;

struct Pool<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    free: Vec<T>,
    last_used: Option<Instant>,
}

impl<T> Pool<T> {
    const fn new() -> Self {
        Pool {
            state: Mutex::new(State {
                free: Vec::new(),
                last_used: None,
            }),
        }
    }

    fn take(&'static self, make: impl FnOnce() -> io::Result<T>) -> io::Result<Pooled<T>> {
        let kept = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.last_used = Some(Instant::now());
            state.free.pop()
        };
        let item = match kept {
            Some(item) => item,
            None => make()?,
        };
        Ok(Pooled {
            item: Some(item),
            pool: self,
            keep: true,
        })
    }

    fn give_back(&self, item: T) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.free.len() < KEEP {
            state.free.push(item);
        }
    }

    /// Drops the kept contexts if none was taken for `idle`.
    fn release_if_idle(&self, idle: Duration) -> usize {
        let dropped = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.last_used.is_some_and(|t| t.elapsed() < idle) {
                return 0;
            }
            std::mem::take(&mut state.free)
        };
        dropped.len()
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.state.lock().unwrap().free.len()
    }
}

/// A context on loan from a pool; given back when dropped, unless it grew
/// too large to keep.
struct Pooled<T: 'static> {
    item: Option<T>,
    pool: &'static Pool<T>,
    keep: bool,
}

impl<T> Deref for Pooled<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.item.as_ref().expect("present until dropped")
    }
}

impl<T> DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item.as_mut().expect("present until dropped")
    }
}

impl<T> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take().filter(|_| self.keep) {
            self.pool.give_back(item);
        }
    }
}

static DECODERS: Pool<DCtx<'static>> = Pool::new();
static COMPRESSORS: Pool<CCtx<'static>> = Pool::new();

/// Empties the pools if no request used them for `idle`; how many contexts
/// were dropped.
pub fn release_if_idle(idle: Duration) -> usize {
    DECODERS.release_if_idle(idle) + COMPRESSORS.release_if_idle(idle)
}

/// Compresses `payload` in one call at `level` with a kept context.
pub fn compress(payload: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut context = COMPRESSORS.take(|| Ok(CCtx::create()))?;
    // (compress2 starts a new frame whatever the context did before.)
    context
        .set_parameter(CParameter::CompressionLevel(level))
        .map_err(zstd_error)?;
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(payload.len()));
    context.compress2(&mut frame, payload).map_err(zstd_error)?;
    context.keep = context.sizeof() <= KEEP_UP_TO;
    Ok(frame)
}

/// Decodes the first zstd frame of `source` as it is read, with a kept
/// context, refusing frames whose window is over `2^window_log_max`.
/// Reading stops at the end of the frame; a source that ends before it is
/// an `UnexpectedEof` error.
pub fn decoder<R: BufRead>(source: R, window_log_max: u32) -> io::Result<FrameDecoder<R>> {
    let mut context = DECODERS.take(|| Ok(DCtx::create()))?;
    // Whatever a previous body left unfinished (an error mid-frame) is
    // dropped; the window limit is set again, as it is part of this call.
    context
        .reset(ResetDirective::SessionOnly)
        .map_err(zstd_error)?;
    context
        .set_parameter(DParameter::WindowLogMax(window_log_max))
        .map_err(zstd_error)?;
    Ok(FrameDecoder {
        source,
        context,
        decoded: 0,
        done: false,
    })
}

/// One zstd frame decoded as it is read; see [`decoder`].
pub struct FrameDecoder<R> {
    source: R,
    context: Pooled<DCtx<'static>>,
    decoded: usize,
    done: bool,
}

impl<R: BufRead> Read for FrameDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.done {
            let input = self.source.fill_buf()?;
            let at_end = input.is_empty();
            let mut input = InBuffer::around(input);
            let mut output = OutBuffer::around(&mut *buf);
            let hint = self
                .context
                .decompress_stream(&mut output, &mut input)
                .map_err(zstd_error)?;
            let (consumed, written) = (input.pos(), output.pos());
            self.source.consume(consumed);
            // 0: the frame is decoded and all of it handed out.
            self.done = hint == 0;
            if written > 0 {
                self.decoded = self.decoded.saturating_add(written);
                if self.decoded > KEEP_UP_TO {
                    self.context.keep = false;
                }
                return Ok(written);
            }
            if at_end && consumed == 0 && !self.done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "incomplete zstd frame",
                ));
            }
        }
        Ok(0)
    }
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd::zstd_safe::get_error_name(code))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn decode(frame: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(frame, 22)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_with_contexts_used_before() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for _ in 0..3 {
            let frame = compress(&text, 1).unwrap();
            assert!(frame.len() < text.len() / 4);
            assert_eq!(decode(&frame).unwrap(), text);
        }
    }

    #[test]
    fn a_truncated_frame_is_an_error_and_spoils_nothing() {
        let text = vec![7u8; 50_000];
        let frame = compress(&text, 1).unwrap();
        for cut in [1, frame.len() / 2, frame.len() - 1] {
            let err = decode(&frame[..cut]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
        // A context given back mid-frame decodes the next body from its start.
        assert_eq!(decode(&frame).unwrap(), text);
    }

    #[test]
    fn stops_at_the_end_of_the_first_frame() {
        let first = compress(b"first", 1).unwrap();
        let mut two = first.clone();
        two.extend(compress(b"second", 1).unwrap());
        assert_eq!(decode(&two).unwrap(), b"first");
    }

    #[test]
    fn a_window_over_the_limit_is_refused() {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        encoder
            .set_parameter(zstd::zstd_safe::CParameter::WindowLog(24))
            .unwrap();
        encoder.write_all(&vec![1u8; 1 << 20]).unwrap();
        let frame = encoder.finish().unwrap();
        let mut out = Vec::new();
        let err = decoder(&frame[..], 22)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(
            err.to_string().contains("Frame requires too much memory"),
            "{err}"
        );
    }

    #[test]
    fn contexts_that_grew_large_are_not_kept() {
        // Decoders: kept after a small body, not after a large one.
        let small = zstd::encode_all(&b"small"[..], 1).unwrap();
        let large = zstd::encode_all(&vec![3u8; KEEP_UP_TO + 1][..], 1).unwrap();
        for (frame, kept) in [(&small, true), (&large, false)] {
            let mut decoder = decoder(&frame[..], 22).unwrap();
            io::copy(&mut decoder, &mut io::sink()).unwrap();
            assert_eq!(decoder.context.keep, kept);
        }
        // Compressors: kept after a small reply, not after a large one.
        let text = |n: usize| -> Vec<u8> { (0..n as u32).flat_map(|i| i.to_le_bytes()).collect() };
        for (n, kept) in [(10_000, true), (1_000_000, false)] {
            let mut context = COMPRESSORS.take(|| Ok(CCtx::create())).unwrap();
            let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(n * 4));
            context.compress2(&mut frame, &text(n)).unwrap();
            assert_eq!(context.sizeof() <= KEEP_UP_TO, kept, "{}", context.sizeof());
        }
    }

    #[test]
    fn contexts_are_dropped_only_after_the_idle_time() {
        let pool: &'static Pool<Vec<u8>> = Box::leak(Box::new(Pool::new()));
        drop(pool.take(|| Ok(vec![1])).unwrap());
        assert_eq!(pool.kept(), 1);
        assert_eq!(pool.release_if_idle(Duration::from_secs(60)), 0);
        assert_eq!(pool.kept(), 1);
        assert_eq!(pool.release_if_idle(Duration::ZERO), 1);
        assert_eq!(pool.kept(), 0);
    }
}
