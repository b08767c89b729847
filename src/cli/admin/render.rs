//! The admin commands' readable output.

use super::*;
use crate::model::parse_time;
use serde_json::Value;
use std::fmt::Write as _;

/// The readable summary of a successful answer to `command`.
pub(crate) fn render(command: &AdminCommand, v: &Value) -> String {
    match command {
        AdminCommand::Status(_) => render_status(v),
        AdminCommand::Endpoints(command) => match command {
            EndpointsCommand::List { .. } => render_endpoints(v),
            EndpointsCommand::Add(_) => render_created(v),
            EndpointsCommand::Rm { id, .. } => {
                format!(
                    "deleted endpoint {}; its pending deliveries are cancelled\n",
                    clean(id)
                )
            }
            EndpointsCommand::Rotate { id, grace, .. } => render_rotated(id, *grace, v),
            EndpointsCommand::Test { id, event_type, .. } => {
                let event = text(&v["event_id"]);
                format!(
                    "sent a test {} event {event} to {}\nfollow it with: preflix-webhookd events show {event}\n",
                    clean(event_type.as_deref().unwrap_or("audit.completed")),
                    clean(id)
                )
            }
        },
        AdminCommand::Events(command) => match command {
            EventsCommand::Show { .. } => render_event(v),
            EventsCommand::Redeliver { id, endpoint, .. } => {
                let n = v["deliveries"].as_u64().unwrap_or(0);
                let to = endpoint
                    .as_deref()
                    .map(|e| format!(" to {}", clean(e)))
                    .unwrap_or_default();
                format!(
                    "queued {n} new {} of {}{to}\n",
                    plural(n, "delivery", "deliveries"),
                    clean(id)
                )
            }
        },
        AdminCommand::DeadLetters(command) => match command {
            DeadLettersCommand::List { .. } => render_dead_letters(v),
            DeadLettersCommand::Retry { id: Some(id), .. } => {
                format!(
                    "requeued {}: its delivery gets a fresh set of attempts\n",
                    clean(id)
                )
            }
            DeadLettersCommand::Retry { id: None, .. } => {
                let n = v["requeued"].as_u64().unwrap_or(0);
                format!(
                    "requeued {n} dead {}: each gets a fresh set of attempts\n",
                    plural(n, "letter", "letters")
                )
            }
        },
    }
}

/// The widest line the admin commands print: a terminal of 100 columns shows them whole.
pub(crate) const MAX_WIDTH: usize = 100;

pub(crate) fn render_status(v: &Value) -> String {
    render_status_at(v, now_ms())
}

/// `status` as of `now` (unix ms): times relative to it.
pub(crate) fn render_status_at(v: &Value, now: u64) -> String {
    let mut s = String::new();
    let q = &v["queue"];
    let _ = writeln!(
        s,
        "preflix-webhookd {}, up {}",
        text(&v["version"]),
        v["uptime_seconds"]
            .as_u64()
            .map(duration)
            .unwrap_or_else(|| "-".into())
    );
    let storage_bytes = v["storage"]["bytes"]
        .as_u64()
        .map(bytes)
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        s,
        "storage       {} ({storage_bytes})",
        text(&v["storage"]["dir"])
    );
    if let Some(fault) = v["storage"].get("fault") {
        // The store cannot be read or written (PostgreSQL down, disk full): the figures below are "-".
        let _ = writeln!(
            s,
            "STORAGE FAULT {}: {}",
            text(&fault["error"]),
            text(&fault["detail"])
        );
    }
    let oldest = match q["oldest_pending_age_seconds"].as_u64() {
        Some(age) => format!("oldest waiting {}", duration(age)),
        None => "nothing waiting".to_owned(),
    };
    let _ = writeln!(
        s,
        "queue         {} pending ({} retrying), {} in flight, {oldest}",
        text(&q["pending"]),
        text(&q["retrying"]),
        text(&q["in_flight"])
    );
    let _ = writeln!(s, "dead letters  {}", text(&v["dead_letters"]));
    let t = &v["totals"];
    let count = |v: &Value, one: &str, many: &str| match v.as_u64() {
        Some(n) => format!("{n} {}", plural(n, one, many)),
        None => format!("{} {many}", text(v)),
    };
    let _ = writeln!(
        s,
        "totals        {}, {} succeeded, {} failed",
        count(&t["events"], "event", "events"),
        count(&t["deliveries_succeeded"], "delivery", "deliveries"),
        count(&t["attempts_failed"], "attempt", "attempts")
    );
    let endpoints = v["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    s.push('\n');
    if endpoints.is_empty() {
        s.push_str("no endpoints registered\n");
        return fit(&s);
    }
    let rows: Vec<(Vec<String>, Option<String>)> = endpoints
        .iter()
        .map(|e| {
            let failures = e["consecutive_failures"].as_u64().unwrap_or(0);
            let health = match (text(&e["health"]).as_str(), since(&e["failing_since"], now)) {
                ("failing", Some(ago)) => format!("failing for {ago}"),
                (health, _) => health.to_owned(),
            };
            let pending = e["pending"].as_u64().unwrap_or(0);
            let next = match e["next_attempt_at"].as_str().and_then(parse_time) {
                Some(_) if pending == 0 => "-".to_owned(),
                Some(at) if at > now => format!("in {}", duration((at - now) / 1000)),
                Some(_) => "now".to_owned(),
                None => "-".to_owned(),
            };
            let note = (failures > 0).then(|| {
                let error = match (e["last_error"].as_str(), e["last_status_code"].as_u64()) {
                    (Some(error), _) => clean(error),
                    (None, Some(code)) => format!("HTTP {code}"),
                    (None, None) => "unknown".to_owned(),
                };
                let last = since(&e["last_failure_at"], now)
                    .map(|ago| format!(", the last {ago} ago"))
                    .unwrap_or_default();
                format!(
                    "    last error: {error} ({failures} {} in a row{last})",
                    plural(failures, "failure", "failures")
                )
            });
            let cells = vec![
                text(&e["id"]),
                shorten(
                    &format!("{}/{}", text(&e["partner_id"]), text(&e["environment"])),
                    28,
                ),
                health,
                pending.to_string(),
                next,
                text(&e["url"]),
            ];
            (cells, note)
        })
        .collect();
    table_with_notes(
        &mut s,
        &[
            "ENDPOINT",
            "PARTNER/ENV",
            "HEALTH",
            "PENDING",
            "NEXT",
            "URL",
        ],
        &rows,
    );
    fit(&s)
}

