//! OpenAI's Responses API (`POST /v1/responses`) as a dialect: `instructions` and `input` (a string or
//! items: messages, `function_call`, `function_call_output`, images) become a Messages request; the
//! Message becomes a `response` object with `output` items, and its event stream the typed
//! `response.*` events. Switchyard stores no conversations, so `previous_response_id` is refused.

use serde_json::{Map, Value, json};

use super::openai::{
    OpenAiSettings, answered, bad, format_instruction, image_block, now_secs, parse_arguments, parse_object, push_turn,
    set_budget, tool, tool_choice,
};
use super::{Dialect, DialectError, StreamTranslator, Translated};

#[derive(Debug, Clone, Default)]
pub struct OpenAiResponses {
    settings: OpenAiSettings,
}

impl OpenAiResponses {
    pub fn new(settings: OpenAiSettings) -> Self {
        Self { settings }
    }
}

/// Content of an input message (a string or parts) as Anthropic content blocks.
fn input_content(content: &Value, param: &str) -> Result<Vec<Value>, DialectError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(t) if t.is_empty() => Ok(Vec::new()),
        Value::String(t) => Ok(vec![json!({"type": "text", "text": t})]),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let param = format!("{param}[{i}]");
                match part["type"].as_str() {
                    Some("input_text" | "output_text" | "text") => {
                        let text = part["text"].as_str().unwrap_or("");
                        if !text.is_empty() {
                            out.push(json!({"type": "text", "text": text}));
                        }
                    }
                    Some("input_image") => {
                        let url = part["image_url"].as_str().unwrap_or("");
                        out.push(image_block(&json!({"image_url": {"url": url}}), &param)?);
                    }
                    Some(other) => return Err(bad(format!("content part type {other:?} is not supported"), &param)),
                    None => return Err(bad("a content part needs a type", &param)),
                }
            }
            Ok(out)
        }
        _ => Err(bad("content must be a string or a list of parts", param)),
    }
}

fn text_only(blocks: Vec<Value>, param: &str) -> Result<String, DialectError> {
    let mut text = Vec::new();
    for b in blocks {
        text.push(b["text"].as_str().ok_or_else(|| bad("system messages carry text only", param))?.to_owned());
    }
    Ok(text.join("\n"))
}

