//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template` in a GGUF, `chat_template` in
//! `tokenizer_config.json`) rendered with `minijinja` the way Hugging Face transformers renders it.
//!
//! transformers renders with Python's Jinja2 (`trim_blocks` and `lstrip_blocks` on, loop controls enabled) and
//! passes `messages`, `add_generation_prompt`, `bos_token`, `eos_token` plus the helpers `raise_exception` and
//! `strftime_now`, and a `tojson` that is Python's `json.dumps`. Templates are written in Python's dialect
//! (`content.strip()`, `dict.items()`), so Python's string/dict/list methods are provided by
//! `minijinja-contrib`'s pycompat layer. Matching all of this matters: one stray newline in the prompt changes
//! the tokens the model sees.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// One turn of a conversation, as chat templates expect it (`message['role']`, `message['content']`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may accept others, e.g. `tool`).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Name under which the single template is stored in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template together with the special-token strings it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token` / `eos_token` are the strings exposed to the template as `bos_token` and
    /// `eos_token` (an absent one renders as the empty string, as in transformers).
    ///
    /// A template that does not compile is a [`ModelError::ChatTemplate`] carrying minijinja's message.
    pub fn new(source: impl Into<String>, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let source = source.into();
        let mut env = Environment::new();
        // Jinja2 settings transformers uses (`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`);
        // Jinja2's default of dropping a single trailing newline is also minijinja's default.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| ModelError::ChatTemplate(format!("the template does not compile: {}", error_chain(&e))))?;
        Ok(ChatTemplate {
            source,
            bos_token: bos_token.map(str::to_owned),
            eos_token: eos_token.map(str::to_owned),
            env,
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation. With `add_generation_prompt` the template appends the header that starts the
    /// assistant's turn (e.g. `<|im_start|>assistant\n`), so that sampling continues as the assistant.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &BTreeMap::new())
    }

    /// [`render`](Self::render) with extra template variables (e.g. `enable_thinking` for Qwen3 templates, or
    /// `tools`). An extra variable never overrides `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.
    pub(crate) fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &BTreeMap<String, serde_json::Value>,
    ) -> Result<String> {
        let mut vars: BTreeMap<String, Value> =
            extra.iter().map(|(k, v)| (k.clone(), Value::from_serialize(v))).collect();
        vars.insert("messages".into(), Value::from_serialize(messages));
        vars.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        vars.insert("bos_token".into(), Value::from(self.bos_token.clone().unwrap_or_default()));
        vars.insert("eos_token".into(), Value::from(self.eos_token.clone().unwrap_or_default()));
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| ModelError::ChatTemplate(error_chain(&e)))?;
        template
            .render(Value::from(vars))
            .map_err(|e| ModelError::ChatTemplate(format!("rendering failed: {}", error_chain(&e))))
    }
}

/// minijinja's message plus its sources (a failing filter wraps the underlying error).
fn error_chain(error: &Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        let _ = write!(message, ": {inner}");
        source = inner.source();
    }
    message
}

/// `raise_exception(message)`: templates call it to reject a conversation (e.g. roles that do not alternate).
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("the template raised an exception: {message}")))
}

/// `strftime_now(format)`: the current UTC date/time formatted like Python's `strftime` (Llama 3.x templates put
/// today's date into the system prompt). Supports `%Y %y %m %d %e %H %I %M %S %p %B %b %A %a %j %%`.
fn strftime_now(format: String) -> std::result::Result<Value, Error> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: clock before 1970: {e}")))?
        .as_secs() as i64;
    format_utc(seconds, &format).map(Value::from)
}

/// Formats `seconds` since the Unix epoch (UTC) with a strftime pattern.
fn format_utc(seconds: i64, format: &str) -> std::result::Result<String, Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(code) = chars.next() else {
            return Err(Error::new(ErrorKind::InvalidOperation, "strftime_now: the format ends with a lone '%'"));
        };
        let _ = match code {
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'm' => write!(out, "{month:02}"),
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:>2}"),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{hour12:02}"),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'B' => write!(out, "{}", MONTHS[month as usize - 1]),
            'b' => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
            'A' => write!(out, "{}", WEEKDAYS[weekday]),
            'a' => write!(out, "{}", &WEEKDAYS[weekday][..3]),
            'j' => write!(out, "{day_of_year:03}"),
            '%' => write!(out, "%"),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported format code %{other}"),
                ))
            }
        };
    }
    Ok(out)
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a 400-year era's years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) -> days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `value | tojson(indent=None, sort_keys=False, ensure_ascii=False)` as transformers defines it: Python's
/// `json.dumps`, whose separators are `", "` and `": "` (`","` between items when indenting). minijinja's own
/// `tojson` writes compact JSON and HTML-escapes `<`, `>`, `&`, `'`, which would change tool-call prompts.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<Value> = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let style =
        JsonStyle { indent, sort_keys: sort_keys.unwrap_or(false), ensure_ascii: ensure_ascii.unwrap_or(false) };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(out: &mut String, value: &Value, style: &JsonStyle, depth: usize) -> std::result::Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                out.push_str(&value.to_string());
            } else {
                let x = f64::try_from(value.clone())?;
                match serde_json::Number::from_f64(x) {
                    Some(n) => out.push_str(&n.to_string()),
                    // Python writes these non-standard literals.
                    None if x.is_nan() => out.push_str("NaN"),
                    None if x > 0.0 => out.push_str("Infinity"),
                    None => out.push_str("-Infinity"),
                }
            }
        }
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), style, depth, |out, i| {
                write_json(out, &items[i], style, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key.as_str().map(str::to_owned).unwrap_or_else(|| key.to_string()), item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', entries.len(), style, depth, |out, i| {
                write_json_string(out, &entries[i].0, style.ensure_ascii);
                out.push_str(": ");
                write_json(out, &entries[i].1, style, depth + 1)
            })?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialise a value of kind {kind}"),
            ))
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    style: &JsonStyle,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> std::result::Result<(), Error>,
) -> std::result::Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        match style.indent {
            Some(width) => {
                if i > 0 {
                    out.push(',');
                }
                out.push('\n');
                out.push_str(&" ".repeat(width * (depth + 1)));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        item(out, i)?;
    }
    if let Some(width) = style.indent {
        out.push('\n');
        out.push_str(&" ".repeat(width * depth));
    }
    out.push(close);
    Ok(())
}

