//! OpenAI's Chat Completions (`POST /v1/chat/completions`) as a dialect: the request becomes an Anthropic
//! Messages request, the Message (or its event stream) becomes a `chat.completion` (or
//! `chat.completion.chunk`s ending in `[DONE]`), errors take OpenAI's `{"error":{…}}` shape.

use serde_json::{Map, Value, json};

use super::{Dialect, DialectError, StreamTranslator, Translated};

/// Settings of the OpenAI dialect.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// `max_tokens` when the client sends none (Anthropic requires one).
    pub default_max_tokens: u64,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self { default_max_tokens: 4096 }
    }
}

/// Thinking budgets for `reasoning_effort`.
pub(super) fn thinking_budget(effort: &str) -> Option<u64> {
    match effort {
        "minimal" | "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16_384),
        "xhigh" | "max" => Some(32_768),
        // `none`, and anything unknown: no thinking.
        _ => None,
    }
}

#[derive(Debug, Clone, Default)]
pub struct OpenAiChat {
    settings: OpenAiSettings,
}

impl OpenAiChat {
    pub fn new(settings: OpenAiSettings) -> Self {
        Self { settings }
    }
}

pub(super) fn bad(message: impl Into<String>, param: &str) -> DialectError {
    DialectError::new(message, Some(param))
}

/// An image part (`image_url`: a data URL or an http(s) URL) as an Anthropic image block.
pub(super) fn image_block(part: &Value, param: &str) -> Result<Value, DialectError> {
    let url = part["image_url"]["url"].as_str().or_else(|| part["image_url"].as_str());
    let Some(url) = url else { return Err(bad("an image_url part needs image_url.url", param)) };
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) =
            rest.split_once(',').ok_or_else(|| bad("a data URL needs a comma before its data", param))?;
        let media_type =
            meta.strip_suffix(";base64").ok_or_else(|| bad("only base64 data URLs are supported", param))?;
        return Ok(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(bad("an image URL must be a data: URL or an http(s) URL", param))
}

/// Message content (a string or a list of parts) as Anthropic content blocks.
fn content_blocks(content: &Value, param: &str) -> Result<Vec<Value>, DialectError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![json!({"type": "text", "text": text})]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let param = format!("{param}[{i}]");
                match part["type"].as_str() {
                    Some("text") => Ok(json!({"type": "text", "text": part["text"].as_str().unwrap_or("")})),
                    Some("image_url") => image_block(part, &param),
                    Some(other) => Err(bad(format!("content part type {other:?} is not supported"), &param)),
                    None => Err(bad("a content part needs a type", &param)),
                }
            })
            .filter(|b| !matches!(b, Ok(v) if v["type"] == "text" && v["text"] == ""))
            .collect(),
        _ => Err(bad("content must be a string or a list of parts", param)),
    }
}

/// The text of a system or developer message.
fn text_of(content: &Value, param: &str) -> Result<String, DialectError> {
    let blocks = content_blocks(content, param)?;
    let mut text = Vec::new();
    for b in blocks {
        match b["text"].as_str() {
            Some(t) => text.push(t.to_owned()),
            None => return Err(bad("system messages carry text only", param)),
        }
    }
    Ok(text.join("\n"))
}

/// A request body as a JSON object, or a clear error.
pub(super) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, DialectError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DialectError::new("the request body must be a JSON object", None)),
        Err(e) => Err(DialectError::new(format!("the request body is not valid JSON: {e}"), None)),
    }
}

/// A function call's `arguments` text as the object a `tool_use` block carries.
pub(super) fn parse_arguments(arguments: Option<&str>, param: &str) -> Result<Value, DialectError> {
    let arguments = arguments.unwrap_or("{}");
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(input) if input.is_object() => Ok(input),
        _ => Err(bad("function arguments must be a JSON object", param)),
    }
}

/// `max_tokens` and, for a reasoning effort, the thinking budget (the answer keeps room beyond it).
pub(super) fn set_budget(out: &mut Map<String, Value>, max_tokens: u64, effort: Option<&str>) {
    let mut max_tokens = max_tokens.max(1);
    if let Some(budget) = effort.and_then(thinking_budget) {
        max_tokens = max_tokens.max(budget + 1024);
        out.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": budget}));
    }
    out.insert("max_tokens".into(), json!(max_tokens));
}

