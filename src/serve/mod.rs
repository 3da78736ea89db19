//! `tinylm serve`: a trained checkpoint behind an OpenAI-style HTTP API, with a page to
//! try it.
//!
//! ```text
//! GET  /                      the page (HTML + JS, no build step)
//! GET  /health                {"status": "ok"}
//! GET  /metrics               Prometheus (OpenMetrics) text
//! GET  /v1/models             the one model: the run directory's name, with its facts
//! POST /v1/completions        prompt -> text; SSE when "stream": true
//! POST /v1/chat/completions   messages (see `api::render_chat`) -> a poem
//! ```
//!
//! The model is loaded once; requests queue fairly for a fixed number of generation
//! slots (`engine`), and with `--api-key` every `/v1` request needs the key.

pub mod api;
pub mod engine;
pub mod facts;
pub mod metrics;

use crate::sample::SamplingOptions;
use anyhow::Context;
use api::{ApiError, ChatRequest, CompletionRequest, Sampling};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candle_core::Device;
use engine::{Engine, Event, Job};
use facts::RunFacts;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Most generation slots (`--max-concurrency`) and queued requests (`--max-queue`).
pub const MAX_CONCURRENCY: usize = 64;
pub const MAX_QUEUE: usize = 4096;

/// What `tinylm serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub checkpoint: PathBuf,
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Requests generating at once; each runs on its own blocking thread.
    pub max_concurrency: usize,
    /// Requests waiting for a slot; beyond this a request gets 503.
    pub max_queue: usize,
}

impl ServeOptions {
    /// Range checks, before anything is loaded.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=MAX_CONCURRENCY).contains(&self.max_concurrency),
            "--max-concurrency must be between 1 and {MAX_CONCURRENCY}, got {}",
            self.max_concurrency
        );
        anyhow::ensure!(
            self.max_queue <= MAX_QUEUE,
            "--max-queue must be between 0 and {MAX_QUEUE}, got {}",
            self.max_queue
        );
        anyhow::ensure!(!self.host.is_empty(), "--host must not be empty");
        if let Some(k) = &self.api_key {
            // It must fit in an HTTP header as sent by every client.
            anyhow::ensure!(
                !k.is_empty() && k.len() <= 256 && k.bytes().all(|b| b.is_ascii_graphic()),
                "--api-key must be 1 to 256 printable ASCII characters without spaces"
            );
        }
        Ok(())
    }
}

/// Shared by every handler.
struct App {
    engine: Arc<Engine>,
    facts: RunFacts,
    api_key: Option<String>,
    page: String,
    created: u64,
}

/// Loads the checkpoint, binds, prints `listening on http://ADDR`, and serves until
/// Ctrl-C or SIGTERM. `device` must already be set up (threads chosen).
pub fn run(opts: &ServeOptions, device: &Device) -> anyhow::Result<()> {
    opts.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        // HTTP and JSON are light; the generation slots run on blocking threads.
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(opts, device))
}

async fn serve(opts: &ServeOptions, device: &Device) -> anyhow::Result<()> {
    let addr: SocketAddr = tokio::net::lookup_host((opts.host.as_str(), opts.port))
        .await
        .with_context(|| format!("cannot resolve --host {:?}", opts.host))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--host {:?} resolves to no address", opts.host))?;
    // The same loading (and checks) as `tinylm sample` and `eval`.
    let loaded = crate::train::load_model(&opts.checkpoint, device)?;
    let facts = RunFacts::of(&loaded);
    let crate::train::LoadedModel {
        model, tokenizer, ..
    } = loaded;
    let metrics = Arc::new(metrics::Metrics::new());
    let engine = Arc::new(Engine::new(
        model,
        tokenizer,
        device.clone(),
        metrics,
        opts.max_concurrency,
        opts.max_queue,
    ));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && opts.api_key.is_none() {
        eprintln!(
            "warning: listening on {local} without --api-key: anyone who can reach this \
             address can use the model"
        );
    }
    let app = Arc::new(App {
        page: page(&facts, opts.api_key.is_some()),
        engine,
        facts,
        api_key: opts.api_key.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    let f = &app.facts;
    println!(
        "serving {} (preset {}, step {}, {} parameters, context {}, tokenizer {}); {} slots, queue {}",
        f.checkpoint,
        f.preset,
        f.step,
        f.params,
        f.context,
        f.tokenizer,
        opts.max_concurrency,
        opts.max_queue
    );
    // Tests and scripts read the port (for --port 0) from this line.
    println!("listening on http://{local}");
    std::io::stdout().flush()?;
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server failed")?;
    println!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing the requests in flight");
}

fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/models", get(models))
        .route("/completions", post(completions))
        .route("/chat/completions", post(chat_completions))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/", get(index))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics_text))
        .nest("/v1", v1)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: Some("method_not_allowed"),
                ..ApiError::not_found("this endpoint does not take that method")
            }
        })
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .layer(DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .with_state(app)
}

