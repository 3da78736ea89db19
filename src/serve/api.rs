//! The OpenAI wire format: request bodies, their checks, and the error object.
//!
//! Every check happens here, before a request is queued, so that bad input costs no
//! model time and gets the error OpenAI's API would give: a JSON object
//! `{"error": {"message", "type", "param", "code"}}` with a 4xx status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

/// Most completions one request may ask for (`n`).
pub const MAX_N: u64 = 8;
/// Most stop sequences (as OpenAI), and the longest one in bytes.
pub const MAX_STOPS: usize = 4;
pub const MAX_STOP_BYTES: usize = 64;
/// Longest prompt (or rendered chat) in bytes, checked before tokenizing: far beyond
/// any context this crate trains, so it only refuses input no model here could read.
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;
/// Most chat messages in one request.
pub const MAX_MESSAGES: usize = 256;
/// Largest request body; larger ones get 413 unread.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Highest temperature accepted (OpenAI's range is [0, 2]).
pub const MAX_TEMPERATURE: f64 = 2.0;

/// An error in OpenAI's shape, with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error`, naming the parameter at fault.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// 401: a missing or wrong `Authorization: Bearer` key.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or incorrect API key: send `Authorization: Bearer <key>` with \
                      the key given to `tinylm serve --api-key`"
                .to_string(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 503: every generation slot busy and the queue full.
    pub fn overloaded() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the server is busy (every generation slot is taken and the queue is \
                      full); retry shortly"
                .to_string(),
            kind: "server_error",
            param: None,
            code: Some("server_overloaded"),
        }
    }

    /// 500: generation failed inside the model.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
    }

    /// The JSON body: `{"error": {...}}`.
    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        r
    }
}

/// `stream_options` of a streaming request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with `choices: []` and the request's `usage` (OpenAI's rule).
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The sampling fields common to both endpoints. Unknown fields are refused, as
/// OpenAI does ("Unrecognized request argument"), so that a typo is not ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// A string, or an array of exactly one string.
    #[serde(default)]
    pub prompt: Option<Value>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Extension (llama.cpp, vLLM spell it the same): keep the k most likely tokens.
    #[serde(default)]
    pub top_k: Option<u64>,
    /// Extension (llama.cpp, vLLM): keep tokens at least this fraction as likely as the
    /// most likely one.
    #[serde(default)]
    pub min_p: Option<f64>,
    /// Extension (llama.cpp, vLLM): CTRL's penalty on tokens among the last 64.
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// A string or an array of up to 4 strings.
    #[serde(default)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// An end-user id (logged nowhere; accepted because clients send it).
    #[serde(default)]
    pub user: Option<String>,
    /// Accepted only at their neutral value 0: there are no penalties here.
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
}

/// One chat message. Extra fields (`name`, `tool_calls: null`, ...) that clients echo
/// back with an assistant message are ignored.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Value,
}

/// The sampling fields repeat those of [`CompletionRequest`] rather than sharing a
/// flattened struct: serde's `flatten` does not work with `deny_unknown_fields`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The newer name of `max_tokens` in OpenAI's chat API.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u64>,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
}

/// Parses a request body: UTF-8, then JSON, then the fields (a wrong type names the
/// field, e.g. `max_tokens: invalid type: string "ten", expected u64`).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::invalid(
            None,
            format!(
                "the request body is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde reports an unknown field at the top level as "." plus its own text.
        if let Some(name) = inner
            .strip_prefix("unknown field `")
            .and_then(|s| s.split('`').next())
        {
            return ApiError::invalid(
                Some(name),
                format!("unrecognized request argument supplied: {name}"),
            );
        }
        let param = (path != ".").then_some(path.as_str());
        let message = match param {
            Some(p) => format!("{p}: {inner}"),
            None => inner.clone(),
        };
        ApiError::invalid(param, message)
    })
}

/// The sampling settings of a request, checked; `max_tokens` is checked later against
/// the prompt's length.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub n: usize,
    pub seed: Option<u64>,
    pub stops: Vec<String>,
    pub max_tokens: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
}

