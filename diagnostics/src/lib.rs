//! # ideator-diagnostics
//!
//! What shows mode collapse: diversity of ideas, idea categories, average versus best-of-N (max@k), collapse
//! alarms, and the HTML report with its plots. Inputs are plain data (idea texts, rewards, the knobs each
//! idea changes) and the pipeline's typed step record (`ideator_rollout::pipeline::StepRecord`): this crate
//! depends on `ideator-rollout` for that type only and never opens the run store (the CLI reads the store and
//! hands its records over). `ideator-rollout` does not depend on this crate, so there is no cycle.
//!
//! - [`maxk`]: the unbiased max@k estimator and its curve, mean, best.
//! - [`diversity`]: text diversity (distinct-n, self-BLEU, gzip compression ratio, lengths), on [`text`] tokens.
//! - [`embed`]: all-MiniLM-L6-v2 sentence embeddings with candle; [`vendi`]: Vendi score and mean cosine.
//! - [`categories`]: category shares and entropy; [`code_ideas`]: applied / ran rates, diff size and repairs of
//!   code ideas.
//! - [`interval`]: bootstrap intervals for differences between runs; [`experiment`]: an experiment's arms compared
//!   at equal execution budgets (curves across seeds, the markdown table).
//! - [`summary`]: [`BatchDiagnostics`], all of the above for one batch; [`alarm`]: the collapse alarm.
//! - [`step_entries`]: the diagnostics and alarms the CLI's per-step hook adds to a step record, written and read
//!   under the keys spelled there.
//! - [`report`]: the run report (one self-contained HTML file with SVG charts) and its data model.

pub mod alarm;
pub mod categories;
pub mod code_ideas;
pub mod diversity;
pub mod embed;
pub mod error;
pub mod experiment;
pub mod interval;
pub mod maxk;
pub mod report;
pub mod step_entries;
pub mod summary;
pub mod text;
pub mod vendi;

pub use alarm::{check_collapse, Alarm, AlarmConfig, AlarmKind, DiversityMetric};
pub use categories::{Category, CategoryStats};
pub use code_ideas::{CodeIdea, CodeIdeaStats};
pub use diversity::TextDiversity;
pub use embed::{MiniLmEmbedder, SentenceEmbedder};
pub use error::{DiagnosticsError, Result};
pub use maxk::{max_at_k, max_at_k_curve, MaxAtK};
pub use summary::{BatchDiagnostics, EmbeddingDiversity, ScoredIdea};
