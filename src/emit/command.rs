//! Check and reload commands: split shell-like, run without a shell, bounded in time.
//!
//! No shell means no quoting surprises and no injection through `{file}`: the command line is
//! split once (`shell-words`, POSIX rules) and `{file}` is replaced inside each argument. A
//! command that outlives its timeout is killed with its whole process group, so a wrapper
//! script cannot leave a grandchild holding the output pipes open.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// The most output kept from a command, per stream; the rest is read and dropped.
const OUTPUT_LIMIT: usize = 16 * 1024;

/// How long to wait for the output pipes to close after a kill.
const DRAIN_AFTER_KILL: Duration = Duration::from_millis(500);

/// How a command ended.
#[derive(Debug)]
pub enum CommandOutcome {
    /// Exit status 0.
    Success { output: String },
    /// A non-zero exit status or a signal.
    Failed { status: ExitStatus, output: String },
    /// Killed after `command_timeout`.
    TimedOut { output: String },
    /// The command line does not split, is empty, or the program cannot be started.
    NotStarted { error: String },
}

// === impl CommandOutcome ===

impl CommandOutcome {
    /// Whether the command ran and exited with 0.
    pub fn is_success(&self) -> bool {
        matches!(self, CommandOutcome::Success { .. })
    }

    /// What to log: the output, or why there is none.
    pub fn output(&self) -> &str {
        match self {
            CommandOutcome::Success { output }
            | CommandOutcome::Failed { output, .. }
            | CommandOutcome::TimedOut { output } => output,
            CommandOutcome::NotStarted { error } => error,
        }
    }
}

/// Split `command` like a POSIX shell would (quotes, backslashes; no expansion) and replace
/// `{file}` in every argument with `file`.
pub fn split(command: &str, file: Option<&Path>) -> Result<Vec<String>, String> {
    let words =
        shell_words::split(command).map_err(|e| format!("cannot split `{command}`: {e}"))?;
    if words.is_empty() {
        return Err("empty command".to_owned());
    }
    Ok(match file {
        Some(file) => {
            let file = file.to_string_lossy();
            words
                .into_iter()
                .map(|w| w.replace("{file}", &file))
                .collect()
        }
        None => words,
    })
}

/// Run `command` (with `{file}` replaced), stdin closed, stdout and stderr captured, for at
/// most `timeout`.
pub(super) async fn run(command: &str, file: Option<&Path>, timeout: Duration) -> CommandOutcome {
    let argv = match split(command, file) {
        Ok(argv) => argv,
        Err(error) => return CommandOutcome::NotStarted { error },
    };
    let mut child = match Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills everything it started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return CommandOutcome::NotStarted {
                error: format!("cannot run `{}`: {e}", argv[0]),
            };
        }
    };
    let stdout = tokio::spawn(read_limited(child.stdout.take()));
    let stderr = tokio::spawn(read_limited(child.stderr.take()));
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let timed_out = status.is_err();
    if timed_out {
        kill_group(child.id());
        let _ = child.kill().await;
    }
    let output = async {
        let out = stdout.await.unwrap_or_default();
        let err = stderr.await.unwrap_or_default();
        join_output(&out, &err)
    };
    let output = if timed_out {
        tokio::time::timeout(DRAIN_AFTER_KILL, output)
            .await
            .unwrap_or_default()
    } else {
        output.await
    };
    match status {
        Err(_) => CommandOutcome::TimedOut { output },
        Ok(Err(e)) => CommandOutcome::NotStarted {
            error: format!("waiting for `{}`: {e}", argv[0]),
        },
        Ok(Ok(status)) if status.success() => CommandOutcome::Success { output },
        Ok(Ok(status)) => CommandOutcome::Failed { status, output },
    }
}

/// SIGKILL the process group led by `pid` (the child was started with `process_group(0)`).
fn kill_group(pid: Option<u32>) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Read a pipe to its end, keeping the first [`OUTPUT_LIMIT`] bytes.
async fn read_limited<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// stdout then stderr, trimmed, as one string for a log line.
fn join_output(out: &[u8], err: &[u8]) -> String {
    let out = String::from_utf8_lossy(out);
    let err = String::from_utf8_lossy(err);
    match (out.trim(), err.trim()) {
        ("", e) => e.to_owned(),
        (o, "") => o.to_owned(),
        (o, e) => format!("{o}\n{e}"),
    }
}