/// Counts every answer by endpoint and status.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let endpoint = match req.uri().path() {
        p @ ("/"
        | "/health"
        | "/metrics"
        | "/v1/models"
        | "/v1/completions"
        | "/v1/chat/completions") => p.to_string(),
        _ => "other".to_string(),
    };
    let r = next.run(req).await;
    app.engine.metrics.request(&endpoint, r.status().as_u16());
    r
}

/// With `--api-key`, `/v1` needs `Authorization: Bearer KEY` (compared in constant
/// time).
async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        use subtle::ConstantTimeEq;
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let ok = given.is_some_and(|g| bool::from(g.trim().as_bytes().ct_eq(key.as_bytes())));
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// The page, with the run's facts written into it (so it needs no key to show them).
fn page(facts: &RunFacts, auth: bool) -> String {
    let mut v = serde_json::to_value(facts).expect("facts serialise");
    v["auth"] = json!(auth);
    // Inside <script>: "</" would end the element early.
    let data = v.to_string().replace("</", "<\\/");
    include_str!("page.html").replace("\"__TINYLM_FACTS__\"", &data)
}

async fn index(State(app): State<Arc<App>>) -> Html<String> {
    Html(app.page.clone())
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let body = app.engine.metrics.render(app.engine.queue_depth());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.facts.model,
            "object": "model",
            "created": app.created,
            "owned_by": "tinylm",
            "tinylm": app.facts,
        }]
    }))
}

/// Which endpoint a generation answers: their JSON differs, their work does not.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// A request checked and tokenized, ready to queue.
struct Prepared {
    job: Job,
    sampling: Sampling,
    prompt_tokens: usize,
}

fn body_error(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::invalid(
            None,
            format!(
                "the request body is larger than the {} bytes this server reads",
                api::MAX_BODY_BYTES
            ),
        )
        .with_status(r.status());
    }
    ApiError::invalid(None, r.body_text()).with_status(r.status())
}

async fn completions(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let req: CompletionRequest = api::parse_body(&body)?;
    let sampling = api::check_sampling(&req.common(), app.facts.vocab)?;
    let prompt = req.prompt_text()?;
    let p = prepare(&app, prompt, sampling, "prompt", None).await?;
    generate(app, p, Kind::Completion).await
}

async fn chat_completions(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let req: ChatRequest = api::parse_body(&body)?;
    let sampling = api::check_sampling(&req.common(), app.facts.vocab)?;
    let prompt = api::render_chat(&req.messages)?;
    let p = prepare(&app, prompt, sampling, "messages", Some("\n\n")).await?;
    generate(app, p, Kind::Chat).await
}

/// Tokenizes the prompt (off the executor: a long one takes a while with a BPE) and
/// checks the lengths.
async fn prepare(
    app: &Arc<App>,
    prompt: String,
    sampling: Sampling,
    param: &str,
    end_of_reply: Option<&str>,
) -> Result<Prepared, ApiError> {
    let engine = app.engine.clone();
    let ids = tokio::task::spawn_blocking(move || {
        // An empty prompt starts a new poem, as `tinylm sample` does.
        let text = if prompt.is_empty() { "\n" } else { &prompt };
        engine.tokenizer.encode(text.as_bytes())
    })
    .await
    .map_err(|_| ApiError::internal("tokenizing the prompt failed"))?
    .map_err(|e| ApiError::internal(format!("tokenizing the prompt failed: {e:#}")))?;
    let max_new = api::check_length(ids.len(), sampling.max_tokens, app.facts.context, param)?;
    let mut stops = sampling.stops.clone();
    if let Some(s) = end_of_reply {
        if !stops.iter().any(|x| x == s) {
            stops.push(s.to_string());
        }
    }
    let job = Job {
        prompt: ids,
        max_new,
        sampling: SamplingOptions {
            temperature: sampling.temperature,
            top_k: sampling.top_k,
            top_p: sampling.top_p,
            min_p: sampling.min_p,
            repetition_penalty: sampling.repetition_penalty,
            // No seed: a fresh one, so that "try again" gives a new poem.
            seed: sampling.seed.unwrap_or_else(rand::random),
        },
        n: sampling.n,
        stops,
    };
    Ok(Prepared {
        prompt_tokens: job.prompt.len(),
        job,
        sampling,
    })
}

/// Queues the job and answers: one JSON object, or an SSE stream.
async fn generate(app: Arc<App>, p: Prepared, kind: Kind) -> Result<Response, ApiError> {
    let place = app.engine.enqueue().ok_or_else(ApiError::overloaded)?;
    app.engine.metrics.prompt(p.prompt_tokens);
    let rx = app.engine.start(place, p.job.clone());
    let shape = Shape {
        kind,
        id: format!(
            "{}-{:024x}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            rand::random::<u128>() >> 32
        ),
        model: app.facts.model.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        n: p.job.n,
        prompt_tokens: p.prompt_tokens,
    };
    if p.sampling.stream {
        Ok(stream_response(shape, rx, p.sampling.include_usage))
    } else {
        collect_response(shape, rx).await
    }
}

