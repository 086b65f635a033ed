//! One JSON event per line on stdout, ending with a `result` event.

use std::io::Write;

use serde_json::json;

use super::{Outcome, Reporter, Stream, Transfer};

pub struct Json;

impl Json {
    fn emit(&self, value: serde_json::Value) {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &value);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

impl Reporter for Json {
    fn step(&self, machine: &str, step: &str) {
        self.emit(json!({ "event": "step", "machine": machine, "step": step }));
    }

    fn line(&self, machine: &str, stream: Stream, text: &str) {
        self.emit(json!({ "event": "output", "machine": machine, "stream": stream, "line": text }));
    }

    fn finished(&self, machine: &str, outcome: &Outcome) {
        let mut v = serde_json::to_value(outcome).expect("outcome serializes");
        v["event"] = json!("finished");
        v["machine"] = json!(machine);
        self.emit(v);
    }

    fn note(&self, text: &str) {
        self.emit(json!({ "event": "note", "message": text }));
    }

    fn transfer(&self, what: &str, total: Option<u64>) -> Box<dyn Transfer> {
        self.emit(json!({ "event": "download", "url": what, "total": total }));
        Box::new(JsonTransfer {
            url: what.to_owned(),
            done: Default::default(),
        })
    }

    fn result(&self, ok: bool, outcomes: &[(String, Outcome)]) {
        let machines: serde_json::Map<String, serde_json::Value> = outcomes
            .iter()
            .map(|(m, o)| {
                (
                    m.clone(),
                    serde_json::to_value(o).expect("outcome serializes"),
                )
            })
            .collect();
        self.emit(json!({ "event": "result", "ok": ok, "machines": machines }));
    }
}

struct JsonTransfer {
    url: String,
    done: std::sync::atomic::AtomicU64,
}

impl Transfer for JsonTransfer {
    fn set(&self, done: u64) {
        self.done.store(done, std::sync::atomic::Ordering::Relaxed);
    }

    fn finish(&self) {
        let bytes = self.done.load(std::sync::atomic::Ordering::Relaxed);
        Json.emit(json!({ "event": "downloaded", "url": self.url, "bytes": bytes }));
    }
}
