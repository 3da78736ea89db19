//! `tinylm serve` end to end: a tiny checkpoint trained here, the server started as a
//! child process on a free loopback port, and an HTTP client driving it.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tinylm");
/// The tiny preset's context.
const CONTEXT: u64 = 64;
const PROMPT: &str = "春眠不觉晓"; // 15 bytes = 15 tokens of the byte tokenizer

/// A 30-step tiny run shared by every test.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let out = Command::new(BIN)
            .args(["train", "--preset", "tiny", "--max-steps", "30"])
            .args(["--data", "data/zh_tiny.txt", "--sample-tokens", "0"])
            .args(["--no-progress", "--threads", "2", "--out"])
            .arg(&run)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "train failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (dir, run)
    })
    .1
}

/// A running server, killed when dropped.
struct Server {
    child: Child,
    base: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--checkpoint")
            .arg(run_dir())
            .args(["--port", "0", "--threads", "2"])
            .args(args)
            .env_remove("TINYLM_FAULT_INJECT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut s);
            s
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        let base = loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => {
                    let _ = child.kill();
                    panic!(
                        "server exited before listening; stdout {seen:?}, stderr {}",
                        stderr.join().unwrap()
                    );
                }
            };
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.trim().to_string();
            }
            seen.push(line);
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base,
            stderr: Some(stderr),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// Kills the server and returns what it wrote to stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.take().unwrap().join().unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing from\n{text}"))
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        // A stalled server fails the test instead of hanging it.
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// POSTs JSON; returns the status and the body parsed as JSON.
fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    post_raw(s, path, body.to_string().into_bytes(), None)
}