/// How long ago the time `v` (RFC 3339) was, as of `now`; `None` when `v` is not a time.
fn since(v: &Value, now: u64) -> Option<String> {
    let at = v.as_str().and_then(parse_time)?;
    Some(duration(now.saturating_sub(at) / 1000))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every line cut to [`MAX_WIDTH`] characters (ending with `…` when cut).
pub(crate) fn fit(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.lines() {
        out.push_str(&shorten(line, MAX_WIDTH));
        out.push('\n');
    }
    out
}

pub(crate) fn render_endpoints(v: &Value) -> String {
    let endpoints = v["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if endpoints.is_empty() {
        return "no endpoints\n".to_owned();
    }
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            let state = if e["enabled"].as_bool().unwrap_or(true) {
                "enabled".to_owned()
            } else if e["disabled_reason"].is_null() {
                "disabled".to_owned()
            } else {
                format!("disabled: {}", text(&e["disabled_reason"]))
            };
            let mut flags = Vec::new();
            if e["ordered"].as_bool() == Some(true) {
                flags.push("ordered".to_owned());
            }
            if let Some(n) = e["max_in_flight"].as_u64() {
                flags.push(format!("max {n}"));
            }
            vec![
                text(&e["id"]),
                format!("{}/{}", text(&e["partner_id"]), text(&e["environment"])),
                state,
                types(&e["event_types"]),
                flags.join(", "),
                text(&e["url"]),
            ]
        })
        .collect();
    let mut s = String::new();
    table(
        &mut s,
        &["ID", "PARTNER/ENV", "STATE", "TYPES", "DELIVERY", "URL"],
        &rows,
    );
    s
}

pub(crate) fn render_created(v: &Value) -> String {
    let mut s = String::new();
    let id = text(&v["id"]);
    let _ = writeln!(
        s,
        "created endpoint {id} for {}/{}",
        text(&v["partner_id"]),
        text(&v["environment"])
    );
    let _ = writeln!(s, "  url    {}", text(&v["url"]));
    let _ = writeln!(s, "  types  {}", types(&v["event_types"]));
    let _ = writeln!(s);
    let _ = writeln!(s, "secret: {}", text(&v["secret"]));
    let _ = writeln!(
        s,
        "Store this secret now and give it to the partner to verify signatures: this command does not show it again \
         (only GET /v1/endpoints/{id}/secret returns it)."
    );
    s
}

pub(crate) fn render_rotated(id: &str, grace: Option<u64>, v: &Value) -> String {
    let grace = match grace {
        Some(seconds) => duration(seconds),
        None => "the daemon's default grace period".to_owned(),
    };
    format!(
        "new secret for {}: {}\nStore it now and give it to the partner: it is not shown again. \
         Deliveries carry signatures under both the old and the new secret for {grace}.\n",
        clean(id),
        text(&v["secret"])
    )
}

