//! `cargo xtask compare --baseline BIN`: this build's classify against another
//! build, in one run on the same nginx, at the fixed rate on kept-alive
//! connections. Rounds rotate the order of no agent, the baseline and this build,
//! so drift in the machine lands on all three alike. Then the BPF run time per
//! program for each build (statistics on for those runs only).
//!
//! For probe and agent changes before a full `cargo xtask bench`: the baseline is
//! a copy of `target/release/classify` built from the previous commit.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::bench::{classify_bin, median, one_run, program_times, triple, Env, Mode, Options};

#[derive(clap::Args)]
pub struct CompareOptions {
    /// Another build of `classify` (e.g. a copy of target/release/classify from
    /// the previous commit).
    #[arg(long)]
    pub baseline: PathBuf,
    /// Rounds at the fixed rate, each one run without classify, one with the
    /// baseline, one with this build.
    #[arg(long, default_value_t = 6)]
    pub rounds: usize,
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    #[arg(long, default_value_t = 4800)]
    pub rate: u32,
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Alternating pairs of BPF-time runs (each `seconds` long); their ratio
    /// current / baseline resolves probe changes the CPU rounds cannot.
    #[arg(long, default_value_t = 4)]
    pub bpf_pairs: usize,
}

pub fn run(c: &CompareOptions) -> Result<()> {
    let current = classify_bin();
    c.baseline
        .metadata()
        .with_context(|| format!("baseline {}", c.baseline.display()))?;
    let opts = Options {
        rounds: c.rounds,
        sat_rounds: 0,
        seconds: c.seconds,
        workers: vec![c.workers],
        rate: c.rate,
    };
    let env = Env::start(c.workers);
    let bins: [Option<&Path>; 3] = [None, Some(&c.baseline), Some(&current)];
    // Per round: the run without classify, with the baseline, with this build.
    let mut runs: Vec<[Value; 3]> = Vec::new();
    for r in 0..c.rounds {
        let mut round = [Value::Null, Value::Null, Value::Null];
        for k in 0..3 {
            let which = (r + k) % 3;
            round[which] = one_run(&env, Mode::FixedKeepalive, bins[which], &opts, &[])?;
        }
        let w = |i| us(&round, i, "nginx_workers");
        let a = |i| us(&round, i, "classify");
        eprintln!(
            "compare: round {}: worker µs/req none {:.2}, baseline {:.2}, current {:.2}; classify {:.2} / {:.2}",
            r + 1,
            w(0),
            w(1),
            w(2),
            a(1),
            a(2)
        );
        runs.push(round);
    }
    // Median over rounds of run `i` minus run `j`, for each party in `keys`.
    let diffs = |i: usize, j: usize, keys: &[&str]| {
        keys.iter()
            .map(|k| {
                let d = runs.iter().map(|r| us(r, i, k) - us(r, j, k)).collect();
                ((*k).to_owned(), triple(median(d)))
            })
            .collect::<serde_json::Map<_, _>>()
    };
    let parties = [
        "nginx_workers",
        "upstream",
        "load_generator",
        "classify",
        "all",
    ];
    let delta = json!({"baseline": diffs(1, 0, &parties), "current": diffs(2, 0, &parties)});
    let current_minus_baseline = diffs(2, 1, &["nginx_workers", "classify", "all"]);
    // Program times in pairs, the order flipped every pair.
    let mut programs: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
    for p in 0..c.bpf_pairs.max(1) {
        let order = if p % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let bin = if i == 0 {
                c.baseline.as_path()
            } else {
                current.as_path()
            };
            programs[i].push(program_times(&env, bin, &opts)?);
        }
    }
    let bpf_ns = |v: &Vec<Value>| {
        v.iter()
            .map(|p| p["ns_per_request"].as_f64().unwrap_or(0.0))
            .collect::<Vec<_>>()
    };
    let ratio = median(
        bpf_ns(&programs[1])
            .iter()
            .zip(bpf_ns(&programs[0]))
            .map(|(c, b)| c / b.max(1.0))
            .collect(),
    );
    let result = json!({
        "bpf_ratio_current_over_baseline": triple(ratio),
        "rate": c.rate,
        "seconds": c.seconds,
        "workers": c.workers,
        "rounds": c.rounds,
        "delta_vs_no_agent_us_per_request": delta,
        "current_minus_baseline_us_per_request": current_minus_baseline,
        "bpf_ns_per_request": {"baseline": bpf_ns(&programs[0]), "current": bpf_ns(&programs[1])},
        "programs": {"baseline": programs[0], "current": programs[1]},
    });
    let out = crate::workspace_root().join("target/bench/compare.json");
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, serde_json::to_string_pretty(&result)?)?;
    println!("{}", summary(&result));
    eprintln!("compare: wrote {}", out.display());
    Ok(())
}

