//! Host and kernel agreement: the same frames (every corpus frame truncated at every byte,
//! mutations of the corpus, random bytes) through the host parser and first-match classifier
//! and through the real program; verdict, class and reason must be identical
//! (`dataplane_lab::differential`, also run on 100 000 frames by the test command).

use std::time::Instant;

use anyhow::{Context, Result};
use dataplane::{compile::CompiledPolicy, config::Policy, dataplane::Dataplane};
use dataplane_lab::differential::{check, frames, POLICY};
use indicatif::ProgressBar;

use crate::{
    report::{Section, Table, Target, Verdict},
    Mode, Settings,
};

pub fn run(settings: &Settings, bar: &ProgressBar) -> Result<Section> {
    let count = match settings.mode {
        Mode::Full => 1_000_000,
        Mode::Quick => 100_000,
        Mode::Smoke => 20_000,
    };
    bar.set_length(1);
    bar.set_message(format!("{count} frames"));
    let policy = Policy::from_toml_str(POLICY, "agreement policy")?;
    let mut dp = Dataplane::load()?;
    dp.apply(&CompiledPolicy::new(&policy))?;
    let frames = frames(count);
    let started = Instant::now();
    let outcome = check(&dp, &policy, &frames);
    let secs = started.elapsed().as_secs_f64();
    bar.inc(1);
    let mut table = Table::new(
        "Frames through the host reference and the kernel",
        &[
            "frames",
            "classified alike",
            "refused alike",
            "first disagreement",
            "time",
        ],
    );
    let (measured, verdict, first) = match &outcome {
        Ok(a) => (
            format!("{} of {} frames", a.classified + a.refused, frames.len()),
            Verdict::of(a.classified + a.refused == frames.len()),
            "none".to_string(),
        ),
        Err(e) => ("a disagreement".into(), Verdict::of(false), e.clone()),
    };
    let (classified, refused) = outcome
        .as_ref()
        .map_or((0, 0), |a| (a.classified, a.refused));
    table.row(vec![
        frames.len().to_string(),
        classified.to_string(),
        refused.to_string(),
        first,
        format!("{secs:.1} s"),
    ]);
    let mut section = Section::new("Host and kernel agreement");
    section.method = vec![
        "Every corpus frame truncated at every byte, random 1–4-byte mutations of the corpus \
         (past the MAC addresses) and random bytes behind an IPv4 or IPv6 EtherType, through \
         `packet::parse` and `classify::first_match` on the host and through the loaded \
         program (BPF_PROG_TEST_RUN, loopback, a policy with rules on every field and classes \
         that pass every colour). Per frame: the verdict, the class whose counter rose and the \
         reason counted must be what the host says."
            .into(),
    ];
    section.tables.push(table);
    section.caveats = vec![
        "The frames come in on loopback, an interface without forwarding: forwarding's \
         verdicts (redirect, or the kernel for what the route lookup cannot finish) are \
         covered by the forwarding tests, not here. Classes pass every colour, so policing \
         verdicts (which depend on time) are not compared."
            .into(),
    ];
    section.targets = vec![Target {
        name: "Host and kernel agree (verdict, class, reason)".into(),
        goal: "every frame, ≥ 1 000 000 frames".into(),
        measured,
        verdict,
        note: String::new(),
    }];
    outcome
        .map(|_| ())
        .map_err(anyhow::Error::msg)
        .context("host and kernel disagree")?;
    Ok(section)
}
