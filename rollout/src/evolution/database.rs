//! The prompt database: every executed idea of the run with its score or failure, the baseline's score, and the
//! random draws of ideas that exploit and explore prompts list.

use ideator_envs::prompt::evolution::{ListedIdea, Outcome, PromptKind};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::EvolveConfig;

/// One executed idea in the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The epoch that proposed it.
    pub epoch: u64,
    pub text: String,
    /// The environment's score; 0 for a failure.
    pub reward: f64,
    /// Why it failed (cause and message), if it did.
    pub failure: Option<String>,
    /// The baseline recipe's score at the same environment seed (common random numbers), when it was run; the
    /// entry beats the baseline against this, else against [`PromptDatabase::baseline`].
    #[serde(default)]
    pub baseline: Option<f64>,
}

impl Entry {
    pub(crate) fn executed(&self) -> bool {
        self.failure.is_none()
    }

    /// Whether it executed and scored above the baseline at its own seed (or `fallback`, the run's baseline,
    /// when none was run at its seed). At the same seed a no-op idea ties the baseline instead of beating it half
    /// the time on seed noise.
    pub(crate) fn beats_baseline(&self, fallback: f64) -> bool {
        self.executed() && self.reward > self.baseline.unwrap_or(fallback)
    }

    /// The idea as a prompt lists it: its text with its score, or why it failed.
    pub(crate) fn listed(&self) -> ListedIdea<'_> {
        let outcome = match &self.failure {
            Some(why) => Outcome::Failed(why),
            None => Outcome::Scored(self.reward),
        };
        ListedIdea { text: &self.text, outcome }
    }
}

/// Every executed idea of the run, and the baseline's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PromptDatabase {
    /// The environment's baseline recipe, executed once per run.
    pub baseline: f64,
    /// In the order they were added (epoch by epoch).
    pub entries: Vec<Entry>,
}

impl PromptDatabase {
    pub(crate) fn new(baseline: f64) -> PromptDatabase {
        PromptDatabase { baseline, entries: Vec::new() }
    }

    pub(crate) fn add(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// Executed ideas that beat the baseline, one per distinct text (its best score), in database order.
    pub(crate) fn winners(&self) -> Vec<&Entry> {
        let mut best: Vec<&Entry> = Vec::new();
        for e in self.entries.iter().filter(|e| e.beats_baseline(self.baseline)) {
            match best.iter_mut().find(|b| b.text == e.text) {
                Some(b) if e.reward > b.reward => *b = e,
                Some(_) => {}
                None => best.push(e),
            }
        }
        best
    }

    /// What an exploit prompt lists: up to `k` winners drawn at random, best first.
    pub(crate) fn draw_exploit(&self, k: usize, seed: u64) -> Vec<&Entry> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let winners = self.winners();
        let mut drawn: Vec<&Entry> = winners.choose_multiple(&mut rng, k).copied().collect();
        drawn.sort_by(|a, b| b.reward.total_cmp(&a.reward));
        drawn
    }

    /// What an explore prompt lists: up to `k` earlier ideas drawn at random (failures included), shuffled.
    pub(crate) fn draw_explore(&self, k: usize, seed: u64) -> Vec<&Entry> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut drawn: Vec<&Entry> = self.entries.choose_multiple(&mut rng, k).collect();
        drawn.shuffle(&mut rng);
        drawn
    }

    /// The ideas a prompt of `kind` lists, drawn with `seed`: up to `cfg.exploit_ideas` winners for exploit, up
    /// to `cfg.explore_ideas` earlier ideas for explore, none for fresh.
    pub(crate) fn listed(&self, kind: PromptKind, cfg: &EvolveConfig, seed: u64) -> Vec<ListedIdea<'_>> {
        let drawn = match kind {
            PromptKind::Fresh => Vec::new(),
            PromptKind::Exploit => self.draw_exploit(cfg.exploit_ideas, seed),
            PromptKind::Explore => self.draw_explore(cfg.explore_ideas, seed),
        };
        drawn.into_iter().map(Entry::listed).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u64, text: &str, reward: f64, failure: Option<&str>) -> Entry {
        Entry { epoch, text: text.into(), reward, failure: failure.map(str::to_string), baseline: None }
    }

    #[test]
    fn winners_beat_the_baseline_once_per_text_and_draws_are_seeded() {
        let mut db = PromptDatabase::new(0.5);
        db.add(entry(0, "a", 0.6, None));
        db.add(entry(0, "b", 0.4, None));
        db.add(entry(0, "c", 0.0, Some("implementation: unknown knob")));
        db.add(entry(1, "a", 0.7, None));
        db.add(entry(1, "d", 0.9, None));
        db.add(entry(1, "e", 0.5, None)); // equal to the baseline: does not beat it
        let w: Vec<(&str, f64)> = db.winners().iter().map(|e| (e.text.as_str(), e.reward)).collect();
        assert_eq!(w, vec![("a", 0.7), ("d", 0.9)]);
        let drawn = db.draw_exploit(10, 3);
        assert_eq!(drawn.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), vec!["d", "a"], "best first");
        assert_eq!(db.draw_exploit(1, 3).len(), 1);
        let x = db.draw_explore(4, 7);
        assert_eq!(x.len(), 4);
        assert_eq!(x, db.draw_explore(4, 7), "the same seed draws the same ideas");
        assert_eq!(db.draw_explore(100, 1).len(), 6, "a draw larger than the database lists all of it");
    }

    #[test]
    fn listed_ideas_show_the_score_or_the_failure() {
        let mut db = PromptDatabase::new(0.5);
        db.add(entry(0, "a", 0.6, None));
        db.add(entry(0, "c", 0.0, Some("implementation: unknown knob")));
        let cfg = EvolveConfig::default();
        let exploit = db.listed(PromptKind::Exploit, &cfg, 1);
        assert_eq!(exploit, vec![ListedIdea { text: "a", outcome: Outcome::Scored(0.6) }]);
        let explore = db.listed(PromptKind::Explore, &cfg, 1);
        assert_eq!(explore.len(), 2);
        assert!(explore.contains(&ListedIdea { text: "c", outcome: Outcome::Failed("implementation: unknown knob") }));
        assert!(db.listed(PromptKind::Fresh, &cfg, 1).is_empty());
    }
}