/// The fields both endpoints share, borrowed from either request type.
pub struct CommonFields<'a> {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub n: Option<u64>,
    pub seed: Option<u64>,
    pub stop: Option<&'a Value>,
    pub stream: Option<bool>,
    pub stream_options: Option<&'a StreamOptions>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

impl CompletionRequest {
    pub fn common(&self) -> CommonFields<'_> {
        CommonFields {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            n: self.n,
            seed: self.seed,
            stop: self.stop.as_ref(),
            stream: self.stream,
            stream_options: self.stream_options.as_ref(),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
        }
    }

    /// The prompt text: a string, or an array holding one string.
    pub fn prompt_text(&self) -> Result<String, ApiError> {
        let bad = || {
            ApiError::invalid(
                Some("prompt"),
                "prompt must be a string (or an array of one string)",
            )
        };
        let text = match &self.prompt {
            None => return Err(ApiError::invalid(Some("prompt"), "prompt is required")),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
                Value::String(s) => s.clone(),
                _ => return Err(bad()),
            },
            Some(Value::Array(a)) if a.len() > 1 => {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    format!(
                        "prompt holds {} prompts; this server takes one per request",
                        a.len()
                    ),
                ))
            }
            _ => return Err(bad()),
        };
        check_prompt_bytes(&text, "prompt")?;
        Ok(text)
    }
}

impl ChatRequest {
    pub fn common(&self) -> CommonFields<'_> {
        CommonFields {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            n: self.n,
            seed: self.seed,
            stop: self.stop.as_ref(),
            stream: self.stream,
            stream_options: self.stream_options.as_ref(),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
        }
    }
}

fn check_prompt_bytes(text: &str, param: &str) -> Result<(), ApiError> {
    if text.len() > MAX_PROMPT_BYTES {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "{param} is {} bytes, more than the {MAX_PROMPT_BYTES} this server reads",
                text.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

/// Checks the sampling fields against their ranges (`vocab` bounds `top_k`). Omitted
/// fields take tinylm's own defaults (`SamplingOptions::default()`, as `tinylm sample`),
/// chosen for the form of the verse, as llama.cpp's server uses its own.
pub fn check_sampling(c: &CommonFields, vocab: usize) -> Result<Sampling, ApiError> {
    let d = crate::sample::SamplingOptions::default();
    for (name, v, lo, hi, lo_open, hi_open) in [
        ("min_p", c.min_p, 0.0, 1.0, false, true),
        (
            "repetition_penalty",
            c.repetition_penalty,
            1.0,
            10.0,
            false,
            false,
        ),
    ] {
        if let Some(v) = v {
            let ok = (if lo_open { v > lo } else { v >= lo })
                && (if hi_open { v < hi } else { v <= hi });
            if !ok {
                return Err(ApiError::invalid(
                    Some(name),
                    format!(
                        "{name} must be in [{lo}, {hi}{}, got {v}",
                        if hi_open { ")" } else { "]" }
                    ),
                ));
            }
        }
    }
    let min_p = c.min_p.map_or(d.min_p, |v| v as f32);
    let repetition_penalty = c
        .repetition_penalty
        .map_or(d.repetition_penalty, |v| v as f32);
    let temperature = c.temperature.unwrap_or(d.temperature as f64);
    if !(0.0..=MAX_TEMPERATURE).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("temperature must be between 0 and {MAX_TEMPERATURE}, got {temperature}"),
        ));
    }
    let top_p = c.top_p.unwrap_or(d.top_p as f64);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = c.top_k.unwrap_or(d.top_k as u64);
    if top_k > vocab as u64 {
        return Err(ApiError::invalid(
            Some("top_k"),
            format!("top_k must be between 0 (off) and the vocabulary size {vocab}, got {top_k}"),
        ));
    }
    let n = c.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            Some("n"),
            format!("n must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    for (name, v) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if let Some(v) = v {
            if v != 0.0 {
                return Err(ApiError::invalid(
                    Some(name),
                    format!("{name} is not supported by this server (only 0), got {v}"),
                ));
            }
        }
    }
    if c.max_tokens == Some(0) {
        return Err(ApiError::invalid(
            Some("max_tokens"),
            "max_tokens must be at least 1",
        ));
    }
    let stops = parse_stop(c.stop)?;
    let stream = c.stream.unwrap_or(false);
    let include_usage = c
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    if c.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            Some("stream_options"),
            "stream_options is only allowed when stream is true",
        ));
    }
    Ok(Sampling {
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k: top_k as usize,
        min_p,
        repetition_penalty,
        n: n as usize,
        seed: c.seed,
        stops,
        max_tokens: c.max_tokens,
        stream,
        include_usage,
    })
}

