//! Server-sent events, read as they arrive: the framing of the WHATWG HTML
//! standard's event-stream format (§9.2.6, "Interpreting an event stream")
//! and, on top of it, the state of an Anthropic Messages API stream.
//!
//! Used by every reader of a stream in the project: the gateway (passing a
//! provider's stream on), the chat turn (streaming an answer to the web
//! app) and the web app (reading the chat turn's stream), so the three
//! split events the same way.

use crate::usage::StreamUsage;
use crate::FieldError;
use serde_json::Value;

/// One dispatched event: its `event` field (`"message"` when the stream
/// gave none, as the standard says) and its `data` lines joined by LF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl SseEvent {
    /// An event as [`SseReader`] gave it, written back as event-stream text
    /// that reads as the same event: an `event` line unless it is `message`
    /// (the standard's default), one `data` line per line of `data` (a
    /// `data` holding LF is several lines on the wire, as it arrived), then
    /// the blank line that dispatches it. An `event` holding LF, or any CR,
    /// cannot come from the reader and is not written faithfully.
    pub fn to_frame(&self) -> String {
        let mut out = String::with_capacity(self.data.len() + 16);
        if self.event != "message" {
            out.push_str("event: ");
            out.push_str(&self.event);
            out.push('\n');
        }
        for line in self.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out
    }
}

/// Most bytes one event may take; the rest of a longer event is dropped (a
/// stream past it is not an event stream we read).
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// Splits a byte stream into events: lines end in LF, CRLF or CR (also
/// across chunk boundaries), a blank line dispatches the event, lines
/// starting with `:` are comments, `data` lines are joined with LF, an
/// event without data is not dispatched. Fields other than `event` and
/// `data` (`id`, `retry`) are ignored.
#[derive(Debug, Default)]
pub struct SseReader {
    line: Vec<u8>,
    /// The last chunk ended in CR (an LF starting the next belongs to it).
    carriage_return: bool,
    event: Option<String>,
    data: Option<String>,
    size: usize,
}

