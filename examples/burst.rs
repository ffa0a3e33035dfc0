//! `make bench`'s burst client: N keep-alive connections opened at once and driven by one
//! event loop (poll(2)), each sending `GET PATH` as soon as it is connected and again as soon
//! as its previous answer arrived, for S seconds (tests/it/util/burst.rs, shared with the
//! integration tests). Compiled Rust rather than a script, so that at 256 connections the
//! client's own work (a few hundred nanoseconds an answer) does not delay the answers it
//! times.
//!
//! usage: burst HOST:PORT CONNECTIONS SECONDS [PATH]
//! Prints one JSON object: each connection's first answer from the start of the burst
//! (slowest, median), connections never answered, answers, answers per connection (min,
//! max), closes by the server (answers saying `Connection: close` and closed connections) per
//! second, errors.

#[path = "../tests/it/util/burst.rs"]
#[allow(dead_code)]
mod burst;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: burst HOST:PORT CONNECTIONS SECONDS [PATH]";
    let (Some(addr), Some(n), Some(secs)) = (
        args.first().and_then(|a| a.parse().ok()),
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
        args.get(2).and_then(|a| a.parse::<f64>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let path = args.get(3).map_or("/livez", String::as_str);
    let out = burst::run(addr, n, path, Duration::from_secs_f64(secs), |_| false);
    let mut firsts: Vec<f64> = out
        .first
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    firsts.sort_by(f64::total_cmp);
    let pick = |i: usize| firsts.get(i).map_or("null".into(), |v| format!("{v:.1}"));
    let secs = out.elapsed.as_secs_f64();
    println!(
        "{{\"connections\": {n}, \"seconds\": {secs:.2}, \"first_answer_slowest_ms\": {}, \
         \"first_answer_median_ms\": {}, \"never_answered\": {}, \"answers\": {}, \
         \"answers_per_connection_min\": {}, \"answers_per_connection_max\": {}, \
         \"reconnects_per_s\": {:.1}, \"errors\": {}}}",
        pick(firsts.len().saturating_sub(1)),
        pick(firsts.len() / 2),
        out.unanswered(),
        out.answers.iter().sum::<u32>(),
        out.answers.iter().min().unwrap_or(&0),
        out.answers.iter().max().unwrap_or(&0),
        out.closed_by_server as f64 / secs,
        out.errors.len()
    );
}