/// JSON mode (`json_object`, `json_schema` with its schema): Claude has no switch for it, so the nearest
/// faithful means is an instruction for `system`. `None` for plain text.
pub(super) fn format_instruction(
    kind: Option<&str>,
    schema: &Value,
    param: &str,
) -> Result<Option<String>, DialectError> {
    match kind {
        Some("json_object") => Ok(Some("Respond with a single valid JSON object and nothing else.".into())),
        Some("json_schema") => Ok(Some(format!(
            "Respond with a single valid JSON value that conforms to this JSON Schema, and nothing else: {schema}"
        ))),
        Some("text") | None => Ok(None),
        Some(other) => Err(bad(format!("{param} {other:?} is not supported"), param)),
    }
}

/// A function tool (name, description, JSON Schema of its parameters) as an Anthropic tool.
pub(super) fn tool(name: &str, description: Option<&str>, parameters: Option<&Value>) -> Value {
    let mut t = json!({"name": name, "input_schema": parameters.cloned().unwrap_or(json!({"type": "object"}))});
    if let Some(d) = description {
        t["description"] = json!(d);
    }
    t
}

/// `tool_choice` (`auto`, `none`, `required`, or naming one function: `named` reads its name) and
/// `parallel_tool_calls` as Anthropic's `tool_choice`.
pub(super) fn tool_choice(
    choice: Option<&Value>,
    named: impl Fn(&Value) -> Option<&str>,
    parallel: Option<bool>,
) -> Result<Value, DialectError> {
    let mut out = match choice {
        None | Some(Value::Null) => json!({"type": "auto"}),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => return Err(bad(format!("tool_choice {other:?} is not supported"), "tool_choice")),
        },
        Some(obj) => match named(obj) {
            Some(name) => json!({"type": "tool", "name": name}),
            None => return Err(bad("tool_choice needs the function's name", "tool_choice")),
        },
    };
    if parallel == Some(false) && out["type"] != "none" {
        out["disable_parallel_tool_use"] = json!(true);
    }
    Ok(out)
}

/// Every tool call must be answered, in the user turn right after it (as both APIs require).
pub(super) fn answered(turns: &[Value]) -> Result<(), DialectError> {
    for (i, turn) in turns.iter().enumerate() {
        let ids =
            turn["content"].as_array().into_iter().flatten().filter(|b| b["type"] == "tool_use").map(|b| &b["id"]);
        let next = turns.get(i + 1).and_then(|t| t["content"].as_array());
        for id in ids {
            let found = next.is_some_and(|n| n.iter().any(|b| b["type"] == "tool_result" && &b["tool_use_id"] == id));
            if !found {
                return Err(bad(format!("tool call {id} has no tool message answering it right after"), "messages"));
            }
        }
    }
    Ok(())
}

/// Append a turn, merging it into the previous one when the role repeats (Anthropic alternates roles;
/// consecutive tool results must be one user turn).
pub(super) fn push_turn(turns: &mut Vec<Value>, role: &str, mut blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut()
        && last["role"] == role
        && let Some(content) = last["content"].as_array_mut()
    {
        content.append(&mut blocks);
        return;
    }
    turns.push(json!({"role": role, "content": blocks}));
}