impl Dialect for OpenAiResponses {
    fn name(&self) -> &'static str {
        "openai-responses"
    }

    fn request(&self, body: &[u8]) -> Result<Translated, DialectError> {
        let req = parse_object(body)?;
        if req.get("previous_response_id").is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "previous_response_id is not supported: Switchyard stores no conversations; send the whole \
                 conversation in input",
                "previous_response_id",
            ));
        }
        if req.get("conversation").is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "stored conversations are not supported: send the whole conversation in input",
                "conversation",
            ));
        }
        let model = req.get("model").and_then(Value::as_str).filter(|m| !m.is_empty());
        let model = model.ok_or_else(|| bad("model is required", "model"))?.to_owned();
        let mut system: Vec<String> = Vec::new();
        if let Some(instructions) = req.get("instructions").and_then(Value::as_str).filter(|i| !i.is_empty()) {
            system.push(instructions.to_owned());
        }
        let mut turns: Vec<Value> = Vec::new();
        match req.get("input") {
            Some(Value::String(text)) => push_turn(&mut turns, "user", vec![json!({"type": "text", "text": text})]),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let param = format!("input[{i}]");
                    match item["type"].as_str().unwrap_or("message") {
                        "message" => {
                            let blocks = input_content(&item["content"], &format!("{param}.content"))?;
                            match item["role"].as_str() {
                                Some("system" | "developer") => {
                                    let text = text_only(blocks, &param)?;
                                    if !text.is_empty() {
                                        system.push(text);
                                    }
                                }
                                Some(role @ ("user" | "assistant")) => push_turn(&mut turns, role, blocks),
                                _ => {
                                    return Err(bad(
                                        "a message needs role user, assistant, system or developer",
                                        &param,
                                    ));
                                }
                            }
                        }
                        "function_call" => {
                            let id =
                                item["call_id"].as_str().ok_or_else(|| bad("a function_call needs call_id", &param))?;
                            let name =
                                item["name"].as_str().ok_or_else(|| bad("a function_call needs name", &param))?;
                            let input = parse_arguments(item["arguments"].as_str(), &param)?;
                            push_turn(
                                &mut turns,
                                "assistant",
                                vec![json!({"type": "tool_use", "id": id, "name": name, "input": input})],
                            );
                        }
                        "function_call_output" => {
                            let id = item["call_id"]
                                .as_str()
                                .ok_or_else(|| bad("a function_call_output needs call_id", &param))?;
                            let output = match &item["output"] {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            let result = json!({"type": "tool_result", "tool_use_id": id, "content": [{"type": "text", "text": output}]});
                            push_turn(&mut turns, "user", vec![result]);
                        }
                        // Reasoning items cannot be sent back without their signature: context only.
                        "reasoning" => {}
                        other => return Err(bad(format!("input item type {other:?} is not supported"), &param)),
                    }
                }
            }
            _ => return Err(bad("input must be a string or a list of items", "input")),
        }
        if turns.is_empty() {
            return Err(bad("input needs at least one user or assistant message", "input"));
        }
        answered(&turns)?;
        let mut out = Map::new();
        out.insert("model".into(), json!(model));
        set_budget(
            &mut out,
            req.get("max_output_tokens").and_then(Value::as_u64).unwrap_or(self.settings.default_max_tokens),
            req.get("reasoning").and_then(|r| r.get("effort")).and_then(Value::as_str),
        );
        let format = req.get("text").and_then(|t| t.get("format"));
        let schema = format.map_or(&Value::Null, |f| &f["schema"]);
        if let Some(instruction) = format_instruction(format.and_then(|f| f["type"].as_str()), schema, "text.format")? {
            system.push(instruction);
        }
        if !system.is_empty() {
            out.insert("system".into(), json!(system.join("\n\n")));
        }
        out.insert("messages".into(), Value::Array(turns));
        for key in ["temperature", "top_p"] {
            if let Some(v) = req.get(key).filter(|v| v.is_number()) {
                out.insert(key.into(), v.clone());
            }
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
                let name = t["name"].as_str().ok_or_else(|| bad("a tool needs a name", &param))?;
                list.push(tool(name, t["description"].as_str(), t.get("parameters")));
            }
            out.insert("tools".into(), Value::Array(list));
            let parallel = req.get("parallel_tool_calls").and_then(Value::as_bool);
            out.insert("tool_choice".into(), tool_choice(req.get("tool_choice"), |c| c["name"].as_str(), parallel)?);
        }
        let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
        if stream {
            out.insert("stream".into(), json!(true));
        }
        let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| DialectError::new(e.to_string(), None))?;
        Ok(Translated { body, stream, model, include_usage: true })
    }

    fn answer(&self, anthropic: &[u8], request: &Translated) -> Result<Vec<u8>, DialectError> {
        let message: Value = serde_json::from_slice(anthropic)
            .map_err(|e| DialectError::new(format!("the upstream answer is not JSON: {e}"), None))?;
        let id = response_id(&message["id"]);
        let mut output = Vec::new();
        let mut text = String::new();
        for block in message["content"].as_array().into_iter().flatten() {
            match block["type"].as_str() {
                Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
                Some("tool_use") => output.push(function_call(block, "completed")),
                _ => {}
            }
        }
        if !text.is_empty() {
            output.insert(0, message_item(&id, &text, "completed"));
        }
        let response =
            response_object(&id, &model_of(&message, request), &message["stop_reason"], output, &message["usage"]);
        serde_json::to_vec(&response).map_err(|e| DialectError::new(e.to_string(), None))
    }

    fn stream(&self, request: &Translated) -> Box<dyn StreamTranslator> {
        Box::new(ResponseStream { model: request.model.clone(), ..ResponseStream::default() })
    }

    fn error(&self, status: u16, kind: &str, message: &str) -> Vec<u8> {
        super::openai::OpenAiChat::default().error(status, kind, message)
    }
}

fn response_id(message_id: &Value) -> String {
    format!("resp_{}", message_id.as_str().unwrap_or("switchyard").trim_start_matches("msg_"))
}

fn model_of(message: &Value, request: &Translated) -> String {
    message["model"].as_str().unwrap_or(&request.model).to_owned()
}

fn message_item(response_id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": format!("msg_{}", response_id.trim_start_matches("resp_")), "status": status,
        "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn function_call(block: &Value, status: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{}", block["id"].as_str().unwrap_or("")), "call_id": block["id"],
        "name": block["name"], "arguments": block["input"].to_string(), "status": status})
}

fn response_usage(u: &Value) -> Value {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let input = n("input_tokens") + cached + n("cache_creation_input_tokens");
    let output = n("output_tokens");
    json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": input + output})
}