/// `stop`: null, a string, or an array of up to 4 non-empty strings.
fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = |m: String| ApiError::invalid(Some("stop"), m);
    let list: Vec<&Value> = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(s @ Value::String(_)) => vec![s],
        Some(Value::Array(a)) => a.iter().collect(),
        Some(_) => {
            return Err(bad(
                "stop must be a string or an array of strings".to_string()
            ))
        }
    };
    if list.len() > MAX_STOPS {
        return Err(bad(format!(
            "at most {MAX_STOPS} stop sequences, got {}",
            list.len()
        )));
    }
    list.into_iter()
        .map(|s| match s {
            Value::String(s) if s.is_empty() => Err(bad("a stop sequence is empty".to_string())),
            Value::String(s) if s.len() > MAX_STOP_BYTES => Err(bad(format!(
                "a stop sequence is {} bytes, more than {MAX_STOP_BYTES}",
                s.len()
            ))),
            Value::String(s) => Ok(s.clone()),
            _ => Err(bad(
                "stop must be a string or an array of strings".to_string()
            )),
        })
        .collect()
}

/// The chat template. The corpus is poems, each a block `title\nauthor\nbody`, blocks
/// separated by a blank line; so a conversation is rendered as consecutive poems:
///
/// ```text
/// \n<user 1>\n<assistant 1>\n\n<user 2>\n<assistant 2>\n\n<user 3>\n
/// ```
///
/// A user message is a poem's title (or its opening line), an assistant message the
/// poem that follows it (author and body), and the reply is the model's continuation
/// after the last user message, up to the blank line that ends a poem (`"\n\n"`, added
/// to the stop sequences). System messages are dropped: the model was never shown
/// instructions. The last message must be the user's.
pub fn render_chat(messages: &[Message]) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "messages must hold at least one message",
        ));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(
            Some("messages"),
            format!("at most {MAX_MESSAGES} messages, got {}", messages.len()),
        ));
    }
    let mut out = String::from("\n");
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let text = message_text(&m.content, &param)?;
        let text = text.trim_matches(|c: char| c == '\n' || c == '\r' || c == ' ');
        match m.role.as_str() {
            "system" | "developer" => {}
            "user" => {
                out.push_str(text);
                out.push('\n');
            }
            "assistant" => {
                out.push_str(text);
                out.push_str("\n\n");
            }
            other => {
                return Err(ApiError::invalid(
                    Some(&format!("{param}.role")),
                    format!("{param}.role must be system, user or assistant, got {other:?}"),
                ))
            }
        }
        check_prompt_bytes(&out, "messages")?;
    }
    let last = messages.last().map(|m| m.role.as_str());
    if last != Some("user") {
        return Err(ApiError::invalid(
            Some("messages"),
            "the last message must be the user's (a poem's title or opening line)",
        ));
    }
    Ok(out)
}

