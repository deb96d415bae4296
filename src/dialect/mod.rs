//! Client dialects: how a client's request becomes the Anthropic Messages request the forwarder sends,
//! and how the answer (JSON, event stream, error) goes back in the client's shape. Anthropic is the
//! identity (its requests never pass through here: they are forwarded byte for byte); OpenAI's Chat
//! Completions is a translation. Routing, failover, limits, budgets, logging and metrics stay in the
//! forwarder and are shared: a dialect only reshapes bytes. Pure wire knowledge: nothing here touches
//! accounts, the store or the network.

pub mod openai;
pub mod responses;
mod sse;

pub use sse::SseReader;

/// Most bytes of an Anthropic JSON answer translated at once (a long answer is well under this).
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The path a translated dialect's clients call, for the request log (`None`: the request's own path).
pub fn client_path(dialect: &str) -> Option<&'static str> {
    match dialect {
        "openai" => Some("/v1/chat/completions"),
        "openai-responses" => Some("/v1/responses"),
        _ => None,
    }
}

/// A client's request, as the forwarder needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// An Anthropic Messages request body.
    pub body: Vec<u8>,
    /// The client asked for a stream.
    pub stream: bool,
    /// The model the client named (answers echo it).
    pub model: String,
    /// A final usage chunk was asked for (`stream_options.include_usage`).
    pub include_usage: bool,
}

/// A request the dialect cannot translate: the client's mistake, said plainly (a 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DialectError {
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
}

impl DialectError {
    pub fn new(message: impl Into<String>, param: Option<&str>) -> Self {
        Self { message: message.into(), param: param.map(str::to_owned) }
    }
}

/// Turns the Anthropic event stream of one answer into the client's stream, event by event: `feed`
/// takes an Anthropic event (name and data) and returns what to send now; `finish` what closes the
/// stream. Holds only the little state the client's format needs (ids, indices, usage).
pub trait StreamTranslator: Send {
    fn event(&mut self, name: &str, data: &[u8]) -> Vec<u8>;
    /// The stream ended; `broken` when it was cut rather than finished.
    fn finish(&mut self, broken: bool) -> Vec<u8>;
}

/// One client dialect: its request, answer, stream and error shapes.
pub trait Dialect: Send + Sync {
    /// Name in the request log and metrics (`anthropic`, `openai`).
    fn name(&self) -> &'static str;
    /// The client's body as an Anthropic Messages request.
    fn request(&self, body: &[u8]) -> Result<Translated, DialectError>;
    /// An Anthropic JSON answer (a Message) as the client's answer.
    fn answer(&self, anthropic: &[u8], request: &Translated) -> Result<Vec<u8>, DialectError>;
    /// A translator for one streamed answer.
    fn stream(&self, request: &Translated) -> Box<dyn StreamTranslator>;
    /// An error in the client's shape, from an HTTP status, an Anthropic error type and a message.
    fn error(&self, status: u16, kind: &str, message: &str) -> Vec<u8>;
}

/// A request through `dialect`, read back as the Anthropic JSON it becomes (for the dialects' tests).
#[cfg(test)]
pub(crate) fn translated(dialect: &dyn Dialect, req: &serde_json::Value) -> Result<serde_json::Value, DialectError> {
    let t = dialect.request(req.to_string().as_bytes())?;
    serde_json::from_slice(&t.body).map_err(|e| DialectError::new(format!("not JSON: {e}"), None))
}