fn post_raw(s: &Server, path: &str, body: Vec<u8>, key: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

/// POSTs a streaming request; returns the `data:` payloads in order.
fn post_stream(s: &Server, path: &str, body: &Value) -> Vec<String> {
    let r = client().post(s.url(path)).json_body(body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    sse_data(&r.text().unwrap())
}

trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::blocking::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .flat_map(|event| event.lines())
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

/// Chunks of a finished stream: every payload but the final `[DONE]`, parsed.
fn chunks(data: &[String]) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// What `tinylm sample` prints for the same settings, less the prompt it echoes.
fn sample_text(prompt: &str, max_new: u64, temperature: f64, top_p: f64, seed: u64) -> String {
    let (t, p) = (temperature.to_string(), top_p.to_string());
    sample_text_with(prompt, max_new, seed, &["--temperature", &t, "--top-p", &p])
}

/// `tinylm sample`'s text with `sampling` flags (none: its defaults).
fn sample_text_with(prompt: &str, max_new: u64, seed: u64, sampling: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("sample")
        .arg("--checkpoint")
        .arg(run_dir())
        .args(["--prompt", prompt, "--threads", "2"])
        .args(["--max-new-tokens", &max_new.to_string()])
        .args(sampling)
        .args(["--seed", &seed.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    s.strip_prefix(prompt)
        .and_then(|s| s.strip_suffix('\n'))
        .unwrap()
        .to_string()
}

#[test]
fn completion_streams_what_it_returns_and_what_sample_prints() {
    let s = Server::start(&[], &[]);
    let req = json!({"model": "anything", "prompt": PROMPT, "max_tokens": 40,
                     "temperature": 0.8, "top_p": 0.95, "seed": 7});
    let (status, v) = post(&s, "/v1/completions", &req);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["model"], "run");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 15, "completion_tokens": 40, "total_tokens": 55})
    );
    // The same seed gives the same text again, and the text `tinylm sample` prints.
    assert_eq!(
        post(&s, "/v1/completions", &req).1["choices"][0]["text"],
        text
    );
    assert_eq!(sample_text(PROMPT, 40, 0.8, 0.95, 7), text);
    // Settings left out take the product's defaults, the same as `tinylm sample`'s.
    let bare = json!({"prompt": PROMPT, "max_tokens": 40, "seed": 7});
    let (status, v) = post(&s, "/v1/completions", &bare);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap(),
        sample_text_with(PROMPT, 40, 7, &[])
    );

    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let cs = chunks(&post_stream(&s, "/v1/completions", &sreq));
    assert!(cs.len() > 3, "not streamed: {cs:?}");
    let streamed: String = cs
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);
    for c in &cs[..cs.len() - 1] {
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["id"], cs[0]["id"]);
        assert!(c["choices"][0]["finish_reason"].is_null());
        // Each piece is whole characters: a split one would arrive as U+FFFD here.
        assert!(!c["choices"][0]["text"].as_str().unwrap().is_empty());
    }
    let last = cs.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"], v["usage"]);

    // n = 2: choice i uses seed + i, so choice 1 is the seed-8 text.
    let mut two = sreq.clone();
    two["n"] = json!(2);
    let cs = chunks(&post_stream(&s, "/v1/completions", &two));
    let of = |i: u64| -> String {
        cs.iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .map(|c| c["choices"][0]["text"].as_str().unwrap())
            .collect()
    };
    assert_eq!(of(0), text);
    let mut eight = req.clone();
    eight["seed"] = json!(8);
    assert_eq!(
        post(&s, "/v1/completions", &eight).1["choices"][0]["text"],
        of(1)
    );
    assert_eq!(cs.last().unwrap()["usage"]["completion_tokens"], 80);

    // A stop sequence ends the text before it: cut at the first character of the
    // seed-7 text that follows some earlier text.
    let stop: String = text.chars().skip(3).take(1).collect();
    let mut stopped = req.clone();
    stopped["stop"] = json!([stop]);
    let (_, v) = post(&s, "/v1/completions", &stopped);
    let want = &text[..text.find(&stop).unwrap()];
    assert_eq!(v["choices"][0]["text"], want);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    stopped["stream"] = json!(true);
    let cs = chunks(&post_stream(&s, "/v1/completions", &stopped));
    let streamed: String = cs
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, want);
    assert_eq!(cs.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[test]
fn chat_renders_the_template_and_streams() {
    let s = Server::start(&[], &[]);
    let req = json!({"model": "x", "messages": [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "静夜思"}],
                     "max_tokens": 45, "temperature": 0.9, "seed": 3});
    let (status, v) = post(&s, "/v1/chat/completions", &req);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    let reply = msg["content"].as_str().unwrap().to_string();
    assert!(!reply.contains("\n\n"), "{reply:?}");
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length");
    // "\n静夜思\n" is 11 bytes.
    assert_eq!(v["usage"]["prompt_tokens"], 11);
    // The template: the same as completing "\n<title>\n" up to the poem's end.
    let (_, c) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "\n静夜思\n", "max_tokens": 45, "temperature": 0.9,
                "seed": 3, "stop": "\n\n"}),
    );
    assert_eq!(c["choices"][0]["text"], reply.as_str());
    assert_eq!(c["choices"][0]["finish_reason"], finish);

    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let cs = chunks(&post_stream(&s, "/v1/chat/completions", &sreq));
    assert_eq!(cs[0]["object"], "chat.completion.chunk");
    assert_eq!(cs[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = cs
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, reply);
    let n = cs.len();
    assert_eq!(cs[n - 2]["choices"][0]["finish_reason"], finish);
    // include_usage: a last chunk with no choices and the usage, as OpenAI sends it.
    assert_eq!(cs[n - 1]["choices"], json!([]));
    assert_eq!(cs[n - 1]["usage"], v["usage"]);
    assert!(cs[..n - 1].iter().all(|c| c.get("usage").is_none()));
}

#[test]
fn models_health_metrics_and_page() {
    let s = Server::start(&[], &[]);
    let c = client();
    let models: Value = c.get(s.url("/v1/models")).send().unwrap().json_text();
    assert_eq!(models["object"], "list");
    let m = &models["data"][0];
    assert_eq!(m["id"], "run");
    assert_eq!(m["object"], "model");
    assert_eq!(m["tinylm"]["step"], 30);
    assert_eq!(m["tinylm"]["preset"], "tiny");
    assert_eq!(m["tinylm"]["context"], CONTEXT);
    assert!(m["tinylm"]["val_bpb"].as_f64().unwrap() > 0.0);
    let health: Value = c.get(s.url("/health")).send().unwrap().json_text();
    assert_eq!(health["status"], "ok");

    let page = c.get(s.url("/")).send().unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = page.text().unwrap();
    for want in [
        "<textarea",
        "/v1/completions",
        "\"step\":30",
        "\"auth\":false",
    ] {
        assert!(page.contains(want), "{want} missing from the page");
    }
    assert!(!page.contains("__TINYLM_FACTS__"));

    let (status, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "春", "max_tokens": 5}),
    );
    assert_eq!(status, 200, "{v}");
    let r = c.get(s.url("/nowhere")).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.json_text()["error"]["message"].is_string());

    let text = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    for want in [
        "tinylm_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1",
        "tinylm_requests_total{endpoint=\"other\",status=\"404\"} 1",
        "tinylm_generated_tokens_total 5",
        "tinylm_prompt_tokens_total 3",
        "tinylm_queue_depth 0",
        "tinylm_active_generations 0",
        "tinylm_time_to_first_token_seconds_count 1",
        "# TYPE tinylm_tokens_per_second gauge",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
}

