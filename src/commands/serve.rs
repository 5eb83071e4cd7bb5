//! `ideator serve`: an OpenAI-compatible chat-completions server over our own model crate, so that any OpenAI
//! client can query an ideator checkpoint, and the codebase environment's implementer loop can run end to end on
//! this machine.
//!
//! Routes: `POST /v1/chat/completions` (non-streaming), `GET /v1/models`, `GET /health`. The request is rendered
//! with the model's chat template and sampled with our batched sampler (`n` completions in one batch); the answer
//! follows the OpenAI schema (`choices[i].message.content`, `finish_reason` `stop` or `length`, `usage`). Errors
//! are OpenAI-style `{"error": {"message", "type"}}` with status 400 (a bad request) or 500 (the model failed).
//! Requests are served one at a time: a CPU model has no spare cores for a second one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ideator_model::load::Model;
use ideator_model::sampler::{sample, FinishReason, SamplingParams};
use ideator_model::{AdapterMode, ChatMessage};
use serde::{Deserialize, Serialize};

use super::model_args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Serve this checkpoint (its adapters merged into its base model) instead of --model.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Address to listen on; localhost by default (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The model name the server reports (default: the model spec or the checkpoint folder).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Upper bound on `max_tokens` of one request.
    #[arg(long, default_value_t = 2048)]
    pub max_tokens_limit: usize,
}

/// A chat-completions request. Unknown fields are accepted and ignored: OpenAI clients send many optional ones
/// (`user`, `logprobs`, `presence_penalty`, ...), and refusing them would break those clients.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default = "one")]
    temperature: f64,
    #[serde(default = "one")]
    top_p: f64,
    #[serde(default, alias = "max_completion_tokens")]
    max_tokens: Option<usize>,
    #[serde(default = "one_n")]
    n: usize,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

fn one() -> f64 {
    1.0
}
fn one_n() -> usize {
    1
}

/// `stop` is a string or a list of strings in the OpenAI API.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Serialize)]
struct ChatResponse {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    choices: Vec<Choice>,
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct Choice {
    index: usize,
    message: ChatMessage,
    finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

struct Served {
    model: Mutex<Model>,
    name: String,
    max_tokens_limit: usize,
}

/// An OpenAI-style error answer.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.0 == StatusCode::BAD_REQUEST { "invalid_request_error" } else { "server_error" };
        (self.0, Json(serde_json::json!({"error": {"message": self.1, "type": kind}}))).into_response()
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = args.model.load_or_checkpoint(args.checkpoint.as_deref())?;
    let name = args.served_model_name.clone().unwrap_or_else(|| match &args.checkpoint {
        Some(dir) => dir.display().to_string(),
        None => model.spec.to_string(),
    });
    let served = Arc::new(Served { model: Mutex::new(model), name, max_tokens_limit: args.max_tokens_limit.max(1) });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e} (pick another --addr)", args.addr))?;
        let local = listener.local_addr()?;
        // The first stdout line says where to connect (tests and scripts read it when the port was 0).
        println!("listening on http://{local}/v1");
        tracing::info!("serving {} at http://{local}/v1", served.name);
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(models))
            .route("/health", get(|| async { "ok" }))
            .with_state(served);
        axum::serve(listener, app).await?;
        Ok(())
    })
}

async fn models(State(served): State<Arc<Served>>) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({"object": "list", "data": [{"id": served.name, "object": "model", "owned_by": "ideator"}]}),
    )
}

async fn chat_completions(
    State(served): State<Arc<Served>>,
    Json(request): Json<ChatRequest>,
) -> Result<Json<ChatResponse>, ApiError> {
    check(&request)?;
    // Sampling is seconds of CPU work: off the async thread.
    tokio::task::spawn_blocking(move || complete(&served, request))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the sampler stopped: {e}")))?
        .map(Json)
}

/// Refuses requests the server cannot honour, with what to change.
fn check(request: &ChatRequest) -> Result<(), ApiError> {
    let bad = |msg: &str| Err(ApiError(StatusCode::BAD_REQUEST, msg.to_string()));
    if request.stream {
        return bad("streaming is not supported; send \"stream\": false");
    }
    if request.messages.is_empty() {
        return bad("`messages` is empty; send at least one message");
    }
    if request.n == 0 || request.n > 64 {
        return bad("`n` must be between 1 and 64");
    }
    if !(request.temperature.is_finite() && request.temperature >= 0.0) {
        return bad("`temperature` must be a number >= 0");
    }
    if !(request.top_p > 0.0 && request.top_p <= 1.0) {
        return bad("`top_p` must be in (0, 1]");
    }
    if request.max_tokens == Some(0) {
        return bad("`max_tokens` must be at least 1");
    }
    let empty_stop = match &request.stop {
        Some(Stop::One(s)) => s.is_empty(),
        Some(Stop::Many(v)) => v.iter().any(String::is_empty),
        None => false,
    };
    if empty_stop {
        return bad("`stop` strings must not be empty");
    }
    Ok(())
}

fn complete(served: &Served, request: ChatRequest) -> Result<ChatResponse, ApiError> {
    let model = served.model.lock().unwrap_or_else(|p| p.into_inner());
    let internal = |e: &dyn std::fmt::Display| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let text = model
        .tokenizer
        .apply_chat_template(&request.messages, true)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("cannot render the messages: {e}")))?;
    let prompt = model.tokenizer.encode(&text, model.tokenizer.add_bos()).map_err(|e| internal(&e))?;
    let context = model.decoder.max_positions();
    let room = context.saturating_sub(prompt.len());
    if room == 0 {
        let msg = format!("the prompt has {} tokens; the model's context is {context}", prompt.len());
        return Err(ApiError(StatusCode::BAD_REQUEST, msg));
    }
    let max_new_tokens = request.max_tokens.unwrap_or(served.max_tokens_limit).min(served.max_tokens_limit).min(room);
    let stop = match request.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let params = SamplingParams {
        temperature: request.temperature,
        top_p: request.top_p,
        max_new_tokens,
        stop,
        seed: request.seed.unwrap_or(0),
        batch_size: request.n,
        ..Default::default()
    };
    let completions = sample(
        &model.decoder,
        &model.tokenizer,
        std::slice::from_ref(&prompt),
        request.n,
        &params,
        AdapterMode::default(),
        None,
    )
    .map_err(|e| internal(&e))?;
    let completion_tokens = completions.iter().map(|c| c.token_ids.len()).sum();
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(ChatResponse {
        id: format!("chatcmpl-{created}-{}", prompt.len()),
        object: "chat.completion",
        created,
        model: request.model.unwrap_or_else(|| served.name.clone()),
        choices: completions
            .into_iter()
            .map(|c| Choice {
                index: c.sample_index,
                message: ChatMessage { role: "assistant".into(), content: c.text },
                finish_reason: if c.finish_reason == FinishReason::Length { "length" } else { "stop" },
            })
            .collect(),
        usage: Usage {
            prompt_tokens: prompt.len(),
            completion_tokens,
            total_tokens: prompt.len() + completion_tokens,
        },
    })
}
