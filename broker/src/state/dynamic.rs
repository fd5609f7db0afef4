//! The reloadable decision inputs ([`Dynamic`]): the rules, the exposure
//! graph's ECI and blast radii, CI policies and the shadow rule set, built
//! from a configuration and the registered entries, and installed in one
//! swap.

use std::collections::HashMap;
use std::sync::Arc;

use mintguard_policy::eci::graph::{ExposureGraph, GrantNode, RegisteredIdentity, effective_graph};
use mintguard_policy::eci::pagerank::PprParams;
use mintguard_policy::eci::{EciReport, compute_eci};
use mintguard_policy::rules::RuleSet;
use time::OffsetDateTime;

use super::{Broker, StartError, setup};
use crate::config::Config;
use crate::store::Store;

/// What a reload replaces atomically.
pub struct Dynamic {
    /// The configuration it came from.
    pub config: Config,
    /// Cedar policies + trust configuration.
    pub rules: RuleSet,
    /// The rule set's stored form (JSON), written with the first record that uses it.
    pub rules_json: Arc<str>,
    /// The operator's exposure graph (`[eci] graph`) as read at the last
    /// reload: an entry change recomputes ECI over it without re-reading it.
    pub operator_graph: Arc<ExposureGraph>,
    /// The effective exposure graph: the operator's, with the grants and
    /// registered identities (what the console draws).
    pub graph: ExposureGraph,
    /// ECI of the effective graph.
    pub eci: EciReport,
    /// Each node's blast radius: the ECI it can reach through the identities
    /// its entries let it vouch for.
    pub blast_radius: HashMap<String, mintguard_policy::eci::BlastRadius>,
    /// CI trust policies, compiled.
    pub ci: crate::ci::CiRuntime,
    /// The shadow rule set (`[policies] shadow`), decided beside the
    /// enforced one and never enforced.
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
}

/// What an exposure graph makes of the registered identities.
pub struct Exposure {
    /// The effective graph: the operator's, with a node per grant (edges to
    /// its `eci_targets`) and per registered identity (edges to its grants).
    pub graph: ExposureGraph,
    /// ECI of the effective graph.
    pub eci: EciReport,
    /// Each node's blast radius over the identities its entries vouch for.
    pub blast_radius: HashMap<String, mintguard_policy::eci::BlastRadius>,
}

/// The ECI and blast radii `graph` gives under `config`'s grants and the
/// store's entries (the running broker's, or a what-if's proposal).
pub async fn exposure(
    config: &Config,
    graph: &ExposureGraph,
    store: &dyn Store,
) -> Result<Exposure, String> {
    let grants: Vec<GrantNode> = config
        .grants
        .values()
        .map(|g| GrantNode {
            name: g.name.clone(),
            eci_targets: g.eci_targets.clone(),
        })
        .collect();
    let mut identities: HashMap<String, Vec<String>> = HashMap::new();
    let mut vouches: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
    for entry in store.entries(None).await.map_err(|e| e.to_string())? {
        vouches
            .entry(entry.parent.clone())
            .or_default()
            .insert(entry.spiffe_id.clone());
        identities.entry(entry.spiffe_id).or_default().extend(
            entry
                .grants
                .into_iter()
                .filter(|g| config.grants.contains_key(g)),
        );
    }
    let identities: Vec<RegisteredIdentity> = identities
        .into_iter()
        .map(|(id, grants)| RegisteredIdentity { id, grants })
        .collect();
    let effective =
        effective_graph(graph, &grants, &identities).map_err(|e| format!("eci: {e}"))?;
    let params = PprParams {
        alpha: config.eci.alpha,
        half_life_days: config.eci.half_life_days,
        ..PprParams::default()
    };
    let eci = compute_eci(
        &effective,
        &params,
        OffsetDateTime::now_utc().unix_timestamp(),
    );
    let blast_radius = vouches
        .into_iter()
        .map(|(node, ids)| {
            let radius = mintguard_policy::eci::blast_radius(&eci, ids.iter().map(String::as_str));
            (node, radius)
        })
        .collect();
    Ok(Exposure {
        graph: effective,
        eci,
        blast_radius,
    })
}

