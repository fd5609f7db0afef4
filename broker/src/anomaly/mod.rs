//! Anomaly analysis of the issuance log: baselines and detectors
//! ([`analyzer`]), fed off the request path from the log.

pub mod analyzer;

pub use analyzer::{Analyzer, AnalyzerConfig, Detection, Detector, Event, Subject};