fn response_object(id: &str, model: &str, stop: &Value, output: Vec<Value>, usage: &Value) -> Value {
    let incomplete = stop.as_str() == Some("max_tokens");
    json!({
        "id": id, "object": "response", "created_at": now_secs(), "model": model,
        "status": if incomplete { "incomplete" } else { "completed" },
        "incomplete_details": if incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "error": null, "output": output, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "usage": response_usage(usage),
    })
}

/// Anthropic's event stream as the Responses API's typed events.
#[derive(Default)]
struct ResponseStream {
    id: String,
    model: String,
    seq: u64,
    /// Output items so far (completed ones), and the one being written: (Anthropic block index, item).
    output: Vec<Value>,
    open: Option<(u64, Value)>,
    usage: Map<String, Value>,
    stop: Value,
    done: bool,
}

impl ResponseStream {
    fn emit(&mut self, kind: &str, mut data: Value) -> Vec<u8> {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        format!("event: {kind}\ndata: {data}\n\n").into_bytes()
    }

    fn close_open(&mut self) -> Vec<u8> {
        let Some((_, mut item)) = self.open.take() else { return Vec::new() };
        let index = self.output.len();
        let mut out = Vec::new();
        item["status"] = json!("completed");
        if item["type"] == "message" {
            let text = item["content"][0]["text"].clone();
            let item_id = item["id"].clone();
            out.extend(self.emit(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text}),
            ));
            out.extend(self.emit(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": item["content"][0]}),
            ));
        } else {
            out.extend(self.emit(
                "response.function_call_arguments.done",
                json!({"item_id": item["id"], "output_index": index, "arguments": item["arguments"]}),
            ));
        }
        out.extend(self.emit("response.output_item.done", json!({"output_index": index, "item": item})));
        self.output.push(item);
        out
    }

    fn object(&self, status: &str) -> Value {
        let mut r =
            response_object(&self.id, &self.model, &self.stop, self.output.clone(), &Value::Object(self.usage.clone()));
        if status != "final" {
            r["status"] = json!(status);
        }
        r
    }
}

