//! Host and kernel agree on at least 100 000 frames: verdict, class and reason
//! (`dataplane_lab::differential`; the bench runs a million).

use dataplane_lab::{
    differential::{check, frames, POLICY},
    kernel::load_policy,
};

const LEAST_FRAMES: usize = 100_000;

#[test]
fn host_and_kernel_agree_on_verdict_class_and_reason() {
    let (dp, policy) = load_policy(POLICY);
    let frames = frames(LEAST_FRAMES);
    assert!(frames.len() >= LEAST_FRAMES, "only {} frames", frames.len());
    let agreement = check(&dp, &policy, &frames).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{} frames: {} classified alike, {} refused for the same reason",
        frames.len(),
        agreement.classified,
        agreement.refused
    );
    assert!(
        agreement.classified >= 10_000 && agreement.refused >= 10_000,
        "{agreement:?}"
    );
}
