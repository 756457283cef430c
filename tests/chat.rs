//! `owrun chat` driven as a user would: in a pseudo-terminal (expectrl), and with piped stdin.

mod support;

use std::time::Duration;

use expectrl::{ControlCode, Expect, Session};
use support::Sandbox;

/// The built-in model, by its registry name: run from the binary.
fn stories() -> String {
    "stories260k".to_string()
}

/// `owrun chat` on a pseudo-terminal with the sandbox's environment.
fn spawn_chat(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> expectrl::session::OsSession {
    let mut cmd = sb.program(env!("CARGO_BIN_EXE_owrun"));
    cmd.arg("chat").args(args).current_dir(sb.dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("NO_COLOR", "1");
    let mut s = Session::spawn(cmd).expect("spawn owrun chat on a pty");
    s.set_expect_timeout(Some(Duration::from_secs(60)));
    s.expect("Ctrl-D to leave").unwrap();
    s.expect(">>> ").unwrap();
    s
}

/// Type a line, wait for `reply`, then for the next prompt (a line editor drops what is typed
/// before it is ready, so nothing is typed ahead).
fn say(s: &mut expectrl::session::OsSession, line: &str, reply: &str) {
    s.send_line(line).unwrap();
    s.expect(reply)
        .unwrap_or_else(|e| panic!("{line:?}: no {reply:?}: {e}"));
    s.expect(">>> ").unwrap();
}

fn first_answer(m: &str, prompt: &str, n: &str) -> String {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let r = sb.run(&["run", m, prompt, "-t", "0", "-n", n]);
    r.ok();
    r.stdout
}

#[test]
fn a_conversation_in_a_terminal() {
    let m = stories();
    let sb = Sandbox::new("http://127.0.0.1:9");
    let mut s = spawn_chat(&sb, &[&m, "-t", "0", "-n", "20"], &[]);

    // Turn one: the same answer `owrun run` gives.
    let expected = first_answer(&m, "Once upon a time", "20");
    s.send_line("Once upon a time").unwrap();
    s.expect(expected.as_str()).unwrap();
    s.expect(">>> ").unwrap();

    // Turn two reuses the cache: the 5 prompt tokens and the 19 answer tokens that were fed
    // (the 20th was sampled, never fed) are kept; only the rest is fed.
    say(&mut s, "The dog", "\n");
    say(&mut s, "/stats", "(24 reused from the cache)");

    // Slash commands (each answer is read up to the next prompt).
    for (cmd, reply) in [
        ("/nope", "unknown command /nope: /help lists the commands"),
        ("/set temperature hot", "not a valid value"),
        ("/show", "MIT License (mit)"),
        ("/help", "/save FILE"),
    ] {
        say(&mut s, cmd, reply);
    }

    // A multi-line message is one message. (Each line waits for its prompt: like any line
    // editor, rustyline drops what is typed before it is ready.)
    for line in ["\"\"\"", "Once upon", "a time"] {
        s.send_line(line).unwrap();
        s.expect("... ").unwrap();
    }
    s.send_line("\"\"\"").unwrap();
    s.expect(">>> ").unwrap();
    say(&mut s, "/save conv.json", "(saved 6 messages");

    // Ctrl-C at the prompt explains how to leave; Ctrl-D leaves.
    s.send(ControlCode::EndOfText).unwrap();
    s.expect("Ctrl-D or /exit leaves the chat").unwrap();
    s.expect(">>> ").unwrap();
    s.send(ControlCode::EndOfTransmission).unwrap();
    s.expect(expectrl::Eof).unwrap();
    let status = s.get_process().wait().unwrap();
    assert!(
        matches!(status, expectrl::process::unix::WaitStatus::Exited(_, 0)),
        "{status:?}"
    );

    // The history was kept.
    let saved = std::fs::read_to_string(sb.dir.path().join("conv.json")).unwrap();
    assert!(saved.contains("Once upon\\na time"), "{saved}");
    let history = std::fs::read_to_string(sb.owrun_home().join("chat_history")).unwrap();
    assert!(
        history.contains("Once upon a time") && history.contains("/stats"),
        "{history}"
    );
}

#[test]
fn ctrl_c_stops_an_answer_and_keeps_it() {
    let m = stories();
    let sb = Sandbox::new("http://127.0.0.1:9");
    let mut s = spawn_chat(
        &sb,
        &[&m, "-t", "0", "-n", "300", "--no-history"],
        &[("OWRUN_TEST_HOOKS", "token_delay_ms=30")],
    );
    s.send_line("Once upon a time").unwrap();
    s.expect("there was").unwrap();
    s.send(ControlCode::EndOfText).unwrap();
    s.expect("(interrupted)").unwrap();
    s.expect(">>> ").unwrap();

    // The partial answer stayed in the conversation: it is saved with the rest.
    let file = sb.dir.path().join("conv.json");
    say(
        &mut s,
        &format!("/save {}", file.display()),
        "(saved 2 messages",
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let answer = saved[1]["content"].as_str().unwrap();
    assert_eq!(saved[1]["role"], "assistant");
    assert!(answer.starts_with(", there was"), "{answer}");
    let full = first_answer(&m, "Once upon a time", "300");
    assert!(
        answer.len() < full.len(),
        "the answer was not cut: {answer}"
    );

    // The chat goes on.
    say(&mut s, "/set max-tokens 5", "(max-tokens = 5)");
    say(&mut s, "The dog", "\n");
    s.send_line("/exit").unwrap();
    s.expect(expectrl::Eof).unwrap();
    assert!(
        !sb.owrun_home().join("chat_history").exists(),
        "--no-history wrote history"
    );
}

#[test]
fn save_clear_load_and_continue() {
    let m = stories();
    let sb = Sandbox::new("http://127.0.0.1:9");
    let file = sb.dir.path().join("conv.json");
    let mut s = spawn_chat(
        &sb,
        &[&m, "-t", "0", "-n", "10", "--system", "Stories."],
        &[],
    );
    say(&mut s, "Once upon a time", "\n");
    say(
        &mut s,
        &format!("/save {}", file.display()),
        "(saved 3 messages",
    );
    say(&mut s, "/clear", "(new conversation)");
    say(
        &mut s,
        &format!("/load {}", file.display()),
        "(loaded 3 messages",
    );
    say(&mut s, "The dog", "\n");
    // After a load the conversation is fed again from the start.
    say(&mut s, "/stats", "(0 reused from the cache)");
    s.send_line("/exit").unwrap();
    s.expect(expectrl::Eof).unwrap();

    // The saved file is what `owrun run --messages` reads.
    let r = sb.run(&[
        "run",
        &m,
        "--messages",
        file.to_str().unwrap(),
        "The dog",
        "-t",
        "0",
        "-n",
        "3",
    ]);
    r.ok();
}

fn chat_piped(sb: &Sandbox, args: &[&str], input: &str) -> support::Run {
    let mut all = vec!["chat"];
    all.extend_from_slice(args);
    sb.run_with_stdin(&all, input)
}

#[test]
fn piped_stdin_answers_each_line_and_prints_only_answers() {
    let m = stories();
    let sb = Sandbox::new("http://127.0.0.1:9");
    let r = chat_piped(
        &sb,
        &[&m, "-t", "0", "-n", "20"],
        "Once upon a time\n\nThe dog\n",
    );
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert_eq!(lines[0], first_answer(&m, "Once upon a time", "20"));
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn a_conversation_longer_than_the_context_drops_its_oldest_turns_once_told() {
    let m = stories();
    let sb = Sandbox::new("http://127.0.0.1:9");
    // stories260K has a 512-token context; each line is about 150 tokens.
    let line = "the little dog ran to the big park and played with a red ball. ".repeat(10);
    let input = format!("{line}\n{line}\n{line}\n{line}\n{line}\n");
    let r = chat_piped(&sb, &[&m, "-t", "0", "-n", "30"], &input);
    r.ok();
    assert_eq!(
        r.stdout.lines().count(),
        5,
        "every line got an answer: {}",
        r.stdout
    );
    assert_eq!(
        r.stderr.matches("dropping the oldest turns").count(),
        1,
        "{}",
        r.stderr
    );
    // A single message longer than the context is refused with the numbers, not a crash.
    let huge = "the dog ran. ".repeat(300);
    let r = chat_piped(
        &sb,
        &[&m, "-t", "0", "-n", "5"],
        &format!("{huge}\nOnce upon a time\n"),
    );
    assert!(
        r.stderr.contains("does not fit the context window"),
        "{}",
        r.stderr
    );
}
