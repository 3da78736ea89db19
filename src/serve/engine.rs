//! Generation for the server: a fair queue in front of a fixed number of slots, and the
//! blocking loop that turns tokens into text events.
//!
//! A request takes a slot at once if one is free, else waits in a FIFO queue of bounded
//! length (tokio's semaphore is fair), else is refused (503). A slot runs one request's
//! generations, one after another, on a blocking thread: the forward is CPU work and
//! must not stall the async executor. Text goes back through a bounded channel; when the
//! client goes away the receiver is dropped, and the next token's check ends the
//! generation.

use super::metrics::Metrics;
use crate::model::Gpt;
use crate::sample::{generate_until, SamplingOptions};
use crate::tokenizer::{utf8::StreamDecoder, Tokenizer};
use candle_core::Device;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Why a choice ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop sequence (or, for chat, the end of the poem).
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What a generation sends back, in order: for each choice, its text pieces, then its
/// `Done`. An `Error` ends the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text {
        index: usize,
        text: String,
    },
    Done {
        index: usize,
        finish: Finish,
        tokens: usize,
    },
    Error(String),
}

/// One request's work, checked: `prompt` is non-empty and `prompt.len() + max_new`
/// fits in the context.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_new: usize,
    /// Choice i is drawn with seed `sampling.seed + i`.
    pub sampling: SamplingOptions,
    pub n: usize,
    pub stops: Vec<String>,
}

/// The model, loaded once and shared by every slot.
pub struct Engine {
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    pub device: Device,
    pub metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    max_concurrency: usize,
    waiting: AtomicUsize,
    max_queue: usize,
}