/// A JSON string literal with Python's escapes (`\uXXXX` for other control characters, and for every
/// non-ASCII character when `ensure_ascii`, as UTF-16 surrogate pairs beyond the BMP).
fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + \
                          message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
                          {{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_and_without_generation_prompt() {
        let t = ChatTemplate::new(CHATML, None, None).unwrap();
        let messages = [ChatMessage::system("Be brief."), ChatMessage::user("Hi")];
        let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n";
        assert_eq!(t.render(&messages, false).unwrap(), expected);
        assert_eq!(t.render(&messages, true).unwrap(), format!("{expected}<|im_start|>assistant\n"));
    }

    #[test]
    fn block_whitespace_is_trimmed_like_transformers() {
        // With trim_blocks/lstrip_blocks the indentation and newlines around block tags vanish.
        let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(source, None, None).unwrap();
        assert_eq!(t.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false).unwrap(), "[a]\n[b]\n");
    }

    #[test]
    fn python_methods_special_tokens_and_loop_controls_work() {
        let source = "{{ bos_token }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}\
                      {{ m.content.strip().upper() }}{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(source, Some("<s>"), Some("</s>")).unwrap();
        let out = t.render(&[ChatMessage::user("  hi  "), ChatMessage::user("ignored")], false).unwrap();
        assert_eq!(out, "<s>HI</s>");
    }

    #[test]
    fn raise_exception_becomes_a_chat_template_error_with_the_message() {
        let source =
            "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}\
                      {% endif %}ok";
        let t = ChatTemplate::new(source, None, None).unwrap();
        assert_eq!(t.render(&[ChatMessage::user("x")], false).unwrap(), "ok");
        match t.render(&[ChatMessage::assistant("x")], false) {
            Err(ModelError::ChatTemplate(msg)) => {
                assert!(msg.contains("first message must be from the user"), "{msg}")
            }
            other => panic!("expected a chat template error, got {other:?}"),
        }
    }

    #[test]
    fn a_template_that_does_not_compile_is_a_chat_template_error() {
        match ChatTemplate::new("{% for m in messages %}no end", None, None) {
            Err(ModelError::ChatTemplate(msg)) => assert!(msg.contains("does not compile"), "{msg}"),
            other => panic!("expected a chat template error, got {other:?}"),
        }
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new("{{ extra | tojson }}|{{ extra | tojson(indent=2) }}", None, None).unwrap();
        let extra: BTreeMap<String, serde_json::Value> =
            [("extra".to_string(), serde_json::json!({"a": [1, 2.5, "x<y>&'é\n"], "b": {}, "c": null, "d": true}))]
                .into();
        let out = t.render_with(&[], false, &extra).unwrap();
        // The expected strings are what Python 3 prints for json.dumps(value, ensure_ascii=False) and
        // json.dumps(value, ensure_ascii=False, indent=2).
        let compact = r#"{"a": [1, 2.5, "x<y>&'é\n"], "b": {}, "c": null, "d": true}"#;
        let pretty = "{\n  \"a\": [\n    1,\n    2.5,\n    \"x<y>&'é\\n\"\n  ],\n  \"b\": {},\n  \"c\": null,\n  \"d\": true\n}";
        assert_eq!(out, format!("{compact}|{pretty}"));
    }

    #[test]
    fn strftime_formats_known_instants() {
        // 2024-02-29T13:05:09Z, a Thursday, day 60 of a leap year.
        let t = 1_709_211_909;
        assert_eq!(format_utc(t, "%Y-%m-%d %H:%M:%S").unwrap(), "2024-02-29 13:05:09");
        assert_eq!(
            format_utc(t, "%d %b %Y, %A (%a) %B %j %I%p %y %%").unwrap(),
            "29 Feb 2024, Thursday (Thu) February 060 01PM 24 %"
        );
        assert_eq!(format_utc(0, "%Y-%m-%d %A").unwrap(), "1970-01-01 Thursday");
        assert!(format_utc(0, "%Q").is_err());
        for days in [-800_000i64, -1, 0, 59, 365, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn strftime_now_is_callable_from_a_template() {
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).unwrap();
        let year: i64 = t.render(&[], false).unwrap().parse().unwrap();
        assert!(year >= 2024);
    }
}
