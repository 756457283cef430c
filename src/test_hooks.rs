//! Pauses that let the end-to-end tests watch states too brief to catch on a tiny model: a busy
//! server slot, a full queue, a model still loading, a chat answer interrupted mid-way; and one
//! fault, a bug made to happen, to check that the server survives it.
//!
//! One switch, `OWRUN_TEST_HOOKS`, read once with the other settings: a comma-separated list of
//! `name=number` among `step_delay_ms` (the server's model thread, before each batched step),
//! `load_delay_ms` (the server, before loading a model), `token_delay_ms` (chat, after each
//! token), `panic_token` (the server's model thread panics, outside any guard, once it has
//! given a slot to a prompt holding this token id) and `panic_loads` (the server's first this
//! many model loads panic, as a loader bug would). Unset, every hook is off. The values travel
//! to where they apply as fields of the settings; nothing else reads the environment for them.

use std::time::Duration;

use anyhow::{bail, Result};

pub const VARIABLE: &str = "OWRUN_TEST_HOOKS";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestHooks {
    pub step_delay: Option<Duration>,
    pub load_delay: Option<Duration>,
    pub token_delay: Option<Duration>,
    pub panic_token: Option<u32>,
    pub panic_loads: u32,
}

impl TestHooks {
    /// The hooks `spec` (the variable's value) switches on.
    pub fn parse(spec: &str) -> Result<TestHooks> {
        let mut hooks = TestHooks::default();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((name, value)) = item.split_once('=') else {
                bail!("{VARIABLE}: {item:?} is not name=number");
            };
            let Ok(n) = value.trim().parse::<u32>() else {
                bail!("{VARIABLE}: {item:?}: the value is a whole number");
            };
            let delay = (n > 0).then(|| Duration::from_millis(n.into()));
            match name.trim() {
                "step_delay_ms" => hooks.step_delay = delay,
                "load_delay_ms" => hooks.load_delay = delay,
                "token_delay_ms" => hooks.token_delay = delay,
                "panic_token" => hooks.panic_token = Some(n),
                "panic_loads" => hooks.panic_loads = n,
                other => bail!(
                    "{VARIABLE}: unknown hook {other:?} (step_delay_ms, load_delay_ms, \
                     token_delay_ms, panic_token, panic_loads)"
                ),
            }
        }
        Ok(hooks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_parse_by_name_and_refuse_what_they_do_not_know() {
        let h = TestHooks::parse("step_delay_ms=20, load_delay_ms=800").unwrap();
        assert_eq!(h.step_delay, Some(Duration::from_millis(20)));
        assert_eq!(h.load_delay, Some(Duration::from_millis(800)));
        assert_eq!(h.token_delay, None);
        assert_eq!(h.panic_token, None);
        assert_eq!(
            TestHooks::parse("panic_token=0").unwrap().panic_token,
            Some(0)
        );
        assert_eq!(TestHooks::parse("").unwrap(), TestHooks::default());
        assert_eq!(
            TestHooks::parse("token_delay_ms=0").unwrap(),
            TestHooks::default()
        );
        assert!(TestHooks::parse("step_delay=5").is_err());
        assert!(TestHooks::parse("step_delay_ms").is_err());
        assert!(TestHooks::parse("step_delay_ms=soon").is_err());
    }
}