impl StreamTranslator for ResponseStream {
    fn event(&mut self, _name: &str, data: &[u8]) -> Vec<u8> {
        let Ok(event) = serde_json::from_slice::<Value>(data) else { return Vec::new() };
        match event["type"].as_str() {
            Some("message_start") => {
                let message = &event["message"];
                self.id = response_id(&message["id"]);
                if let Some(m) = message["model"].as_str() {
                    self.model = m.to_owned();
                }
                if let Some(u) = message["usage"].as_object() {
                    self.usage.clone_from(u);
                }
                let created = self.object("in_progress");
                let mut out = self.emit("response.created", json!({"response": created}));
                let progress = self.object("in_progress");
                out.extend(self.emit("response.in_progress", json!({"response": progress})));
                out
            }
            Some("content_block_start") => {
                let block = &event["content_block"];
                let index = event["index"].as_u64().unwrap_or(0);
                let mut out = self.close_open();
                let output_index = self.output.len();
                match block["type"].as_str() {
                    Some("text") => {
                        let item = message_item(&format!("{}_{index}", self.id), "", "in_progress");
                        let item_id = item["id"].clone();
                        out.extend(
                            self.emit(
                                "response.output_item.added",
                                json!({"output_index": output_index, "item": item}),
                            ),
                        );
                        out.extend(self.emit(
                            "response.content_part.added",
                            json!({"item_id": item_id, "output_index": output_index,
                            "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
                        ));
                        self.open = Some((index, item));
                    }
                    Some("tool_use") => {
                        let mut item = function_call(block, "in_progress");
                        item["arguments"] = json!("");
                        out.extend(
                            self.emit(
                                "response.output_item.added",
                                json!({"output_index": output_index, "item": item}),
                            ),
                        );
                        self.open = Some((index, item));
                    }
                    _ => {}
                }
                out
            }
            Some("content_block_delta") => {
                let output_index = self.output.len();
                let delta = &event["delta"];
                let Some((_, item)) = &mut self.open else { return Vec::new() };
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        let piece = delta["text"].as_str().unwrap_or("").to_owned();
                        let text = format!("{}{piece}", item["content"][0]["text"].as_str().unwrap_or(""));
                        item["content"][0]["text"] = json!(text);
                        let item_id = item["id"].clone();
                        self.emit("response.output_text.delta", json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "delta": piece}))
                    }
                    Some("input_json_delta") => {
                        let piece = delta["partial_json"].as_str().unwrap_or("").to_owned();
                        let arguments = format!("{}{piece}", item["arguments"].as_str().unwrap_or(""));
                        item["arguments"] = json!(arguments);
                        let item_id = item["id"].clone();
                        self.emit(
                            "response.function_call_arguments.delta",
                            json!({"item_id": item_id, "output_index": output_index, "delta": piece}),
                        )
                    }
                    _ => Vec::new(),
                }
            }
            Some("content_block_stop") => self.close_open(),
            Some("message_delta") => {
                if let Some(u) = event["usage"].as_object() {
                    for (k, v) in u {
                        self.usage.insert(k.clone(), v.clone());
                    }
                }
                self.stop = event["delta"]["stop_reason"].clone();
                Vec::new()
            }
            Some("message_stop") => self.finish(false),
            Some("error") => {
                self.done = true;
                let error = &event["error"];
                self.emit("error", json!({"code": error["type"], "message": error["message"], "param": null}))
            }
            _ => Vec::new(),
        }
    }

    fn finish(&mut self, broken: bool) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        if broken {
            return self.emit(
                "error",
                json!({"code": "server_error", "message": "the upstream stream broke off", "param": null}),
            );
        }
        let mut out = self.close_open();
        let response = self.object("final");
        let kind = if response["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
        out.extend(self.emit(kind, json!({"response": response})));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn translate(req: Value) -> Result<Value, DialectError> {
        crate::dialect::translated(&OpenAiResponses::default(), &req)
    }

    #[test]
    fn responses_input_becomes_a_messages_request() {
        let out = translate(json!({
            "model": "claude-x", "instructions": "Be brief.", "max_output_tokens": 50, "reasoning": {"effort": "low"},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}, {"type": "input_image", "image_url": "https://example.com/a.png"}]},
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "4 C"},
            ],
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
        }))
        .unwrap();
        assert_eq!(out["system"], "Be brief.");
        assert_eq!(out["thinking"]["budget_tokens"], 1024);
        assert_eq!(out["max_tokens"], 1024 + 1024);
        assert_eq!(out["messages"][0]["content"][1]["source"]["url"], "https://example.com/a.png");
        assert_eq!(out["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(out["messages"][2]["content"][0]["tool_use_id"], "call_1");
        assert_eq!(out["tools"][0]["name"], "weather");
        assert_eq!(translate(json!({"model": "m", "input": "hi"})).unwrap()["messages"][0]["content"][0]["text"], "hi");
        let e = OpenAiResponses::default()
            .request(br#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#)
            .unwrap_err();
        assert!(e.message.contains("stores no conversations"), "{e}");
    }

    #[test]
    fn a_message_becomes_a_response_and_a_stream_its_events() {
        let t = Translated { body: vec![], stream: false, model: "m".into(), include_usage: true };
        let message = json!({"id": "msg_1", "model": "claude-x", "stop_reason": "tool_use",
            "content": [{"type": "text", "text": "Looking."}, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
            "usage": {"input_tokens": 5, "output_tokens": 3}});
        let r: Value =
            serde_json::from_slice(&OpenAiResponses::default().answer(message.to_string().as_bytes(), &t).unwrap())
                .unwrap();
        assert_eq!((r["object"].as_str(), r["status"].as_str()), (Some("response"), Some("completed")));
        assert_eq!(r["output"][0]["content"][0]["text"], "Looking.");
        assert_eq!(r["output"][1]["call_id"], "toolu_1");
        assert_eq!(r["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(r["usage"]["total_tokens"], 8);

        let mut s = OpenAiResponses::default().stream(&t);
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_2", "model": "claude-x", "usage": {"input_tokens": 5}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}}),
            json!({"type": "message_stop"}),
        ];
        let mut out = Vec::new();
        for e in &events {
            out.extend(s.event("", e.to_string().as_bytes()));
        }
        out.extend(s.finish(false));
        let text = String::from_utf8(out).unwrap();
        let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let data = text.lines().rfind(|l| l.starts_with("data: ")).unwrap();
        let last: Value = serde_json::from_str(data.trim_start_matches("data: ")).unwrap();
        assert_eq!(last["response"]["output"].as_array().unwrap().len(), 2);
        assert_eq!(last["response"]["usage"]["output_tokens"], 4);
    }
}