/// CPU µs per request of one party in run `i` of a round ("all": every party).
fn us(round: &[Value; 3], i: usize, party: &str) -> f64 {
    const PARTIES: [&str; 4] = ["nginx_workers", "upstream", "load_generator", "classify"];
    let one = |k: &str| round[i]["us_per_request"][k].as_f64().unwrap_or(0.0);
    if party == "all" {
        PARTIES.iter().map(|k| one(k)).sum()
    } else {
        one(party)
    }
}

fn summary(r: &Value) -> String {
    let t = |v: &Value| {
        format!(
            "{:+.2} [{:+.2}..{:+.2}]",
            v["median"].as_f64().unwrap_or(0.0),
            v["min"].as_f64().unwrap_or(0.0),
            v["max"].as_f64().unwrap_or(0.0)
        )
    };
    let d = &r["delta_vs_no_agent_us_per_request"];
    let mut s = String::new();
    s += "µs/req vs no agent      baseline                 current\n";
    for k in [
        "nginx_workers",
        "upstream",
        "load_generator",
        "classify",
        "all",
    ] {
        s += &format!(
            "{k:<22} {:<24} {}\n",
            t(&d["baseline"][k]),
            t(&d["current"][k])
        );
    }
    let c = &r["current_minus_baseline_us_per_request"];
    s += &format!(
        "current − baseline: worker {}, classify {}, all {}\n",
        t(&c["nginx_workers"]),
        t(&c["classify"]),
        t(&c["all"])
    );
    let ns = |v: &Value| {
        median(
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect(),
        )
    };
    let (b, c) = (
        ns(&r["bpf_ns_per_request"]["baseline"]),
        ns(&r["bpf_ns_per_request"]["current"]),
    );
    let q = &r["bpf_ratio_current_over_baseline"];
    s += &format!(
        "BPF ns/req (median [min..max] of {} runs): baseline {:.0} [{:.0}..{:.0}], current {:.0} [{:.0}..{:.0}]; paired ratio current/baseline {:.3} [{:.3}..{:.3}]\n",
        r["bpf_ns_per_request"]["baseline"].as_array().map_or(0, |a| a.len()),
        b.0, b.1, b.2, c.0, c.1, c.2,
        q["median"].as_f64().unwrap_or(0.0),
        q["min"].as_f64().unwrap_or(0.0),
        q["max"].as_f64().unwrap_or(0.0)
    );
    for (name, runs) in [
        ("baseline", &r["programs"]["baseline"]),
        ("current", &r["programs"]["current"]),
    ] {
        if let Some(first) = runs.as_array().and_then(|a| a.first()) {
            for p in first["programs"].as_array().into_iter().flatten() {
                s += &format!(
                    "  {name:<8} {:<22} {:>6.0} ns × {:.2}\n",
                    p["program"].as_str().unwrap_or(""),
                    p["ns_per_run"].as_f64().unwrap_or(0.0),
                    p["runs_per_request"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    s
}
