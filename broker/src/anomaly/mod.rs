//! Anomaly analysis of the issuance log: baselines and detectors
//! ([`analyzer`]), fed off the request path from the log.

pub mod alerts;
pub mod analyzer;
pub mod eval;
pub mod respond;
pub mod task;

pub use analyzer::{Analyzer, AnalyzerConfig, Detection, Detector, Event, Subject};
pub use respond::ResponseConfig;
