//! The *implementer*: a chat model reached over the OpenAI-compatible chat-completions API turns an idea into a
//! unified diff, and repairs it when it does not apply or the run crashes (the seed paper's executor, which
//! allowed 10 repairs).
//!
//! Protocol: `POST {base_url}/chat/completions` with `{"model", "messages", "temperature", "max_tokens"}` and, when
//! the config names a key variable, `Authorization: Bearer $KEY`; the diff is read from
//! `choices[0].message.content` (a fenced ```` ```diff ```` block or a bare diff). Every attempt (the messages sent,
//! the answer, the diff and what happened to it) is written to `WORK_DIR/implementer/attempt-N.json`.

use crate::knobs::clip;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[implementer]` of a codebase config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImplementerConfig {
    /// Base URL of the API, up to and including `/v1` (e.g. `http://127.0.0.1:8080/v1`).
    pub base_url: String,
    /// The model name sent with each request.
    pub model: String,
    /// The environment variable holding the API key (none: no `Authorization` header).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Repairs after the first attempt (the paper used 10).
    #[serde(default = "default_repairs")]
    pub max_repairs: usize,
    #[serde(default)]
    pub temperature: f64,
    /// Most tokens of one answer.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Timeout of one request, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
}

fn default_repairs() -> usize {
    10
}
fn default_max_tokens() -> u32 {
    2048
}
fn default_timeout() -> f64 {
    300.0
}

/// Why the implementer could not be asked (not why its diff failed: that goes back to it for a repair).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImplementerError {
    #[error("the implementer's API key variable {0} is not set; export it or change `api_key_env`")]
    MissingKey(String),
    #[error("the implementer at {url} could not be reached: {reason}; check `base_url` and that the server runs")]
    Unreachable { url: String, reason: String },
    #[error("the implementer at {url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("the implementer's answer is not a chat completion ({0})")]
    BadAnswer(String),
}

/// One chat message (OpenAI format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    temperature: f64,
    max_tokens: u32,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChatMessage,
}

/// One attempt, as stored in the work folder.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Attempt {
    pub index: usize,
    pub messages: Vec<ChatMessage>,
    pub answer: String,
    pub diff: Option<String>,
    /// `applied and ran`, or the error that went back to the model.
    pub outcome: String,
}

/// The system turn of the implementer conversation.
pub(crate) const IMPLEMENTER_SYSTEM: &str =
    "You are an expert research engineer. You implement a research idea as a \
minimal, correct unified diff against the files you are given. Answer with the diff only, in one ```diff block.";

impl ImplementerConfig {
    /// Sends one chat-completions request and returns the answer's text.
    ///
    /// Errors: the key variable is unset, the server cannot be reached, answers a non-2xx status, or answers
    /// something that is not a chat completion.
    pub fn complete(&self, messages: &[ChatMessage]) -> Result<String, ImplementerError> {
        let url = format!("{}/chat/completions", self.base_url.trim_end_matches('/'));
        let mut request = ureq::post(&url).timeout(Duration::from_secs_f64(self.timeout_secs.max(1.0)));
        if let Some(var) = &self.api_key_env {
            let key = std::env::var(var).map_err(|_| ImplementerError::MissingKey(var.clone()))?;
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let body =
            ChatRequest { model: &self.model, messages, temperature: self.temperature, max_tokens: self.max_tokens };
        let response = match request.send_json(&body) {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                let body = clip(&r.into_string().unwrap_or_default(), 300);
                return Err(ImplementerError::Status { url, status, body });
            }
            Err(e) => return Err(ImplementerError::Unreachable { url, reason: clip(&e.to_string(), 300) }),
        };
        let parsed: ChatResponse =
            response.into_json().map_err(|e| ImplementerError::BadAnswer(clip(&e.to_string(), 200)))?;
        let choice =
            parsed.choices.into_iter().next().ok_or_else(|| ImplementerError::BadAnswer("no choices".into()))?;
        Ok(choice.message.content)
    }
}

/// The first request: the idea, the editable files and the rules.
pub(crate) fn first_request(task: &str, idea: &str, files: &str, editable: &[String]) -> Vec<ChatMessage> {
    let user = format!(
        "Task of the codebase:\n{task}\n\nIdea to implement:\n{idea}\n\nEditable files (change only these: {}):\n\n\
         {files}\nWrite a unified diff that implements the idea: `--- a/FILE` and `+++ b/FILE` headers, hunks \
         starting with `@@ -OLD_START,OLD_COUNT +NEW_START,NEW_COUNT @@`, context lines copied exactly from the \
         files above (a leading space), removed lines with `-`, added lines with `+`. Answer with the diff only, in \
         one ```diff block.",
        editable.join(", ")
    );
    vec![ChatMessage::new("system", IMPLEMENTER_SYSTEM), ChatMessage::new("user", user)]
}

/// The repair request appended after a failed attempt.
pub(crate) fn repair_request(error: &str) -> ChatMessage {
    ChatMessage::new(
        "user",
        format!(
            "That did not work:\n{}\n\nWrite a corrected unified diff against the original files (not against your \
             previous diff). Answer with the diff only, in one ```diff block.",
            clip(error, 4000)
        ),
    )
}

/// The diff in a model's answer: the first fenced block that holds one, else the answer itself from its first
/// diff header on.
pub(crate) fn diff_in_answer(answer: &str) -> Option<String> {
    let mut in_block = false;
    let mut block = String::new();
    for line in answer.lines() {
        if line.trim_start().starts_with("```") {
            if in_block {
                if let Some(d) = super::patch::extract_diff(&block) {
                    return Some(d);
                }
                block.clear();
            }
            in_block = !in_block;
            continue;
        }
        if in_block {
            block.push_str(line);
            block.push('\n');
        }
    }
    super::patch::extract_diff(answer)
}
