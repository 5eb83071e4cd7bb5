//! What the CLI's per-step hook adds to a step record ([`StepRecord::extra`]): the ideas' batch diagnostics and
//! the collapse alarms. Their keys are spelled here and nowhere else: the hook writes them with
//! [`StepEntries::to_extra`], and the report and a resumed run read them back with [`diagnostics`] and
//! [`alarms`].

use ideator_rollout::pipeline::StepRecord;
use serde_json::{Map, Value};

use crate::alarm::Alarm;
use crate::summary::BatchDiagnostics;

const DIAGNOSTICS: &str = "diagnostics";
const ALARMS: &str = "alarms";

/// One step's diagnostics and the alarms they fired.
pub struct StepEntries<'a> {
    pub diagnostics: &'a BatchDiagnostics,
    pub alarms: &'a [Alarm],
}

impl StepEntries<'_> {
    /// The entries for the record's `extra`.
    pub fn to_extra(&self) -> Map<String, Value> {
        let mut extra = Map::new();
        extra.insert(DIAGNOSTICS.into(), serde_json::to_value(self.diagnostics).unwrap_or_default());
        extra.insert(ALARMS.into(), serde_json::to_value(self.alarms).unwrap_or_default());
        extra
    }
}

/// The record's batch diagnostics; `None` when it has none, an error when they do not read.
pub fn diagnostics(record: &StepRecord) -> Result<Option<BatchDiagnostics>, serde_json::Error> {
    entry(record, DIAGNOSTICS)
}

/// The record's collapse alarms; none when it has none, an error when they do not read.
pub fn alarms(record: &StepRecord) -> Result<Vec<Alarm>, serde_json::Error> {
    Ok(entry(record, ALARMS)?.unwrap_or_default())
}

fn entry<T: serde::de::DeserializeOwned>(record: &StepRecord, key: &str) -> Result<Option<T>, serde_json::Error> {
    match record.extra.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::ScoredIdea;

    #[test]
    fn what_the_hook_writes_reads_back_through_the_exported_record() {
        let ideas = [
            ScoredIdea { text: "raise lr", reward: 0.5, executed: true, category: None },
            ScoredIdea { text: "lower the batch size", reward: 0.2, executed: true, category: None },
        ];
        let d = BatchDiagnostics::compute(&ideas, None).unwrap();
        let record =
            StepRecord { extra: StepEntries { diagnostics: &d, alarms: &[] }.to_extra(), ..Default::default() };
        let back = StepRecord::from_json(&record.to_json());
        assert_eq!(diagnostics(&back).unwrap().map(|d| d.n_ideas), Some(d.n_ideas));
        assert!(alarms(&back).unwrap().is_empty());
        let bare = StepRecord::default();
        assert_eq!((diagnostics(&bare).unwrap(), alarms(&bare).unwrap().len()), (None, 0));
        let broken = StepRecord::from_json(&serde_json::json!({"step": 0, "alarms": 3}));
        assert!(alarms(&broken).is_err());
    }
}