trait JsonText {
    fn json_text(self) -> Value;
}

impl JsonText for reqwest::blocking::Response {
    fn json_text(self) -> Value {
        serde_json::from_str(&self.text().unwrap()).unwrap()
    }
}

#[test]
fn api_key_guards_v1_only() {
    let s = Server::start(&["--api-key", "sekrit-42"], &[]);
    let c = client();
    let r = c.get(s.url("/v1/models")).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json_text()["error"]["code"], "invalid_api_key");
    let r = c
        .get(s.url("/v1/models"))
        .header("authorization", "Bearer wrong")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .get(s.url("/v1/models"))
        .header("authorization", "Bearer sekrit-42")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = json!({"prompt": "春", "max_tokens": 3})
        .to_string()
        .into_bytes();
    assert_eq!(post_raw(&s, "/v1/completions", body.clone(), None).0, 401);
    let (status, v) = post_raw(&s, "/v1/completions", body.clone(), Some("sekrit-42"));
    assert_eq!(status, 200, "{v}");
    let chat = json!({"messages": [{"role": "user", "content": "春"}], "max_tokens": 3});
    let chat = chat.to_string().into_bytes();
    assert_eq!(
        post_raw(&s, "/v1/chat/completions", chat.clone(), None).0,
        401
    );
    assert_eq!(
        post_raw(&s, "/v1/chat/completions", chat, Some("sekrit-42")).0,
        200
    );
    // The page and the health check stay open; the page knows a key is needed.
    assert_eq!(
        c.get(s.url("/health")).send().unwrap().status().as_u16(),
        200
    );
    let page = c.get(s.url("/")).send().unwrap().text().unwrap();
    assert!(page.contains("\"auth\":true"));
    // Loopback: no warning.
    assert!(!s.stop().contains("warning"));
}

#[test]
fn all_interfaces_without_a_key_warns() {
    let s = Server::start(&["--host", "0.0.0.0"], &[]);
    let err = s.stop();
    assert!(
        err.contains("warning: listening on 0.0.0.0:") && err.contains("--api-key"),
        "{err}"
    );
}