pub(crate) fn render_event(v: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "event     {}", text(&v["id"]));
    let _ = writeln!(s, "type      {}", text(&v["type"]));
    let _ = writeln!(
        s,
        "partner   {}/{}",
        text(&v["partner_id"]),
        text(&v["environment"])
    );
    let _ = writeln!(s, "created   {}", text(&v["created_at"]));
    let _ = writeln!(s, "received  {}", text(&v["received_at"]));
    let data = clean(&v["data"].to_string());
    let data = if data.chars().count() > DATA_PREVIEW_CHARS {
        format!(
            "{} (cut; --json shows all)",
            shorten(&data, DATA_PREVIEW_CHARS)
        )
    } else {
        data
    };
    let _ = writeln!(s, "data      {data}");
    let deliveries = v["deliveries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let _ = writeln!(s);
    if deliveries.is_empty() {
        s.push_str("no deliveries: no enabled endpoint of this partner and environment subscribes to the type\n");
        return s;
    }
    let _ = writeln!(s, "deliveries: {}", deliveries.len());
    for d in deliveries {
        let status = text(&d["status"]);
        let next = match d["next_attempt_at"].as_str() {
            Some(at) if status == "pending" => format!(", next attempt {}", clean(at)),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "  {}  to {}  {status}{next}",
            text(&d["id"]),
            text(&d["endpoint_id"])
        );
        let attempts = d["attempts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for a in attempts {
            let outcome = match a["status_code"].as_u64() {
                Some(code) => format!("HTTP {code}"),
                None => format!(
                    "no response: {}",
                    shorten(&text(&a["error"]), SNIPPET_CHARS)
                ),
            };
            let mut line = format!(
                "    attempt {}  {}  {outcome}  {} ms",
                text(&a["n"]),
                text(&a["at"]),
                text(&a["duration_ms"])
            );
            if let Some(snippet) = a["response_snippet"]
                .as_str()
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
                let _ = write!(line, "  \"{}\"", shorten(&clean(snippet), SNIPPET_CHARS));
            }
            let _ = writeln!(s, "{line}");
        }
    }
    s
}

pub(crate) fn render_dead_letters(v: &Value) -> String {
    render_dead_letters_at(v, now_ms())
}

/// `dead-letters list` as of `now` (unix ms): one row per dead letter and a line with its event
/// type, why it died and its last error.
pub(crate) fn render_dead_letters_at(v: &Value, now: u64) -> String {
    let letters = v["dead_letters"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut s = String::new();
    if letters.is_empty() {
        s.push_str("no dead letters\n");
    } else {
        let rows: Vec<(Vec<String>, Option<String>)> = letters
            .iter()
            .map(|d| {
                let last = match (d["last_status_code"].as_u64(), d["last_error"].as_str()) {
                    (Some(code), _) => format!("HTTP {code}"),
                    (None, Some(error)) => clean(error),
                    (None, None) => "unknown".to_owned(),
                };
                let died = since(&d["dead_at"], now)
                    .map(|ago| format!("{ago} ago"))
                    .unwrap_or_else(|| text(&d["dead_at"]));
                let note = format!(
                    "    {}, {}; last error: {last}",
                    text(&d["event_type"]),
                    text(&d["reason"]).replace('_', " ")
                );
                let cells = vec![
                    text(&d["id"]),
                    shorten(&text(&d["event_id"]), 28),
                    text(&d["endpoint_id"]),
                    text(&d["attempts"]),
                    died,
                ];
                (cells, Some(note))
            })
            .collect();
        table_with_notes(
            &mut s,
            &["ID", "EVENT", "ENDPOINT", "ATTEMPTS", "DIED"],
            &rows,
        );
    }
    if let Some(next) = v["next"].as_str() {
        let _ = writeln!(s, "more follow: pass --after {}", clean(next));
    }
    fit(&s)
}

/// [`table`], with a line of notes under the rows that have one.
pub(crate) fn table_with_notes(
    s: &mut String,
    header: &[&str],
    rows: &[(Vec<String>, Option<String>)],
) {
    let cells: Vec<Vec<String>> = rows.iter().map(|(cells, _)| cells.clone()).collect();
    let mut lines = String::new();
    table(&mut lines, header, &cells);
    let mut lines = lines.lines();
    if let Some(head) = lines.next() {
        let _ = writeln!(s, "{head}");
    }
    for (line, (_, note)) in lines.zip(rows) {
        let _ = writeln!(s, "{line}");
        if let Some(note) = note {
            let _ = writeln!(s, "{note}");
        }
    }
}

/// Appends a table with columns padded to their widest cell (the last one is not padded).
pub(crate) fn table(s: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
}

/// A JSON value as a table cell: strings as they are (control characters escaped), null as `-`.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    }
}

/// A list of event types, comma-separated.
pub(crate) fn types(v: &Value) -> String {
    match v.as_array() {
        Some(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        None => text(v),
    }
}

/// Escapes control characters, so text from the daemon (a receiver's response, a description)
/// cannot move the cursor or change the terminal.
pub(crate) fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max` characters, ending with `…` when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

pub(crate) fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// Seconds as `45s`, `5m 3s`, `2h 5m`, `3d 4h` (`4m`, `2h` when the second unit is 0).
pub(crate) fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    let (big, small) = if d > 0 {
        ((d, "d"), (h, "h"))
    } else if h > 0 {
        ((h, "h"), (m, "m"))
    } else if m > 0 {
        ((m, "m"), (s, "s"))
    } else {
        return format!("{s}s");
    };
    if small.0 == 0 {
        format!("{}{}", big.0, big.1)
    } else {
        format!("{}{} {}{}", big.0, big.1, small.0, small.1)
    }
}

/// Bytes as `512 B`, `1.5 KiB`, `12.3 MiB`, ...
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
