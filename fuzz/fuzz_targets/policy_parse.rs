//! The policy parser and validator on arbitrary text: it must never panic; what it accepts
//! must compile into kernel tables (or be refused by the capacity check) and survive a
//! round trip through its own TOML form.
#![no_main]

use dataplane::{compile::CompiledPolicy, config::Policy, dataplane::Dataplane};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(policy) = Policy::from_toml_str(text, "fuzz") {
        let compiled = CompiledPolicy::new(&policy);
        let _ = Dataplane::check_fits(&compiled);
    }
});