impl SseReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a chunk; returns the events it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut done = Vec::new();
        for &b in chunk {
            match b {
                b'\r' => {
                    self.carriage_return = true;
                    self.line_end(&mut done);
                }
                b'\n' if self.carriage_return => self.carriage_return = false,
                b'\n' => self.line_end(&mut done),
                _ => {
                    self.carriage_return = false;
                    if self.size < MAX_EVENT_BYTES {
                        self.line.push(b);
                        self.size += 1;
                    }
                }
            }
        }
        done
    }

    /// The stream ended: an event whose blank line never came is
    /// dispatched too (the gateway bills what a cut stream reported).
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.line.is_empty() {
            self.field();
        }
        self.dispatch()
    }

    fn line_end(&mut self, done: &mut Vec<SseEvent>) {
        if self.line.is_empty() {
            done.extend(self.dispatch());
        } else {
            self.field();
        }
    }

    fn field(&mut self) {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if line.starts_with(':') {
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match name {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        self.size = 0;
        let event = self.event.take();
        let data = self.data.take()?;
        Some(SseEvent {
            event: event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".into()),
            data,
        })
    }
}

/// An Anthropic Messages API stream as it passes: each event's `data`
/// parsed, usage folded by [`StreamUsage`] (`message_start` sets it, each
/// `message_delta` replaces the fields it carries), the text of the
/// `text_delta`s, and whether the stream started, stopped or failed.
#[derive(Debug, Default)]
pub struct MessageStream {
    reader: SseReader,
    pub usage: StreamUsage,
    /// `message_start.message.id`.
    pub message_id: Option<String>,
    /// `message_delta.delta.stop_reason`, the last one seen.
    pub stop_reason: Option<String>,
    /// The answer's text so far (every `text_delta`, in order).
    pub text: String,
    /// `message_start` came: the provider accepted the request and charges for it.
    pub started: bool,
    /// `message_stop` came.
    pub stopped: bool,
    /// The `error` object of an `error` event, if one came.
    pub error: Option<Value>,
    /// The first usage that did not read (the stream goes on; the caller
    /// decides whether a stream with an unreadable usage can be billed).
    pub usage_error: Option<FieldError>,
}

impl MessageStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a chunk; returns the `data` of each event it completed
    /// (events whose data is not JSON are skipped).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Value> {
        let events = self.reader.feed(chunk);
        events.into_iter().filter_map(|e| self.event(&e)).collect()
    }

    /// The stream ended: an event left without its blank line counts.
    pub fn finish(&mut self) -> Vec<Value> {
        let last = self.reader.finish();
        last.and_then(|e| self.event(&e)).into_iter().collect()
    }

    fn event(&mut self, e: &SseEvent) -> Option<Value> {
        let v = serde_json::from_str::<Value>(&e.data).ok()?;
        match v["type"].as_str() {
            Some("message_start") => {
                self.started = true;
                self.message_id = v["message"]["id"].as_str().map(str::to_owned);
            }
            Some("content_block_delta") if v["delta"]["type"] == "text_delta" => {
                self.text
                    .push_str(v["delta"]["text"].as_str().unwrap_or(""));
            }
            Some("message_delta") => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(r.to_owned());
                }
            }
            Some("message_stop") => self.stopped = true,
            Some("error") => self.error = Some(v["error"].clone()),
            _ => {}
        }
        if let Err(err) = self.usage.feed(&v) {
            self.usage_error.get_or_insert(err);
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut r = SseReader::new();
        let mut out: Vec<SseEvent> = chunks.iter().flat_map(|c| r.feed(c)).collect();
        out.extend(r.finish());
        out
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn line_ends_and_chunk_boundaries() {
        let want = vec![ev("a", "1"), ev("message", "2\n3")];
        for text in [
            "event: a\ndata: 1\n\ndata: 2\ndata:3\n\n",
            "event: a\r\ndata: 1\r\n\r\ndata: 2\r\ndata:3\r\n\r\n",
            "event: a\rdata: 1\r\rdata: 2\rdata:3\r\r",
        ] {
            assert_eq!(all(&[text.as_bytes()]), want, "{text:?} whole");
            // Every split point, CR and LF of one CRLF in different chunks included.
            for at in 0..text.len() {
                let (a, b) = text.as_bytes().split_at(at);
                assert_eq!(all(&[a, b]), want, "{text:?} split at {at}");
            }
        }
    }

    #[test]
    fn a_frame_reads_back_as_its_event() {
        for e in [
            ev("message", "{}"),
            ev("message", "line 1\nline 2\n\nline 4"),
            ev("message", ""),
            ev("message", "\n"),
            ev("ping", "data: inside"),
            ev("content_block_delta", " leading space\n:not a comment"),
        ] {
            let frame = e.to_frame();
            assert_eq!(all(&[frame.as_bytes()]), vec![e.clone()], "{frame:?}");
        }
        assert_eq!(ev("message", "a\nb").to_frame(), "data: a\ndata: b\n\n");
    }

    #[test]
    fn comments_blank_events_and_a_last_event_without_its_blank_line() {
        let got = all(&[
            b": x-billing-cost-nanos=5\n\nevent: ping\n\nid: 7\nretry: 10\ndata: {}\n\ndata: last",
        ]);
        assert_eq!(got, vec![ev("message", "{}"), ev("message", "last")]);
        // `data` without a colon is an empty data line.
        assert_eq!(all(&[b"data\n\n"]), vec![ev("message", "")]);
    }

    #[test]
    fn message_stream_text_usage_and_state() {
        let mut s = MessageStream::new();
        let body = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7,\"input_tokens\":12}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let n: usize = body.as_bytes().chunks(9).map(|c| s.feed(c).len()).sum();
        assert_eq!(n + s.finish().len(), 5);
        assert!(s.started && s.stopped && s.error.is_none() && s.usage_error.is_none());
        assert_eq!(s.text, "Hello");
        assert_eq!(s.message_id.as_deref(), Some("msg_1"));
        assert_eq!(s.stop_reason.as_deref(), Some("end_turn"));
        let u = s.usage.clone().finish().unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (12, 7));
    }

    #[test]
    fn message_stream_error_event() {
        let mut s = MessageStream::new();
        s.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n");
        assert!(!s.started);
        assert_eq!(s.error.as_ref().unwrap()["type"], "overloaded_error");
    }

    // Usage arrives in pieces across events and chunk boundaries; the last value of each field wins.
    #[test]
    fn stream_usage_is_cumulative() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1,\"cache_read_input_tokens\":null}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15,\"input_tokens\":30,\"server_tool_use\":{\"web_search_requests\":2}}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        // LF, CRLF and CR line ends, split anywhere across chunks, read alike.
        for (ends, size) in [("\n", 7), ("\r\n", 1), ("\r", 5)] {
            let text = stream.replace('\n', ends);
            let mut r = MessageStream::new();
            let mut events = 0;
            for piece in text.as_bytes().chunks(size) {
                events += r.feed(piece).len();
            }
            assert_eq!((events, r.started, r.stopped), (4, true, true), "{ends:?}");
            assert_eq!(r.message_id.as_deref(), Some("msg_1"));
            let u = r.usage.finish().unwrap();
            assert_eq!(
                (
                    u.input_tokens,
                    u.output_tokens,
                    u.server_tool_use.web_search_requests
                ),
                (30, 15, 2)
            );
        }
    }

    // An error event is kept; an event cut off without its blank line still counts at the end of the stream.
    #[test]
    fn stream_error_and_last_event() {
        let mut r = MessageStream::new();
        r.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n");
        r.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}");
        assert!(r.error.is_none(), "not complete yet");
        assert_eq!(r.finish().len(), 1);
        assert_eq!(r.error.as_ref().unwrap()["type"], "overloaded_error");
        assert!(r.started && !r.stopped);
    }
}