/// A message's text: a string, or an array of `{"type": "text", "text": ...}` parts.
fn message_text(content: &Value, param: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid(
            Some(&format!("{param}.content")),
            format!("{param}.content must be a string or an array of text parts"),
        )
    };
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                match (p.get("type"), p.get("text")) {
                    (Some(Value::String(t)), Some(Value::String(x))) if t == "text" => {
                        s.push_str(x);
                        if s.len() > MAX_PROMPT_BYTES {
                            return Err(bad());
                        }
                    }
                    _ => return Err(bad()),
                }
            }
            Ok(s)
        }
        _ => Err(bad()),
    }
}

/// `max_tokens` against the context: the prompt and the completion must fit in it
/// (generation never slides the window here, so every token sees the whole prompt).
/// None means "as many as fit".
pub fn check_length(
    prompt_tokens: usize,
    max_tokens: Option<u64>,
    context: usize,
    param: &str,
) -> Result<usize, ApiError> {
    if prompt_tokens >= context {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "the prompt is {prompt_tokens} tokens, but the model's context is {context} \
                 tokens and the completion needs at least one"
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = context - prompt_tokens;
    match max_tokens {
        None => Ok(room),
        Some(m) if m <= room as u64 => Ok(m as usize),
        Some(m) => Err(ApiError::invalid(
            Some("max_tokens"),
            format!(
                "the model's context is {context} tokens, but {} were requested \
                 ({prompt_tokens} in the prompt, {m} for the completion): max_tokens \
                 can be at most {room} here",
                prompt_tokens as u128 + m as u128
            ),
        )
        .with_code("context_length_exceeded")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: std::fmt::Debug>(r: Result<T, ApiError>) -> ApiError {
        r.expect_err("should be refused")
    }

    #[test]
    fn body_errors_name_the_problem() {
        let e = err(parse_body::<CompletionRequest>(b"{\"prompt\": \xff}"));
        assert!(e.message.contains("not valid UTF-8"), "{}", e.message);
        let e = err(parse_body::<CompletionRequest>(b"{\"prompt\": "));
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = err(parse_body::<CompletionRequest>(br#"["a"]"#));
        assert!(e.message.contains("JSON object"), "{}", e.message);
        let e = err(parse_body::<CompletionRequest>(br#"{"max_tokens": "ten"}"#));
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(
            e.message.starts_with("max_tokens: invalid type"),
            "{}",
            e.message
        );
        let e = err(parse_body::<CompletionRequest>(br#"{"max_tokens": -3}"#));
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = err(parse_body::<CompletionRequest>(
            br#"{"prompt": "a", "tempreature": 1}"#,
        ));
        assert_eq!(e.param.as_deref(), Some("tempreature"));
        assert!(
            e.message.contains("unrecognized request argument"),
            "{}",
            e.message
        );
        let e = err(parse_body::<ChatRequest>(br#"{"messages": [{"role": 3}]}"#));
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].role"),
            "{}",
            e.message
        );
        // A lone surrogate escape is not a Unicode string.
        let e = err(parse_body::<CompletionRequest>(br#"{"prompt": "\ud800"}"#));
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    fn fields(v: Value) -> Result<Sampling, ApiError> {
        let r: CompletionRequest = parse_body(v.to_string().as_bytes())?;
        check_sampling(&r.common(), 256)
    }

    #[test]
    fn sampling_ranges() {
        let s = fields(serde_json::json!({"prompt": "x"})).unwrap();
        // Omitted settings are the product's own defaults, as `tinylm sample` uses.
        let d = crate::sample::SamplingOptions::default();
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.n),
            (d.temperature, d.top_p, d.top_k, 1)
        );
        assert!(s.stops.is_empty() && !s.stream);
        for (v, param) in [
            (serde_json::json!({"temperature": -0.1}), "temperature"),
            (serde_json::json!({"temperature": 2.5}), "temperature"),
            (serde_json::json!({"top_p": 0}), "top_p"),
            (serde_json::json!({"top_p": 1.5}), "top_p"),
            (serde_json::json!({"top_k": 257}), "top_k"),
            (serde_json::json!({"n": 0}), "n"),
            (serde_json::json!({"n": 9}), "n"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (serde_json::json!({"stop": 3}), "stop"),
            (
                serde_json::json!({"stop": ["a", "b", "c", "d", "e"]}),
                "stop",
            ),
            (serde_json::json!({"stop": [""]}), "stop"),
            (
                serde_json::json!({"presence_penalty": 1}),
                "presence_penalty",
            ),
            (
                serde_json::json!({"stream_options": {"include_usage": true}}),
                "stream_options",
            ),
        ] {
            let e = err(fields(v.clone()));
            assert_eq!(e.param.as_deref(), Some(param), "{v}: {}", e.message);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        let s = fields(serde_json::json!({"stop": "\n\n", "n": 8, "top_k": 256, "seed": 5,
                                          "stream": true, "stream_options": {"include_usage": true}}))
        .unwrap();
        assert_eq!(s.stops, vec!["\n\n".to_string()]);
        assert_eq!((s.n, s.top_k, s.seed), (8, 256, Some(5)));
        assert!(s.stream && s.include_usage);
    }

    #[test]
    fn prompt_shapes() {
        let p = |v: Value| {
            parse_body::<CompletionRequest>(v.to_string().as_bytes())
                .unwrap()
                .prompt_text()
        };
        assert_eq!(p(serde_json::json!({"prompt": "春"})).unwrap(), "春");
        assert_eq!(p(serde_json::json!({"prompt": ["春"]})).unwrap(), "春");
        assert_eq!(
            err(p(serde_json::json!({}))).param.as_deref(),
            Some("prompt")
        );
        assert_eq!(
            err(p(serde_json::json!({"prompt": ["a", "b"]})))
                .param
                .as_deref(),
            Some("prompt")
        );
        assert_eq!(
            err(p(serde_json::json!({"prompt": [1, 2]})))
                .param
                .as_deref(),
            Some("prompt")
        );
        let long = "x".repeat(MAX_PROMPT_BYTES + 1);
        let e = err(p(serde_json::json!({ "prompt": long })));
        assert_eq!(e.code, Some("context_length_exceeded"));
    }

    #[test]
    fn chat_template_renders_poems() {
        let m = |role: &str, c: &str| Message {
            role: role.to_string(),
            content: Value::String(c.to_string()),
        };
        let text = render_chat(&[
            m("system", "ignored"),
            m("user", "静夜思"),
            m("assistant", "李白\n床前明月光，疑是地上霜。\n"),
            m("user", " 春晓\n"),
        ])
        .unwrap();
        assert_eq!(text, "\n静夜思\n李白\n床前明月光，疑是地上霜。\n\n春晓\n");
        let parts = Message {
            role: "user".to_string(),
            content: serde_json::json!([{"type": "text", "text": "春"}, {"type": "text", "text": "晓"}]),
        };
        assert_eq!(render_chat(&[parts]).unwrap(), "\n春晓\n");
        assert!(render_chat(&[]).is_err());
        assert_eq!(
            err(render_chat(&[m("tool", "x")])).param.as_deref(),
            Some("messages[0].role")
        );
        assert!(err(render_chat(&[m("user", "a"), m("assistant", "b")]))
            .message
            .contains("last message"));
        let bad = Message {
            role: "user".to_string(),
            content: serde_json::json!(5),
        };
        assert_eq!(
            err(render_chat(&[bad])).param.as_deref(),
            Some("messages[0].content")
        );
    }

    #[test]
    fn length_against_the_context() {
        assert_eq!(check_length(10, None, 64, "prompt").unwrap(), 54);
        assert_eq!(check_length(10, Some(54), 64, "prompt").unwrap(), 54);
        let e = err(check_length(10, Some(55), 64, "prompt"));
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(e.message.contains("at most 54"), "{}", e.message);
        let e = err(check_length(10, Some(u64::MAX), 64, "prompt"));
        assert_eq!(e.code, Some("context_length_exceeded"));
        let e = err(check_length(64, None, 64, "prompt"));
        assert_eq!(e.param.as_deref(), Some("prompt"));
    }
}
