//! One render of one template: render → compare → write a temp file → check → replace →
//! reload. Every step that fails leaves the destination as it was.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::SrvData;
use super::command::{self, CommandOutcome};
use super::render::{self, RenderError};
use crate::config::TemplateConfig;
use crate::metrics;

/// The outcome of one render, the `result` label of `signpost_emit_renders_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RenderResult {
    /// Rendered, checked, replaced and reloaded.
    Ok,
    /// Rendered to exactly what the destination holds: nothing written, nothing run.
    Unchanged,
    /// The template did not render (syntax, undefined value, unreadable file).
    RenderError,
    /// The check command exited non-zero (or could not start).
    CheckFailed,
    /// The check or reload command ran past `command_timeout` and was killed.
    Timeout,
    /// The reload command exited non-zero (or could not start); the old file was put back.
    ReloadFailed,
    /// The temp file or the rename failed.
    WriteError,
}

/// Renders per result, for one template (the process-wide counter is the metric).
#[derive(Debug, Default)]
pub struct RenderCounts([AtomicU64; RenderResult::ALL.len()]);

// === impl RenderResult ===

impl RenderResult {
    pub const ALL: [RenderResult; 7] = [
        RenderResult::Ok,
        RenderResult::Unchanged,
        RenderResult::RenderError,
        RenderResult::CheckFailed,
        RenderResult::Timeout,
        RenderResult::ReloadFailed,
        RenderResult::WriteError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RenderResult::Ok => "ok",
            RenderResult::Unchanged => "unchanged",
            RenderResult::RenderError => "render_error",
            RenderResult::CheckFailed => "check_failed",
            RenderResult::Timeout => "timeout",
            RenderResult::ReloadFailed => "reload_failed",
            RenderResult::WriteError => "write_error",
        }
    }

    /// Whether `render --once` counts it as success.
    pub fn is_success(self) -> bool {
        matches!(self, RenderResult::Ok | RenderResult::Unchanged)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Count it in `signpost_emit_renders_total{result}`.
    pub(super) fn record(self) {
        ::metrics::counter!(metrics::EMIT_RENDERS_TOTAL, "result" => self.as_str()).increment(1);
    }
}

impl std::fmt::Display for RenderResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl RenderCounts ===

impl RenderCounts {
    /// How many renders ended with `result`.
    pub fn get(&self, result: RenderResult) -> u64 {
        self.0[result.index()].load(Ordering::Relaxed)
    }

    /// Every render, whatever its result.
    pub fn total(&self) -> u64 {
        RenderResult::ALL.iter().map(|&r| self.get(r)).sum()
    }

    pub(super) fn add(&self, result: RenderResult) {
        self.0[result.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Render `template` and, if the result differs from the destination, check it, replace the
/// destination and reload. Logs every failure with the template, the line and the command
/// output.
pub(super) async fn apply(
    template: &TemplateConfig,
    data: Arc<SrvData>,
    domain: &str,
) -> RenderResult {
    let name = template.source.display().to_string();
    let rendered = {
        let template = template.clone();
        let domain = domain.to_owned();
        // Rendering a large catalog takes milliseconds: keep it off the runtime threads.
        tokio::task::spawn_blocking(move || render::render(&template, &data, &domain)).await
    };
    let rendered = match rendered {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            log_render_error(&name, &e);
            return RenderResult::RenderError;
        }
        Err(e) => {
            tracing::warn!(template = %name, error = %e, "render task failed");
            return RenderResult::RenderError;
        }
    };
    replace(template, &name, &rendered).await
}

/// Everything after the render: compare, temp file, check, rename, reload.
pub(super) async fn replace(
    template: &TemplateConfig,
    name: &str,
    rendered: &[u8],
) -> RenderResult {
    let dest = &template.destination;
    let old = std::fs::read(dest).ok();
    if old.as_deref() == Some(rendered) {
        tracing::debug!(template = %name, "unchanged");
        return RenderResult::Unchanged;
    }
    let mode = template.perms.or_else(|| {
        std::fs::metadata(dest)
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
    });
    let tmp = match write_temp(dest, rendered, mode) {
        Ok(tmp) => tmp,
        Err(e) => {
            tracing::warn!(template = %name, destination = %dest.display(), error = %e, "cannot write the rendered file");
            return RenderResult::WriteError;
        }
    };
    if let Some(check) = &template.check {
        let outcome = command::run(check, Some(&tmp), template.command_timeout).await;
        if !outcome.is_success() {
            let _ = std::fs::remove_file(&tmp);
            return command_failed(name, "check", check, &outcome, RenderResult::CheckFailed);
        }
    }
    if let Err(e) = commit(&tmp, dest) {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(template = %name, destination = %dest.display(), error = %e, "cannot replace the destination");
        return RenderResult::WriteError;
    }
    if let Some(reload) = &template.reload {
        let outcome = command::run(reload, None, template.command_timeout).await;
        if !outcome.is_success() {
            // The proxy still runs the old configuration: put the file that matches it back,
            // so that the file on disk never differs from what was last loaded successfully.
            // (With no old file there is nothing to restore; the new one stays.)
            if let Some(old) = &old
                && let Err(e) = write_if_changed_mode(dest, old, mode)
            {
                tracing::error!(template = %name, destination = %dest.display(), error = %e, "cannot restore the previous file after a failed reload");
            }
            return command_failed(name, "reload", reload, &outcome, RenderResult::ReloadFailed);
        }
    }
    tracing::info!(template = %name, destination = %dest.display(), "rendered");
    RenderResult::Ok
}

fn log_render_error(name: &str, e: &RenderError) {
    match e.line() {
        Some(line) => {
            tracing::warn!(template = %name, line, error = %e, "template failed to render; the previous file stays");
        }
        None => {
            tracing::warn!(template = %name, error = %e, "template failed to render; the previous file stays");
        }
    }
}

fn command_failed(
    name: &str,
    step: &'static str,
    command: &str,
    outcome: &CommandOutcome,
    failed: RenderResult,
) -> RenderResult {
    let (result, why) = match outcome {
        CommandOutcome::TimedOut { .. } => {
            (RenderResult::Timeout, "timed out and was killed".to_owned())
        }
        CommandOutcome::Failed { status, .. } => (failed, status.to_string()),
        CommandOutcome::NotStarted { .. } => (failed, "did not start".to_owned()),
        CommandOutcome::Success { .. } => (RenderResult::Ok, String::new()),
    };
    tracing::warn!(
        template = %name,
        step,
        command,
        status = %why,
        output = %outcome.output(),
        "{step} command failed; the previous file stays"
    );
    result
}

/// Replace `path` with `bytes` atomically unless it already holds exactly those bytes.
/// Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    write_if_changed_mode(path, bytes, None)
}

fn write_if_changed_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let tmp = write_temp(path, bytes, mode)?;
    commit(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(true)
}

/// Write `bytes` to a new temp file next to `dest` (same directory, so that the rename is
/// atomic), with `mode` if given, synced to disk.
fn write_temp(dest: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = parent(dest);
    let file_name = dest
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy());
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.{}.{seq}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Some(mode) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Rename `tmp` over `dest`; the rename is durable once the directory is synced.
fn commit(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp, dest)?;
    std::fs::File::open(parent(dest))?.sync_all()
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}