/// The parts of a response that every chunk repeats.
struct Shape {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    n: usize,
    prompt_tokens: usize,
}

impl Shape {
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    /// One streamed chunk for choice `index`: `text` (None: the role announcement of a
    /// chat choice), `finish`, and the usage on the request's last chunk.
    fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        finish: Option<&str>,
        usage: Option<Value>,
    ) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": index,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Chat => {
                let delta = match (text, finish) {
                    (None, None) => json!({"role": "assistant", "content": ""}),
                    (Some(t), _) => json!({"content": t}),
                    (None, Some(_)) => json!({}),
                };
                json!({
                    "index": index,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish,
                })
            }
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
}

/// Waits for every choice and answers with one JSON object.
async fn collect_response(
    shape: Shape,
    mut rx: mpsc::Receiver<Event>,
) -> Result<Response, ApiError> {
    let mut texts = vec![String::new(); shape.n];
    let mut finishes: Vec<Option<&'static str>> = vec![None; shape.n];
    let mut tokens = 0;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text { index, text } => texts[index].push_str(&text),
            Event::Done {
                index,
                finish,
                tokens: t,
            } => {
                finishes[index] = Some(finish.as_str());
                tokens += t;
            }
            Event::Error(m) => return Err(ApiError::internal(m)),
        }
    }
    if finishes.iter().any(Option::is_none) {
        return Err(ApiError::internal("generation ended early"));
    }
    let choices: Vec<Value> = texts
        .into_iter()
        .zip(finishes)
        .enumerate()
        .map(|(index, (text, finish))| match shape.kind {
            Kind::Completion => json!({
                "index": index,
                "text": text,
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
        })
        .collect();
    Ok(Json(json!({
        "id": shape.id,
        "object": shape.object(false),
        "created": shape.created,
        "model": shape.model,
        "choices": choices,
        "usage": shape.usage(tokens),
    }))
    .into_response())
}

/// Server-sent events: `data: {chunk}` per piece of text, then `data: [DONE]`.
fn stream_response(shape: Shape, rx: mpsc::Receiver<Event>, include_usage: bool) -> Response {
    struct St {
        shape: Shape,
        rx: mpsc::Receiver<Event>,
        out: VecDeque<String>,
        announced: Vec<bool>,
        tokens: usize,
        include_usage: bool,
        ended: bool,
    }
    let st = St {
        announced: vec![false; shape.n],
        shape,
        rx,
        out: VecDeque::new(),
        tokens: 0,
        include_usage,
        ended: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.out.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), st));
            }
            if st.ended {
                return None;
            }
            let ev = st.rx.recv().await;
            // A chat choice starts with the assistant's role.
            let index = match &ev {
                Some(Event::Text { index, .. }) | Some(Event::Done { index, .. }) => Some(*index),
                _ => None,
            };
            if let Some(i) = index {
                if st.shape.kind == Kind::Chat && !st.announced[i] {
                    st.announced[i] = true;
                    st.out
                        .push_back(st.shape.chunk(i, None, None, None).to_string());
                }
            }
            match ev {
                Some(Event::Text { index, text }) => {
                    let c = st.shape.chunk(index, Some(&text), None, None);
                    st.out.push_back(c.to_string());
                }
                Some(Event::Done {
                    index,
                    finish,
                    tokens,
                }) => {
                    st.tokens += tokens;
                    // Usage on the request's last chunk, unless include_usage asks
                    // for OpenAI's separate usage chunk instead.
                    let last = index + 1 == st.shape.n && !st.include_usage;
                    let usage = last.then(|| st.shape.usage(st.tokens));
                    let c = st.shape.chunk(index, None, Some(finish.as_str()), usage);
                    st.out.push_back(c.to_string());
                }
                Some(Event::Error(m)) => {
                    st.out.push_back(ApiError::internal(m).body().to_string());
                    st.ended = true;
                }
                None => {
                    if st.include_usage {
                        let v = json!({
                            "id": st.shape.id,
                            "object": st.shape.object(true),
                            "created": st.shape.created,
                            "model": st.shape.model,
                            "choices": [],
                            "usage": st.shape.usage(st.tokens),
                        });
                        st.out.push_back(v.to_string());
                    }
                    st.out.push_back("[DONE]".to_string());
                    st.ended = true;
                }
            }
        }
    });
    // Comments while a request waits in the queue: a client that went away is noticed
    // at the next write, which frees its place.
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(2)))
        .into_response()
}
