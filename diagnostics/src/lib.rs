//! # ideator-diagnostics
//!
//! What shows mode collapse: diversity of ideas, idea categories, average versus best-of-N (max@k), collapse
//! alarms, and the HTML report with its plots.