impl Dialect for OpenAiChat {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn request(&self, body: &[u8]) -> Result<Translated, DialectError> {
        let req = parse_object(body)?;
        let model = req.get("model").and_then(Value::as_str).filter(|m| !m.is_empty());
        let model = model.ok_or_else(|| bad("model is required", "model"))?.to_owned();
        if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
            return Err(bad("n > 1 is not supported: Claude returns one choice per request", "n"));
        }
        let messages = req.get("messages").and_then(Value::as_array);
        let messages = messages.ok_or_else(|| bad("messages must be a list", "messages"))?;
        let mut system: Vec<String> = Vec::new();
        let mut turns: Vec<Value> = Vec::new();
        // Tool calls of the latest assistant message: a tool message must answer one of them.
        let mut calls: Vec<String> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let param = format!("messages[{i}]");
            let content = m.get("content").unwrap_or(&Value::Null);
            match m.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => {
                    let text = text_of(content, &format!("{param}.content"))?;
                    if !text.is_empty() {
                        system.push(text);
                    }
                }
                Some("user") => {
                    let blocks = content_blocks(content, &format!("{param}.content"))?;
                    if !blocks.is_empty() {
                        calls.clear();
                    }
                    push_turn(&mut turns, "user", blocks);
                }
                Some("assistant") => {
                    // Consecutive assistant messages become one turn: their calls count together.
                    if turns.last().is_none_or(|t| t["role"] != "assistant") {
                        calls.clear();
                    }
                    // `reasoning_content` is not sent back: without its signature a thinking block is refused.
                    let mut blocks = content_blocks(content, &format!("{param}.content"))?;
                    for (j, call) in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
                        let param = format!("{param}.tool_calls[{j}]");
                        let id = call["id"].as_str().ok_or_else(|| bad("a tool call needs an id", &param))?;
                        let name = call["function"]["name"].as_str();
                        let name = name.ok_or_else(|| bad("a tool call needs function.name", &param))?;
                        let input = parse_arguments(call["function"]["arguments"].as_str(), &param)?;
                        if calls.iter().any(|c| c == id) {
                            return Err(bad(format!("tool call id {id:?} is used twice"), &param));
                        }
                        calls.push(id.to_owned());
                        blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
                    }
                    push_turn(&mut turns, "assistant", blocks);
                }
                Some("tool") => {
                    let id = m.get("tool_call_id").and_then(Value::as_str);
                    let id = id.ok_or_else(|| bad("a tool message needs tool_call_id", &param))?;
                    if !calls.iter().any(|c| c == id) {
                        return Err(bad(
                            format!("tool_call_id {id:?} answers no tool call of the assistant message before it"),
                            &format!("{param}.tool_call_id"),
                        ));
                    }
                    let result = content_blocks(content, &format!("{param}.content"))?;
                    let block = json!({"type": "tool_result", "tool_use_id": id, "content": result});
                    push_turn(&mut turns, "user", vec![block]);
                }
                Some("function") => return Err(bad("function messages are deprecated: use tool messages", &param)),
                Some(other) => return Err(bad(format!("unknown role {other:?}"), &format!("{param}.role"))),
                None => return Err(bad("a message needs a role", &format!("{param}.role"))),
            }
        }
        if turns.is_empty() {
            return Err(bad("messages needs at least one user or assistant message", "messages"));
        }
        answered(&turns)?;
        let mut out = Map::new();
        out.insert("model".into(), json!(model));
        let max_tokens = req.get("max_completion_tokens").or_else(|| req.get("max_tokens")).and_then(Value::as_u64);
        set_budget(
            &mut out,
            max_tokens.unwrap_or(self.settings.default_max_tokens),
            req.get("reasoning_effort").and_then(Value::as_str),
        );
        let format = req.get("response_format");
        let schema = format.map_or(&Value::Null, |f| &f["json_schema"]["schema"]);
        if let Some(instruction) =
            format_instruction(format.and_then(|f| f["type"].as_str()), schema, "response_format")?
        {
            system.push(instruction);
        }
        if !system.is_empty() {
            out.insert("system".into(), json!(system.join("\n\n")));
        }
        out.insert("messages".into(), Value::Array(turns));
        for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
            if let Some(v) = req.get(from).filter(|v| v.is_number()) {
                out.insert(to.into(), v.clone());
            }
        }
        match req.get("stop") {
            Some(Value::String(s)) => {
                out.insert("stop_sequences".into(), json!([s]));
            }
            Some(Value::Array(list)) if !list.is_empty() => {
                out.insert("stop_sequences".into(), Value::Array(list.clone()));
            }
            _ => {}
        }
        if let Some(user) = req.get("user").and_then(Value::as_str).filter(|u| !u.is_empty()) {
            out.insert("metadata".into(), json!({"user_id": user}));
        }
        if let Some(tools) = req.get("tools").and_then(Value::as_array).filter(|t| !t.is_empty()) {
            let mut list = Vec::new();
            for (i, t) in tools.iter().enumerate() {
                let param = format!("tools[{i}]");
                if t["type"] != "function" {
                    return Err(bad("only function tools are supported", &param));
                }
                let f = &t["function"];
                let name = f["name"].as_str().ok_or_else(|| bad("a tool needs function.name", &param))?;
                list.push(tool(name, f["description"].as_str(), f.get("parameters")));
            }
            out.insert("tools".into(), Value::Array(list));
            let parallel = req.get("parallel_tool_calls").and_then(Value::as_bool);
            let choice = tool_choice(req.get("tool_choice"), |c| c["function"]["name"].as_str(), parallel)?;
            out.insert("tool_choice".into(), choice);
        }
        let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
        if stream {
            out.insert("stream".into(), json!(true));
        }
        let include_usage =
            req.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
        let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| DialectError::new(e.to_string(), None))?;
        Ok(Translated { body, stream, model, include_usage })
    }

    fn answer(&self, anthropic: &[u8], request: &Translated) -> Result<Vec<u8>, DialectError> {
        let message: Value = serde_json::from_slice(anthropic)
            .map_err(|e| DialectError::new(format!("the upstream answer is not JSON: {e}"), None))?;
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut calls = Vec::new();
        for block in message["content"].as_array().into_iter().flatten() {
            match block["type"].as_str() {
                Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
                Some("thinking") => reasoning.push_str(block["thinking"].as_str().unwrap_or("")),
                Some("tool_use") => calls.push(json!({
                    "id": block["id"], "type": "function",
                    "function": {"name": block["name"], "arguments": block["input"].to_string()},
                })),
                _ => {}
            }
        }
        let mut reply = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
        if !calls.is_empty() {
            reply["tool_calls"] = Value::Array(calls);
        }
        if !reasoning.is_empty() {
            reply["reasoning_content"] = json!(reasoning);
        }
        let out = json!({
            "id": completion_id(&message["id"]),
            "object": "chat.completion",
            "created": now_secs(),
            "model": message["model"].as_str().unwrap_or(&request.model),
            "choices": [{"index": 0, "message": reply, "finish_reason": finish_reason(message["stop_reason"].as_str()), "logprobs": null}],
            "usage": usage(&message["usage"]),
        });
        serde_json::to_vec(&out).map_err(|e| DialectError::new(e.to_string(), None))
    }

    fn stream(&self, request: &Translated) -> Box<dyn StreamTranslator> {
        Box::new(ChatStream {
            model: request.model.clone(),
            include_usage: request.include_usage,
            ..ChatStream::default()
        })
    }

    fn error(&self, status: u16, kind: &str, message: &str) -> Vec<u8> {
        let code = match status {
            429 => json!("rate_limit_exceeded"),
            401 => json!("invalid_api_key"),
            _ => Value::Null,
        };
        let kind = match kind {
            "rate_limit_error" => "rate_limit_error",
            "authentication_error" | "permission_error" => kind,
            "invalid_request_error" | "not_found_error" | "request_too_large" => "invalid_request_error",
            _ if status >= 500 => "server_error",
            other => other,
        };
        serde_json::to_vec(&json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
            .unwrap_or_default()
    }
}

pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn completion_id(message_id: &Value) -> String {
    format!("chatcmpl-{}", message_id.as_str().unwrap_or("switchyard").trim_start_matches("msg_"))
}

/// Anthropic's stop reason as OpenAI's finish reason.
pub fn finish_reason(stop: Option<&str>) -> Value {
    match stop {
        None => Value::Null,
        Some("end_turn" | "stop_sequence" | "pause_turn") => json!("stop"),
        Some("max_tokens" | "model_context_window_exceeded") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        Some(_) => json!("stop"),
    }
}

/// Anthropic usage as OpenAI's: prompt tokens count cache reads and writes, cached ones are detailed.
pub(super) fn usage(u: &Value) -> Value {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + cached + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Anthropic's event stream as `chat.completion.chunk`s.
#[derive(Default)]
struct ChatStream {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Anthropic content-block index → OpenAI tool-call index, for tool-use blocks.
    tools: std::collections::HashMap<u64, u64>,
    usage: Map<String, Value>,
    finish: Option<Value>,
    done: bool,
    /// `data: {"id":…,"model":…,"choices":[{"index":0,"delta":` of this stream, written once: a text
    /// delta (most of a stream) is then this, the escaped text and a fixed tail, with no JSON tree built.
    prefix: Vec<u8>,
}

/// The end of a chunk after its delta.
const CHUNK_TAIL: &[u8] = b",\"finish_reason\":null,\"logprobs\":null}]}\n\n";

/// The few fields of an Anthropic event a chunk needs, borrowed from the event's bytes.
#[derive(serde::Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(serde::Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
}

/// A `message_delta` event: the stop reason and the final usage.
#[derive(serde::Deserialize)]
struct MessageDelta<'a> {
    #[serde(default, borrow)]
    delta: Option<StopDelta<'a>>,
    #[serde(default)]
    usage: Option<Map<String, Value>>,
}