/// A request's place: a slot, or a place in the queue (which leaves the queue count
/// when it gets its slot or is dropped, e.g. because its client went away).
pub struct Place {
    engine: Arc<Engine>,
    permit: Option<OwnedSemaphorePermit>,
    queued: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.queued {
            self.engine.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Place {
    /// Waits (FIFO) for a slot.
    pub async fn slot(mut self) -> OwnedSemaphorePermit {
        if let Some(p) = self.permit.take() {
            return p;
        }
        self.engine
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed")
        // `self` drops here and leaves the queue.
    }
}

impl Engine {
    pub fn new(
        model: Gpt,
        tokenizer: Tokenizer,
        device: Device,
        metrics: Arc<Metrics>,
        max_concurrency: usize,
        max_queue: usize,
    ) -> Self {
        Self {
            // No graph: generation never needs gradients.
            model: model.frozen(),
            tokenizer,
            device,
            metrics,
            slots: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            waiting: AtomicUsize::new(0),
            max_queue,
        }
    }

    /// Requests waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Slots running a generation.
    pub fn active(&self) -> usize {
        self.max_concurrency - self.slots.available_permits()
    }

    /// A slot now, else a place in the queue, else None (the queue is full).
    pub fn enqueue(self: &Arc<Self>) -> Option<Place> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(Place {
                engine: self.clone(),
                permit: Some(p),
                queued: false,
            });
        }
        let admitted = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.max_queue).then_some(w + 1)
            })
            .is_ok();
        admitted.then(|| Place {
            engine: self.clone(),
            permit: None,
            queued: true,
        })
    }

    /// Starts `job` once `place` gets a slot; returns the receiving end of its events.
    /// Dropping the receiver (a client gone) ends the generation at its next token, or
    /// takes the job out of the queue if it has not started.
    pub fn start(self: &Arc<Self>, place: Place, job: Job) -> mpsc::Receiver<Event> {
        // Small: a client that reads slowly holds the generation back rather than
        // letting text pile up in memory.
        let (tx, rx) = mpsc::channel(16);
        let engine = self.clone();
        tokio::spawn(async move {
            let permit = tokio::select! {
                p = place.slot() => p,
                _ = tx.closed() => return,
            };
            let tx2 = tx.clone();
            let worker = engine.clone();
            let run = tokio::task::spawn_blocking(move || {
                let r = worker.run(&job, &tx);
                drop(permit);
                r
            });
            let failure = match run.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("generation failed: {e:#}")),
                Err(_) => Some("generation failed: the worker panicked".to_string()),
            };
            if let Some(msg) = failure {
                let msg = msg.lines().next().unwrap_or("").to_string();
                eprintln!("error: {msg}");
                let _ = tx2.send(Event::Error(msg)).await;
            }
        });
        rx
    }

    /// Generates every choice of `job`, sending text as it becomes final.
    fn run(&self, job: &Job, tx: &mpsc::Sender<Event>) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut first = true;
        let _active = self.metrics.generation_started();
        for index in 0..job.n {
            let o = SamplingOptions {
                seed: job.sampling.seed.wrapping_add(index as u64),
                ..job.sampling.clone()
            };
            let mut dec = StreamDecoder::new();
            let mut stops = StopScanner::new(&job.stops);
            let mut tokens = 0;
            let mut finish = Finish::Length;
            let mut gone = false;
            generate_until(
                &self.model,
                &job.prompt,
                job.max_new,
                &o,
                true,
                &self.device,
                |id| {
                    crate::train::faults::token_pause();
                    tokens += 1;
                    self.metrics.token();
                    if first {
                        first = false;
                        self.metrics.first_token(t0.elapsed().as_secs_f64());
                    }
                    let piece = dec.push(&self.tokenizer.token_bytes(id));
                    let (text, stopped) = stops.push(&piece);
                    if !text.is_empty() && tx.blocking_send(Event::Text { index, text }).is_err() {
                        gone = true;
                    }
                    if stopped {
                        finish = Finish::Stop;
                    }
                    if gone || tx.is_closed() {
                        gone = true;
                        return ControlFlow::Break(());
                    }
                    if stopped {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )?;
            if gone {
                self.metrics.cancelled();
                return Ok(());
            }
            if finish == Finish::Length {
                // The held-back bytes of an unfinished character, then any text held
                // back as a possible start of a stop sequence.
                let (mut text, stopped) = stops.push(&dec.finish());
                if stopped {
                    finish = Finish::Stop;
                } else {
                    text.push_str(&stops.finish());
                }
                if !text.is_empty() && tx.blocking_send(Event::Text { index, text }).is_err() {
                    self.metrics.cancelled();
                    return Ok(());
                }
            }
            if tx
                .blocking_send(Event::Done {
                    index,
                    finish,
                    tokens,
                })
                .is_err()
            {
                self.metrics.cancelled();
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Finds stop sequences in streamed text. Text that could still be the start of a stop
/// sequence is held back until it is known not to be, so no stop sequence (or part of
/// one) is ever sent.
#[derive(Debug)]
pub struct StopScanner {
    stops: Vec<String>,
    text: String,
    sent: usize,
}

impl StopScanner {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.to_vec(),
            text: String::new(),
            sent: 0,
        }
    }

    /// Adds a piece of text; returns the text now safe to send and whether a stop
    /// sequence was reached (the text before it is then all sent, the stop itself not).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        // A stop begins at or after `sent`: text before it was sent only once no stop
        // could start there.
        let unsent = &self.text[self.sent..];
        let hit = self
            .stops
            .iter()
            .filter_map(|s| unsent.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let out = unsent[..at].to_string();
            self.sent += at;
            self.text.truncate(self.sent);
            return (out, true);
        }
        // Hold back the longest tail that is a proper prefix of some stop. A match
        // starts on a character boundary, since both sides are valid UTF-8.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&k| s.is_char_boundary(k) && unsent.ends_with(&s[..k]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        (out, false)
    }

    /// The stream ended without a stop: whatever was held back.
    pub fn finish(&mut self) -> String {
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `pieces` through a scanner; returns what was sent and whether it stopped.
    fn scan(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = StopScanner::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let (t, stopped) = s.push(p);
            out.push(t);
            if stopped {
                return (out, true);
            }
        }
        out.push(s.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_never_sent() {
        let (out, stopped) = scan(&["\n\n"], &["春眠", "\n", "\n", "处处"]);
        assert!(stopped);
        assert_eq!(out, vec!["春眠", "", ""]);
    }

    #[test]
    fn a_false_start_is_released() {
        let (out, stopped) = scan(&["。\n\n"], &["春眠。", "\n", "不觉晓"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "春眠。\n不觉晓");
        assert_eq!(out[0], "春眠"); // "。" held: it might begin the stop
    }

    #[test]
    fn earliest_of_several_stops_wins_and_held_text_flushes_at_the_end() {
        let (out, stopped) = scan(&["晓", "眠不"], &["春眠不觉晓"]);
        assert!(stopped);
        assert_eq!(out.concat(), "春");
        let (out, stopped) = scan(&["ab"], &["xa"]);
        assert!(!stopped);
        assert_eq!(out, vec!["x", "a"]);
        let (out, _) = scan(&[], &["abc", "d"]);
        assert_eq!(out.concat(), "abcd");
    }

    proptest::proptest! {
        /// Whatever the cuts, the text sent is the text up to the first stop.
        #[test]
        fn sent_text_is_the_prefix_before_the_first_stop(
            s in "[ab\n]{0,30}", cuts in proptest::collection::vec(0usize..4, 0..12)
        ) {
            let stops = ["\n\n", "ba"];
            let mut pieces = Vec::new();
            let mut start = 0;
            for c in cuts {
                let end = (start + c).min(s.len());
                pieces.push(&s[start..end]);
                start = end;
            }
            pieces.push(&s[start..]);
            let (out, stopped) = scan(&stops, &pieces);
            let first = stops.iter().filter_map(|t| s.find(t)).min();
            proptest::prop_assert_eq!(stopped, first.is_some());
            proptest::prop_assert_eq!(out.concat(), &s[..first.unwrap_or(s.len())]);
        }
    }
}