/// Builds the reloadable part from a configuration and the registered
/// entries: the rules and the shadow set read from their directories.
pub async fn build_dynamic(config: Config, store: &dyn Store) -> Result<Dynamic, StartError> {
    let rules = RuleSet::new(
        crate::config::load_policies(config.policies.cedar.as_deref()).map_err(setup)?,
        config.trust.clone(),
    )
    .map_err(|e| setup(format!("policies: {e}")))?;
    let rules_json: Arc<str> = serde_json::to_string(&rules.to_stored())
        .map_err(setup)?
        .into();
    let shadow = match &config.policies.shadow {
        Some(dir) => Some(Arc::new(
            crate::shadow::Shadow::load(dir, &config.trust)
                .map_err(|e| setup(format!("policies.shadow: {e}")))?,
        )),
        None => None,
    };
    let graph = match &config.eci.graph {
        Some(path) => ExposureGraph::from_json(
            &std::fs::read(path).map_err(|e| setup(format!("{}: {e}", path.display())))?,
        )
        .map_err(|e| setup(format!("{}: {e}", path.display())))?,
        None => ExposureGraph::new(),
    };
    assemble(config, rules, rules_json, shadow, Arc::new(graph), store).await
}

/// `running`'s configuration, rules, shadow set and operator graph with
/// the exposure recomputed over the entries registered now (after an entry
/// changed): no file is re-read, so a policy or graph file being edited
/// cannot hold up the new ECI, nor slip in without a reload.
pub async fn with_new_exposure(
    running: &Dynamic,
    store: &dyn Store,
) -> Result<Dynamic, StartError> {
    assemble(
        running.config.clone(),
        running.rules.clone(),
        running.rules_json.clone(),
        running.shadow.clone(),
        running.operator_graph.clone(),
        store,
    )
    .await
}

/// The rest of the inputs around the rules: the exposure graph and its
/// ECI, and the CI policies.
async fn assemble(
    config: Config,
    rules: RuleSet,
    rules_json: Arc<str>,
    shadow: Option<Arc<crate::shadow::Shadow>>,
    graph: Arc<ExposureGraph>,
    store: &dyn Store,
) -> Result<Dynamic, StartError> {
    let Exposure {
        graph: effective,
        eci,
        blast_radius,
    } = exposure(&config, &graph, store).await.map_err(setup)?;
    for w in &eci.warnings {
        tracing::warn!("eci: {w}");
    }
    let ci = crate::ci::CiRuntime::new(&config.ci).map_err(|e| setup(format!("ci: {e}")))?;
    Ok(Dynamic {
        config,
        rules,
        rules_json,
        operator_graph: graph,
        graph: effective,
        eci,
        blast_radius,
        ci,
        shadow,
    })
}

impl Broker {
    /// Makes `dynamic` the running decision inputs; the caller holds
    /// `reloading` (so that no rebuild from older inputs lands after a newer
    /// one). A change of shadow rule set — a new one, or none — is first
    /// recorded (the new set stored with its record): no record, no change.
    pub async fn install(&self, dynamic: Dynamic) -> Result<(), String> {
        let running = self.dynamic.load();
        let hash = |d: &Dynamic| d.shadow.as_ref().map(|s| s.hash().to_owned());
        if hash(&running) != hash(&dynamic) {
            self.record_shadow(&dynamic).await?;
        }
        self.dynamic.store(Arc::new(dynamic));
        Ok(())
    }

    /// Writes the record that says which shadow rule set `dynamic` watches
    /// (storing it), or that it watches none.
    pub(super) async fn record_shadow(&self, dynamic: &Dynamic) -> Result<(), String> {
        let now = self.clock.now_ms();
        let append = match (&dynamic.shadow, &dynamic.config.policies.shadow) {
            (Some(shadow), Some(dir)) => shadow.record(dir, now),
            _ => crate::shadow::Shadow::none_record(now),
        };
        self.append(append)
            .await
            .map_err(|e| format!("recording the shadow rule set: {e}"))?;
        match &dynamic.shadow {
            Some(s) => tracing::info!(rule_set = %s.hash(), "shadow rule set watched"),
            None => tracing::info!("no shadow rule set watched"),
        }
        Ok(())
    }
}