#[derive(serde::Deserialize)]
struct StopDelta<'a> {
    #[serde(default, borrow)]
    stop_reason: Option<std::borrow::Cow<'a, str>>,
}

/// A `content_block_start` event's block type.
#[derive(serde::Deserialize)]
struct BlockStart<'a> {
    #[serde(borrow)]
    content_block: BlockKind<'a>,
}

#[derive(serde::Deserialize)]
struct BlockKind<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

impl ChatStream {
    fn chunk(&self, delta: Value, finish: Value) -> Vec<u8> {
        let chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        });
        sse(&chunk)
    }

    /// A chunk from the stream's prefix: `delta` and `finish` are JSON text.
    fn raw_chunk(&self, delta: &str, finish: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + delta.len() + finish.len() + 48);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(delta.as_bytes());
        out.extend_from_slice(b",\"finish_reason\":");
        out.extend_from_slice(finish.as_bytes());
        out.extend_from_slice(b",\"logprobs\":null}]}\n\n");
        out
    }

    /// A text delta's chunk, from the stream's prefix.
    fn text_chunk(&self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + text.len() + 16 + CHUNK_TAIL.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"{\"content\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, text);
        out.push(b'}');
        out.extend_from_slice(CHUNK_TAIL);
        out
    }
}

pub(super) fn sse(value: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

impl StreamTranslator for ChatStream {
    fn event(&mut self, name: &str, data: &[u8]) -> Vec<u8> {
        // Events a chunk never carries are skipped by name, unread; the common ones are read into small
        // borrowed structs rather than JSON trees (a tree costs more than the rest of the translation).
        match name {
            "ping" | "content_block_stop" => return Vec::new(),
            "message_stop" => return self.end(),
            "message_delta" => {
                if let Ok(d) = serde_json::from_slice::<MessageDelta<'_>>(data) {
                    for (k, v) in d.usage.into_iter().flatten() {
                        self.usage.insert(k, v);
                    }
                    let stop = d.delta.and_then(|d| d.stop_reason);
                    self.finish = Some(finish_reason(stop.as_deref()));
                    return Vec::new();
                }
            }
            "content_block_start" => {
                if let Ok(b) = serde_json::from_slice::<BlockStart<'_>>(data)
                    && b.content_block.kind != "tool_use"
                {
                    return Vec::new();
                }
            }
            _ => {}
        }
        // The common case, a text delta, without a JSON tree.
        if let Ok(Event { kind, delta: Some(Delta { kind: Some(delta_kind), text: Some(text) }), .. }) =
            serde_json::from_slice::<Event<'_>>(data)
            && kind == "content_block_delta"
            && delta_kind == "text_delta"
            && !self.prefix.is_empty()
        {
            return self.text_chunk(&text);
        }
        let Ok(event) = serde_json::from_slice::<Value>(data) else { return Vec::new() };
        match event["type"].as_str() {
            Some("message_start") => {
                let message = &event["message"];
                self.id = completion_id(&message["id"]);
                self.created = now_secs();
                if let Some(model) = message["model"].as_str() {
                    self.model = model.to_owned();
                }
                if let Some(u) = message["usage"].as_object() {
                    self.usage.clone_from(u);
                }
                let head = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model});
                let head = head.to_string();
                // `{…}` becomes `{…,"choices":[{"index":0,"delta":`.
                self.prefix =
                    format!("data: {},\"choices\":[{{\"index\":0,\"delta\":", &head[..head.len() - 1]).into_bytes();
                self.raw_chunk(r#"{"content":"","role":"assistant"}"#, "null")
            }
            Some("content_block_start") if event["content_block"]["type"] == "tool_use" => {
                let block = event["index"].as_u64().unwrap_or(0);
                let index = self.tools.len() as u64;
                self.tools.insert(block, index);
                let b = &event["content_block"];
                let call = json!({"index": index, "id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": ""}});
                self.chunk(json!({"tool_calls": [call]}), Value::Null)
            }
            Some("content_block_delta") => {
                let delta = &event["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => self.chunk(json!({"content": delta["text"]}), Value::Null),
                    Some("thinking_delta") => self.chunk(json!({"reasoning_content": delta["thinking"]}), Value::Null),
                    Some("input_json_delta") => {
                        let block = event["index"].as_u64().unwrap_or(0);
                        let index = self.tools.get(&block).copied().unwrap_or(0);
                        let call = json!({"index": index, "function": {"arguments": delta["partial_json"]}});
                        self.chunk(json!({"tool_calls": [call]}), Value::Null)
                    }
                    _ => Vec::new(),
                }
            }
            Some("message_delta") => {
                if let Some(u) = event["usage"].as_object() {
                    for (k, v) in u {
                        self.usage.insert(k.clone(), v.clone());
                    }
                }
                self.finish = Some(finish_reason(event["delta"]["stop_reason"].as_str()));
                Vec::new()
            }
            Some("message_stop") => self.end(),
            Some("error") => {
                self.done = true;
                let error = &event["error"];
                let mut out = sse(
                    &json!({"error": {"message": error["message"], "type": error["type"], "param": null, "code": null}}),
                );
                out.extend_from_slice(b"data: [DONE]\n\n");
                out
            }
            _ => Vec::new(),
        }
    }

    fn finish(&mut self, broken: bool) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        if broken {
            self.done = true;
            let mut out = sse(
                &json!({"error": {"message": "the upstream stream broke off", "type": "server_error", "param": null, "code": null}}),
            );
            out.extend_from_slice(b"data: [DONE]\n\n");
            return out;
        }
        self.end()
    }
}