#[test]
fn bad_options_are_refused_before_loading() {
    for (args, want) in [
        (vec!["--max-concurrency", "0"], "--max-concurrency"),
        (vec!["--max-queue", "5000"], "--max-queue"),
        (vec!["--api-key", ""], "--api-key"),
        (vec!["--api-key", "has space"], "--api-key"),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--checkpoint", "/nonexistent", "--port", "0"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--checkpoint", "/nonexistent", "--port", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found"), "{err}");
}

/// (endpoint, body, status, param, words in the message)
type BadCase = (
    &'static str,
    Vec<u8>,
    u16,
    Option<&'static str>,
    &'static str,
);

#[test]
fn bad_input_gets_openai_errors_and_the_server_carries_on() {
    let mut s = Server::start(&[], &[]);
    let long_prompt = "春".repeat(30); // 90 tokens > the context of 64
    let cases: Vec<BadCase> = vec![
        ("/v1/completions", b"{\"prompt\": \"a\",".to_vec(), 400, None, "not valid JSON"),
        ("/v1/completions", b"not json".to_vec(), 400, None, "not valid JSON"),
        ("/v1/completions", b"[1, 2]".to_vec(), 400, None, "JSON object"),
        ("/v1/completions", b"{\"prompt\": \"\xe6\x98\"}".to_vec(), 400, None, "UTF-8"),
        ("/v1/completions", br#"{"prompt": "\ud800"}"#.to_vec(), 400, None, "not valid JSON"),
        ("/v1/completions", br#"{"prompt": "a", "max_tokens": "ten"}"#.to_vec(), 400, Some("max_tokens"), "invalid type"),
        ("/v1/completions", br#"{"prompt": "a", "temperature": "hot"}"#.to_vec(), 400, Some("temperature"), "invalid type"),
        ("/v1/completions", br#"{"prompt": "a", "stream": "yes"}"#.to_vec(), 400, Some("stream"), "invalid type"),
        ("/v1/completions", br#"{"prompt": "a", "seed": -1}"#.to_vec(), 400, Some("seed"), "invalid value"),
        ("/v1/completions", br#"{"prompt": "a", "best_of": 2}"#.to_vec(), 400, Some("best_of"), "unrecognized"),
        ("/v1/completions", br#"{"prompt": 5}"#.to_vec(), 400, Some("prompt"), "string"),
        ("/v1/completions", br#"{"max_tokens": 5}"#.to_vec(), 400, Some("prompt"), "required"),
        ("/v1/completions", r#"{"prompt": "春眠", "max_tokens": 59}"#.as_bytes().to_vec(), 400, Some("max_tokens"), "at most 58"),
        ("/v1/completions", br#"{"prompt": "a", "max_tokens": 1000000000000000}"#.to_vec(), 400, Some("max_tokens"), "context"),
        ("/v1/completions", br#"{"prompt": "a", "max_tokens": 1e300}"#.to_vec(), 400, Some("max_tokens"), "invalid type"),
        ("/v1/completions", br#"{"prompt": "a", "max_tokens": 0}"#.to_vec(), 400, Some("max_tokens"), "at least 1"),
        ("/v1/completions", br#"{"prompt": "a", "temperature": -0.5}"#.to_vec(), 400, Some("temperature"), "between 0"),
        ("/v1/completions", br#"{"prompt": "a", "top_p": 0}"#.to_vec(), 400, Some("top_p"), "top_p"),
        ("/v1/completions", br#"{"prompt": "a", "top_k": 100000}"#.to_vec(), 400, Some("top_k"), "vocabulary"),
        ("/v1/completions", br#"{"prompt": "a", "n": 9}"#.to_vec(), 400, Some("n"), "between 1 and 8"),
        ("/v1/completions", br#"{"prompt": "a", "n": 0}"#.to_vec(), 400, Some("n"), "between 1 and 8"),
        ("/v1/completions", br#"{"prompt": "a", "stop": ["a","b","c","d","e"]}"#.to_vec(), 400, Some("stop"), "at most 4"),
        ("/v1/completions", json!({"prompt": long_prompt}).to_string().into_bytes(), 400, Some("prompt"), "context"),
        ("/v1/completions", json!({"prompt": "x".repeat(300_000)}).to_string().into_bytes(), 400, Some("prompt"), "bytes"),
        // One byte over the limit: the server reads it all, so the 413 is not lost to a reset.
        ("/v1/completions", vec![b' '; (1 << 20) + 1], 413, None, "larger than"),
        ("/v1/chat/completions", br#"{"messages": []}"#.to_vec(), 400, Some("messages"), "at least one"),
        ("/v1/chat/completions", br#"{"prompt": "a"}"#.to_vec(), 400, Some("prompt"), "unrecognized"),
        ("/v1/chat/completions", br#"{"messages": [{"role": "tool", "content": "a"}]}"#.to_vec(), 400, Some("messages[0].role"), "role"),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": 1}]}"#.to_vec(), 400, Some("messages[0].content"), "string"),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#.to_vec(), 400, Some("messages"), "last message"),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": long_prompt}]}).to_string().into_bytes(), 400, Some("messages"), "context"),
    ];
    for (path, body, status, param, words) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let (got, v) = post_raw(&s, path, body, None);
        assert_eq!(got, status, "{path} {shown}: {v}");
        let e = &v["error"];
        let message = e["message"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(message.contains(words), "{shown}: {message}");
        assert!(e["type"].is_string(), "{v}");
        assert_eq!(e["param"].as_str(), param, "{shown}: {v}");
        assert!(e.get("code").is_some(), "{v}");
    }
    let r = client().get(s.url("/v1/completions")).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.json_text()["error"]["message"].is_string());
    // Nothing above cost a token, and the server still answers.
    assert!(s.alive());
    assert_eq!(s.metric("tinylm_generated_tokens_total"), 0.0);
    let (status, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "", "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 1); // an empty prompt starts a new poem
}

/// Writes a streaming request on a raw socket and returns the socket once the first
/// text chunk has arrived.
fn open_stream(s: &Server, max_tokens: u64) -> TcpStream {
    let body =
        json!({"prompt": PROMPT, "max_tokens": max_tokens, "stream": true, "seed": 1}).to_string();
    let mut sock = TcpStream::connect(s.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        sock,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: {") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    sock
}

/// Polls `f` every 50 ms for up to a minute (a bound for a stalled server, not a speed
/// goal).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_that_disconnects_stops_its_generation() {
    // 40 ms a token: 49 tokens take ~2 s, far longer than noticing a closed socket.
    let s = Server::start(
        &["--max-concurrency", "1"],
        &[("TINYLM_FAULT_INJECT", "token-delay:ms=40")],
    );
    let sock = open_stream(&s, 49);
    assert_eq!(s.metric("tinylm_active_generations"), 1.0);
    drop(sock);
    eventually("the generation ends", || {
        s.metric("tinylm_active_generations") == 0.0
    });
    assert_eq!(s.metric("tinylm_cancelled_generations_total"), 1.0);
    let made = s.metric("tinylm_generated_tokens_total");
    assert!(made < 49.0, "{made} tokens: the generation ran to its end");
    // A non-streamed request whose client leaves mid-generation stops as well.
    let body = json!({"prompt": PROMPT, "max_tokens": 49}).to_string();
    let mut sock = TcpStream::connect(s.addr()).unwrap();
    write!(
        sock,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    eventually("the second generation starts", || {
        s.metric("tinylm_active_generations") == 1.0
    });
    let before = s.metric("tinylm_generated_tokens_total");
    drop(sock);
    eventually("the second generation ends", || {
        s.metric("tinylm_active_generations") == 0.0
    });
    assert_eq!(s.metric("tinylm_cancelled_generations_total"), 2.0);
    let made = s.metric("tinylm_generated_tokens_total") - before;
    assert!(made < 49.0, "{made} tokens: the generation ran to its end");
    // The slot is free again.
    let (status, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "春", "max_tokens": 3}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.metric("tinylm_cancelled_generations_total"), 2.0);
}

/// VmHWM (peak resident memory) of a process, in kB.
#[cfg(target_os = "linux")]
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_burst_of_32_completes_or_gets_503_and_memory_stays_bounded() {
    // 2 slots + 4 queued; each request holds a slot ~0.6 s, so most of a burst that
    // arrives together must be turned away.
    let s = Server::start(
        &["--max-concurrency", "2", "--max-queue", "4"],
        &[("TINYLM_FAULT_INJECT", "token-delay:ms=20")],
    );
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(32));
    let url_c = s.url("/v1/completions");
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let barrier = barrier.clone();
            let url = url_c.clone();
            std::thread::spawn(move || {
                let c = client();
                let stream = i % 2 == 1;
                let body = json!({"prompt": PROMPT, "max_tokens": 30, "seed": i, "stream": stream});
                barrier.wait();
                let r = c.post(&url).json_body(&body).send().unwrap();
                let status = r.status().as_u16();
                let retry = r.headers().get("retry-after").is_some();
                let text = r.text().unwrap();
                (i, stream, status, retry, text)
            })
        })
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for h in handles {
        let (i, stream, status, retry, text) = h.join().unwrap();
        match status {
            200 => {
                ok += 1;
                let usage = if stream {
                    let cs = chunks(&sse_data(&text));
                    cs.last().unwrap()["usage"].clone()
                } else {
                    serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
                };
                assert_eq!(usage["completion_tokens"], 30, "request {i}: {text}");
            }
            503 => {
                busy += 1;
                assert!(retry, "503 without Retry-After");
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["error"]["code"], "server_overloaded");
            }
            other => panic!("request {i}: status {other}: {text}"),
        }
    }
    println!("{ok} completed, {busy} turned away");
    assert_eq!(ok + busy, 32);
    assert!(ok >= 2, "the slots served fewer than 2");
    assert!(busy >= 1, "a burst of 32 into 6 places was never refused");
    assert_eq!(s.metric("tinylm_active_generations"), 0.0);
    assert_eq!(s.metric("tinylm_queue_depth"), 0.0);
    assert_eq!(s.metric("tinylm_generated_tokens_total"), 30.0 * ok as f64);
    #[cfg(target_os = "linux")]
    {
        let kb = peak_rss_kb(s.child.id());
        println!("server peak RSS {kb} kB");
        assert!(kb < 400 * 1024, "server peak RSS {kb} kB");
    }
}
