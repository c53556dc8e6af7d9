//! The emitter task: the SRV data file and one quiescence loop per template, all fed by the
//! same catalog as DNS.
//!
//! ```text
//! CatalogRx ──► data loop: SrvData::update (unchanged services shared), emit.srv_file ──► watch<Arc<SrvData>> ──► template loops
//! ```
//!
//! The data loop publishes a new document to the template loops only when the services or the
//! datacenter changed (not for a new `index` alone), so a template's timer starts only when its
//! inputs changed. The template loops use consul-template's `wait { min, max }` quiescence
//! without its failure modes (`reference/peers.md` §4b, #1140, #1427, #608): there is no
//! ticker, only one deadline that exists while changes are pending, so an idle template costs
//! nothing and a burst of changes collapses into one render.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use super::SrvData;
use super::pipeline::{self, RenderCounts, RenderResult};
use crate::config::{DnsConfig, EmitConfig, TemplateConfig};
use crate::consul::Catalog;
use crate::consul::watch::CatalogRx;

/// A running emitter: the task and per-template render counts.
pub struct Emitter {
    handle: JoinHandle<()>,
    counts: Arc<[RenderCounts]>,
}

// === impl Emitter ===

impl Emitter {
    /// Renders of template `i` (in config order) that ended with each result.
    pub fn counts(&self, i: usize) -> Option<&RenderCounts> {
        self.counts.get(i)
    }

    /// The task, for [`crate::app`] to abort and await at shutdown.
    pub fn into_handle(self) -> JoinHandle<()> {
        self.handle
    }

    /// Stop every loop (a running command is killed).
    pub async fn stop(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// Start the emitter: write `config.srv_file` and render `config.templates` from every new
/// catalog until `shutdown` turns true or the catalog sender is gone. `domain` is the primary
/// Consul domain, lowercase dotted without the final dot.
pub fn spawn(
    config: &EmitConfig,
    dns: &DnsConfig,
    domain: String,
    catalogs: CatalogRx,
    mut shutdown: watch::Receiver<bool>,
) -> Emitter {
    let counts: Arc<[RenderCounts]> = config
        .templates
        .iter()
        .map(|_| RenderCounts::default())
        .collect();
    let (data_tx, data_rx) = watch::channel(None);
    let mut loops = JoinSet::new();
    if config.srv_file.is_none() && config.templates.is_empty() {
        // Nothing to write: building the document for every catalog would cost a copy of
        // every instance per change for nobody (`/v1/catalog` renders its own on request).
        return Emitter {
            handle: tokio::spawn(async {}),
            counts,
        };
    }
    loops.spawn(
        data_loop(
            catalogs,
            config.clone(),
            dns.clone(),
            domain.clone(),
            data_tx,
        )
        .instrument(tracing::info_span!("emit")),
    );
    for (i, template) in config.templates.iter().enumerate() {
        let span = tracing::info_span!("emit.template", template = %template.source.display());
        loops.spawn(
            template_loop(
                template.clone(),
                domain.clone(),
                data_rx.clone(),
                Arc::clone(&counts),
                i,
            )
            .instrument(span),
        );
    }
    let handle = tokio::spawn(async move {
        // Dropping the JoinSet aborts every loop (and kills their commands: kill_on_drop).
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {}
            _ = async { while loops.join_next().await.is_some() {} } => {}
        }
    });
    Emitter { handle, counts }
}

/// Build the document for each catalog, write the SRV data file, and hand the document to
/// the template loops when their inputs changed.
async fn data_loop(
    mut catalogs: CatalogRx,
    config: EmitConfig,
    dns: DnsConfig,
    domain: String,
    data_tx: watch::Sender<Option<Arc<SrvData>>>,
) {
    // The last document and the catalog it was built from, for incremental builds.
    let mut last: Option<(Arc<SrvData>, Arc<Catalog>)> = None;
    loop {
        let current = catalogs.borrow_and_update().clone();
        if let Some(catalog) = current {
            let (dns, domain, srv_file) = (dns.clone(), domain.clone(), config.srv_file.clone());
            let prev = last.clone();
            let of = Arc::clone(&catalog);
            let built = tokio::task::spawn_blocking(move || {
                let doc = match &prev {
                    Some((doc, old)) => SrvData::update(doc, old, &catalog, &dns, &domain),
                    None => SrvData::build(&catalog, &dns, &domain),
                };
                if let Some(path) = &srv_file {
                    let result = match pipeline::write_if_changed(path, &doc.to_json()) {
                        Ok(true) => RenderResult::Ok,
                        Ok(false) => RenderResult::Unchanged,
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot write the SRV data file");
                            RenderResult::WriteError
                        }
                    };
                    result.record();
                }
                doc
            })
            .await;
            match built {
                Ok(doc) => {
                    let doc = Arc::new(doc);
                    last = Some((Arc::clone(&doc), of));
                    data_tx.send_if_modified(|old| {
                        let changed = old.as_deref().is_none_or(|o| !same_inputs(o, &doc));
                        if changed {
                            *old = Some(doc);
                        }
                        changed
                    });
                }
                Err(e) => tracing::error!(error = %e, "building the SRV data failed"),
            }
        }
        if catalogs.changed().await.is_err() {
            return;
        }
    }
}

/// What templates depend on: everything but `index`, which moves with every catalog.
fn same_inputs(a: &SrvData, b: &SrvData) -> bool {
    a.datacenter == b.datacenter && a.services == b.services
}

/// One template: render the first document at once, then once per quiescence window.
///
/// consul-template semantics: after a change, render when `wait_min` passes with no further
/// change, and no later than `wait_max` after the first change of the burst.
async fn template_loop(
    template: TemplateConfig,
    domain: String,
    mut data: watch::Receiver<Option<Arc<SrvData>>>,
    counts: Arc<[RenderCounts]>,
    i: usize,
) {
    // The first document renders immediately: a node coming up needs its proxy config now.
    let Ok(first) = data.wait_for(Option::is_some).await.map(|d| d.clone()) else {
        return;
    };
    if let Some(doc) = first {
        run_once(&template, doc, &domain, &counts, i).await;
    }
    loop {
        // Idle: no timer at all until an input changes.
        if data.changed().await.is_err() {
            return;
        }
        let first_change = Instant::now();
        let max_at = first_change + template.wait_max;
        let mut deadline = (first_change + template.wait_min).min(max_at);
        loop {
            tokio::select! {
                changed = data.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    deadline = (Instant::now() + template.wait_min).min(max_at);
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let doc = data.borrow_and_update().clone();
        if let Some(doc) = doc {
            run_once(&template, doc, &domain, &counts, i).await;
        }
    }
}

async fn run_once(
    template: &TemplateConfig,
    doc: Arc<SrvData>,
    domain: &str,
    counts: &[RenderCounts],
    i: usize,
) {
    let result = pipeline::apply(template, doc, domain).await;
    result.record();
    if let Some(c) = counts.get(i) {
        c.add(result);
    }
}