impl ChatStream {
    fn end(&mut self) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let finish = self.finish.take().unwrap_or_else(|| json!("stop"));
        let mut out = if self.prefix.is_empty() {
            self.chunk(json!({}), finish)
        } else {
            self.raw_chunk("{}", &finish.to_string())
        };
        if self.include_usage {
            let chunk = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage(&Value::Object(self.usage.clone())),
            });
            out.extend_from_slice(&sse(&chunk));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn translate(req: Value) -> Result<Value, DialectError> {
        crate::dialect::translated(&OpenAiChat::default(), &req)
    }

    #[test]
    fn a_chat_request_becomes_a_messages_request() {
        let out = translate(json!({
            "model": "claude-sonnet-4-5", "temperature": 0.2, "stop": "END", "user": "u-1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "4 C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required", "parallel_tool_calls": false,
        }))
        .unwrap();
        assert_eq!(out["system"], "Be brief.\n\nUse metric units.");
        assert_eq!(out["max_tokens"], 4096, "a default, since Anthropic requires one");
        assert_eq!((out["temperature"].as_f64(), &out["stop_sequences"]), (Some(0.2), &json!(["END"])));
        assert_eq!(out["metadata"]["user_id"], "u-1");
        let turns = out["messages"].as_array().unwrap();
        assert_eq!(turns.len(), 3, "{turns:?}");
        assert_eq!(
            turns[0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "iVBOR"})
        );
        assert_eq!(turns[0]["content"][2]["source"], json!({"type": "url", "url": "https://example.com/cat.jpg"}));
        assert_eq!(
            turns[1]["content"][0],
            json!({"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}})
        );
        assert_eq!(turns[1]["content"][1]["input"], json!({}));
        // Consecutive tool results: one user turn.
        assert_eq!(turns[2]["role"], "user");
        assert_eq!(turns[2]["content"].as_array().unwrap().len(), 2);
        assert_eq!(turns[2]["content"][1]["tool_use_id"], "call_2");
        assert_eq!(
            out["tools"][0],
            json!({"name": "weather", "description": "Weather", "input_schema": {"type": "object"}})
        );
        assert_eq!(out["tool_choice"], json!({"type": "any", "disable_parallel_tool_use": true}));
    }

    #[test]
    fn options_map_and_bad_requests_are_clear() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let mut r = base();
        r["max_completion_tokens"] = json!(100);
        r["reasoning_effort"] = json!("medium");
        r["response_format"] = json!({"type": "json_object"});
        let out = translate(r).unwrap();
        assert_eq!(out["thinking"], json!({"type": "enabled", "budget_tokens": 4096}));
        assert_eq!(out["max_tokens"], 4096 + 1024, "room beyond the thinking");
        assert!(out["system"].as_str().unwrap().contains("JSON object"));
        let named = |choice: Value| {
            let mut r = base();
            r["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
            r["tool_choice"] = choice;
            translate(r).unwrap()["tool_choice"].clone()
        };
        assert_eq!(named(json!({"type": "function", "function": {"name": "f"}})), json!({"type": "tool", "name": "f"}));
        assert_eq!(named(json!("none")), json!({"type": "none"}));
        assert_eq!(named(json!("auto")), json!({"type": "auto"}));
        for (bad, param) in [
            (json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}), "n"),
            (json!({"messages": [{"role": "user", "content": "x"}]}), "model"),
            (json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}]}),
                "messages[0].tool_calls[0]",
            ),
            (json!({"model": "m", "messages": []}), "messages"),
        ] {
            let e = OpenAiChat::default().request(bad.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}: {e}");
        }
        assert!(OpenAiChat::default().request(b"[1]").is_err());
        assert!(OpenAiChat::default().request(b"{nope").is_err());
    }

    #[test]
    fn a_message_becomes_a_chat_completion() {
        let t = Translated { body: vec![], stream: false, model: "alias".into(), include_usage: false };
        let message = json!({"id": "msg_1", "model": "claude-sonnet-4-5", "stop_reason": "tool_use",
            "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}],
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 2}});
        let out: Value =
            serde_json::from_slice(&OpenAiChat::default().answer(message.to_string().as_bytes(), &t).unwrap()).unwrap();
        assert_eq!((out["object"].as_str(), out["id"].as_str()), (Some("chat.completion"), Some("chatcmpl-1")));
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Let me look.");
        assert_eq!(choice["message"]["reasoning_content"], "hmm");
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"],
            json!({"name": "weather", "arguments": "{\"city\":\"Oslo\"}"})
        );
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 42, "completion_tokens": 5, "total_tokens": 47, "prompt_tokens_details": {"cached_tokens": 30}})
        );
        for (stop, finish) in
            [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop"), ("tool_use", "tool_calls")]
        {
            assert_eq!(finish_reason(Some(stop)), json!(finish));
        }
    }

    #[test]
    fn a_stream_becomes_chunks_ending_in_done() {
        let t = Translated { body: vec![], stream: true, model: "m".into(), include_usage: true };
        let mut s = OpenAiChat::default().stream(&t);
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_9", "model": "claude-x", "usage": {"input_tokens": 7, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ];
        let mut out = Vec::new();
        for e in &events {
            out.extend(s.event(e["type"].as_str().unwrap(), e.to_string().as_bytes()));
        }
        out.extend(s.finish(false));
        let text = String::from_utf8(out).unwrap();
        let chunks: Vec<&str> =
            text.split("\n\n").filter(|c| !c.is_empty()).map(|c| c.trim_start_matches("data: ")).collect();
        assert_eq!(*chunks.last().unwrap(), "[DONE]");
        let parsed: Vec<Value> = chunks[..chunks.len() - 1].iter().map(|c| serde_json::from_str(c).unwrap()).collect();
        assert_eq!(parsed[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(parsed[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(parsed[2]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(parsed[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"], "{\"a\":");
        assert_eq!(parsed[5]["choices"][0]["delta"]["tool_calls"][0]["index"], 1, "stable indices per call");
        assert_eq!(parsed[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(parsed[7]["usage"]["completion_tokens"], 9);
        assert_eq!(parsed[7]["choices"], json!([]));
        // A cut stream ends with an error the client raises, then [DONE].
        let mut cut = OpenAiChat::default().stream(&t);
        cut.event("message_start", events[0].to_string().as_bytes());
        let end = String::from_utf8(cut.finish(true)).unwrap();
        assert!(end.contains("\"error\"") && end.ends_with("data: [DONE]\n\n"), "{end}");
    }

    /// Whether `body` is a Messages request Anthropic accepts in shape: a model, room for an answer,
    /// alternating user/assistant turns of known blocks, tool results answering the tool calls of the turn
    /// before.
    fn well_formed(body: &Value) -> Result<(), String> {
        if !body["model"].is_string() || body["max_tokens"].as_u64().unwrap_or(0) == 0 {
            return Err("model and max_tokens".into());
        }
        let turns = body["messages"].as_array().ok_or("messages")?;
        if turns.is_empty() {
            return Err("no turns".into());
        }
        let mut previous: Option<&Value> = None;
        for turn in turns {
            let role = turn["role"].as_str().ok_or("role")?;
            if previous.is_some_and(|p| p["role"] == role) || !matches!(role, "user" | "assistant") {
                return Err(format!("roles do not alternate: {turns:?}"));
            }
            let blocks = turn["content"].as_array().filter(|b| !b.is_empty()).ok_or("empty turn")?;
            for b in blocks {
                match (role, b["type"].as_str()) {
                    (_, Some("text" | "image")) => {}
                    ("assistant", Some("tool_use")) => {
                        if blocks.iter().filter(|c| c["type"] == "tool_use" && c["id"] == b["id"]).count() > 1 {
                            return Err(format!("tool use id used twice: {b}"));
                        }
                    }
                    ("user", Some("tool_result")) => {
                        let answered = previous.and_then(|p| p["content"].as_array()).is_some_and(|prev| {
                            prev.iter().any(|c| c["type"] == "tool_use" && c["id"] == b["tool_use_id"])
                        });
                        if !answered {
                            return Err(format!("a tool result answers nothing: {b}"));
                        }
                    }
                    other => return Err(format!("block {other:?} in a {role} turn")),
                }
            }
            previous = Some(turn);
        }
        answered(turns).map_err(|e| e.message)
    }

    fn message() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let text = prop_oneof![Just(String::new()), "[a-z ]{1,12}"];
        let content = prop_oneof![
            text.clone().prop_map(Value::from),
            Just(Value::Null),
            proptest::collection::vec(
                prop_oneof![
                    text.clone().prop_map(|t| json!({"type": "text", "text": t})),
                    Just(json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})),
                    Just(json!({"type": "image_url", "image_url": {"url": "ftp://nope"}})),
                    Just(json!({"type": "audio"})),
                ],
                0..3
            )
            .prop_map(Value::from),
        ];
        let call = (
            "c[0-3]",
            prop_oneof![
                Just("{}".to_owned()),
                Just("{\"a\":1}".to_owned()),
                Just("[1]".to_owned()),
                Just("oops".to_owned())
            ],
        )
            .prop_map(|(id, args)| json!({"id": id, "type": "function", "function": {"name": "f", "arguments": args}}));
        prop_oneof![
            ("system|developer|user|wizard", content.clone())
                .prop_map(|(role, content)| json!({"role": role, "content": content})),
            (content.clone(), proptest::collection::vec(call, 0..3))
                .prop_map(|(content, calls)| json!({"role": "assistant", "content": content, "tool_calls": calls})),
            ("c[0-3]", content)
                .prop_map(|(id, content)| json!({"role": "tool", "tool_call_id": id, "content": content})),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 2000, ..proptest::test_runner::Config::default() })]
        /// Any request is either translated into a well-formed Messages request or refused with a clear
        /// message (naming the field), never a panic and never a malformed request upstream.
        #[test]
        fn any_chat_request_translates_or_is_refused_clearly(
            messages in proptest::collection::vec(message(), 0..8),
            n in proptest::option::of(0u64..3),
            max_tokens in proptest::option::of(0u64..100_000),
            effort in proptest::option::of("low|medium|high|none|weird"),
            choice in proptest::option::of("auto|none|required|sometimes"),
        ) {
            let mut req = json!({"model": "claude-x", "messages": messages,
                "tools": [{"type": "function", "function": {"name": "f"}}]});
            if let Some(n) = n { req["n"] = json!(n); }
            if let Some(m) = max_tokens { req["max_tokens"] = json!(m); }
            if let Some(e) = effort { req["reasoning_effort"] = json!(e); }
            if let Some(c) = choice { req["tool_choice"] = json!(c); }
            match OpenAiChat::default().request(req.to_string().as_bytes()) {
                Ok(t) => {
                    let body: Value = serde_json::from_slice(&t.body).unwrap();
                    if let Err(why) = well_formed(&body) {
                        return Err(proptest::test_runner::TestCaseError::fail(format!("{why}\n{req}\n{body}")));
                    }
                }
                Err(e) => proptest::prop_assert!(!e.message.is_empty()),
            }
        }
    }

    #[test]
    fn errors_take_the_openai_shape() {
        let e: Value = serde_json::from_slice(&OpenAiChat::default().error(429, "rate_limit_error", "slow")).unwrap();
        assert_eq!(
            e,
            json!({"error": {"message": "slow", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})
        );
        let e: Value = serde_json::from_slice(&OpenAiChat::default().error(529, "overloaded_error", "busy")).unwrap();
        assert_eq!(e["error"]["type"], "server_error");
    }
}
