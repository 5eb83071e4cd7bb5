//! Evolutionary search, the seed paper's baseline, as pure logic: the prompt database (every executed idea with
//! its score or failure), the exploit/explore split of each epoch, and the prompts, fitted to the ideator's
//! context. The ideator stays frozen; what changes from epoch to epoch is the database its prompts are built from.
//!
//! The method (Si et al., 2026; `agent/evolutionary_search.py` of their code):
//! - epoch 0 samples a batch of fresh ideas from the environment's plain prompt;
//! - epoch e >= 1 builds `floor(B * exploit_share(e))` of its B prompts as *exploit* prompts (a random draw of the
//!   ideas that beat the baseline, with their scores; "refine or combine these") and the rest as *explore*
//!   prompts (a random draw of all earlier ideas, failures included; "a new direction, unlike these");
//!   `exploit_share(e) = min(0.5 + 0.1 * floor(e / 2), 0.8)`;
//! - every prompt ends with the ideas already proposed in this epoch, to avoid.
//!
//! Differences, on purpose: the paper asks for ten ideas per prompt, we ask for one (small ideators write one
//! idea at a time well; `ideas_per_prompt` samples several completions of the same prompt); and while no idea has
//! beaten the baseline yet, exploit prompts would list nothing, so they are built as explore prompts and counted
//! as such.
//!
//! Nothing here samples or executes: the pipeline glue (`ideator-rollout`) does, and rebuilds the database from
//! the run store when a run resumes.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainerError};

/// `[evolve]`: the search's own settings (sampling is `[sampling]`, execution `[backend]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvolveConfig {
    /// Epochs in the run (epoch 0 included). The paper ran 10.
    pub epochs: u64,
    /// Prompts per epoch; each yields `ideas_per_prompt` ideas. The paper's batches held 50-80 ideas.
    pub prompts_per_epoch: usize,
    /// Completions sampled from each prompt.
    pub ideas_per_prompt: usize,
    /// Ideas that beat the baseline listed in an exploit prompt, at most (a random draw; the paper: 10).
    pub exploit_ideas: usize,
    /// Earlier ideas listed in an explore prompt, at most (a random draw; the paper: 100).
    pub explore_ideas: usize,
    /// Each listed idea is clipped to this many characters (a runaway completion must not fill the prompt).
    pub max_idea_chars: usize,
}

impl Default for EvolveConfig {
    fn default() -> Self {
        EvolveConfig {
            epochs: 10,
            prompts_per_epoch: 16,
            ideas_per_prompt: 1,
            exploit_ideas: 10,
            explore_ideas: 100,
            max_idea_chars: 1500,
        }
    }
}

impl EvolveConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.prompts_per_epoch == 0 || self.ideas_per_prompt == 0 {
            return Err(TrainerError::Config(
                "evolve.epochs, evolve.prompts_per_epoch and evolve.ideas_per_prompt must be at least 1".into(),
            ));
        }
        if self.max_idea_chars < 40 {
            return Err(TrainerError::Config(
                "evolve.max_idea_chars must be at least 40 (a listed idea must stay readable)".into(),
            ));
        }
        Ok(())
    }

    /// Ideas sampled per epoch.
    pub fn ideas_per_epoch(&self) -> usize {
        self.prompts_per_epoch * self.ideas_per_prompt
    }
}

/// The paper's exploit share of epoch `epoch`: `min(0.5 + 0.1 * floor(epoch / 2), 0.8)`.
pub fn exploit_share(epoch: u64) -> f64 {
    exploit_tenths(epoch) as f64 / 10.0
}

/// The share in tenths, in integers (so that the prompt counts are exact).
fn exploit_tenths(epoch: u64) -> usize {
    (5 + epoch / 2).min(8) as usize
}

/// Exploit prompts of an epoch of `prompts` prompts: none in epoch 0, else `floor(prompts * share)`.
pub fn exploit_prompts(epoch: u64, prompts: usize) -> usize {
    if epoch == 0 {
        0
    } else {
        prompts * exploit_tenths(epoch) / 10
    }
}

/// What a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptKind {
    /// Epoch 0: the environment's plain prompt.
    Fresh,
    /// Variants and combinations of ideas that beat the baseline.
    Exploit,
    /// New directions, unlike earlier ideas (failures included).
    Explore,
}

impl PromptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PromptKind::Fresh => "fresh",
            PromptKind::Exploit => "exploit",
            PromptKind::Explore => "explore",
        }
    }
}

/// The kind of prompt `index` (0-based, in sampling order) of an epoch: the first exploit-share of the prompts
/// exploit (as in the paper's code), the rest explore; exploit prompts become explore prompts while no idea has
/// beaten the baseline.
pub fn prompt_kind(epoch: u64, prompts: usize, index: usize, has_winners: bool) -> PromptKind {
    if epoch == 0 {
        PromptKind::Fresh
    } else if index < exploit_prompts(epoch, prompts) && has_winners {
        PromptKind::Exploit
    } else {
        PromptKind::Explore
    }
}

/// One executed idea in the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
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
    pub fn executed(&self) -> bool {
        self.failure.is_none()
    }

    /// Whether it executed and scored above the baseline at its own seed (or `fallback`, the run's baseline,
    /// when none was run at its seed). At the same seed a no-op idea ties the baseline instead of beating it half
    /// the time on seed noise.
    pub fn beats_baseline(&self, fallback: f64) -> bool {
        self.executed() && self.reward > self.baseline.unwrap_or(fallback)
    }
}

/// Every executed idea of the run, and the baseline's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptDatabase {
    /// The environment's baseline recipe, executed once per run.
    pub baseline: f64,
    /// In the order they were added (epoch by epoch).
    pub entries: Vec<Entry>,
}

impl PromptDatabase {
    pub fn new(baseline: f64) -> PromptDatabase {
        PromptDatabase { baseline, entries: Vec::new() }
    }

    pub fn add(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// Executed ideas that beat the baseline, one per distinct text (its best score), in database order.
    pub fn winners(&self) -> Vec<&Entry> {
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

    /// The best executed entry.
    pub fn best(&self) -> Option<&Entry> {
        self.entries.iter().filter(|e| e.executed()).max_by(|a, b| a.reward.total_cmp(&b.reward))
    }

    /// What an exploit prompt lists: up to `k` winners drawn at random, best first.
    pub fn draw_exploit(&self, k: usize, seed: u64) -> Vec<&Entry> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let winners = self.winners();
        let mut drawn: Vec<&Entry> = winners.choose_multiple(&mut rng, k).copied().collect();
        drawn.sort_by(|a, b| b.reward.total_cmp(&a.reward));
        drawn
    }

    /// What an explore prompt lists: up to `k` earlier ideas drawn at random (failures included), shuffled.
    pub fn draw_explore(&self, k: usize, seed: u64) -> Vec<&Entry> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut drawn: Vec<&Entry> = self.entries.choose_multiple(&mut rng, k).collect();
        drawn.shuffle(&mut rng);
        drawn
    }
}

/// The parts of a prompt before fitting.
#[derive(Debug, Clone)]
pub struct PromptRequest<'a> {
    pub kind: PromptKind,
    /// The environment's task, knob table, idea format and example (everything but the final request).
    pub task: &'a str,
    pub baseline: f64,
    /// The ideas the prompt is about (winners for exploit, a random draw for explore; none for fresh), in
    /// display order: when the prompt must shrink, the last go first.
    pub listed: Vec<&'a Entry>,
    /// This epoch's ideas so far, oldest first: when the prompt must shrink, the oldest go first.
    pub avoid: Vec<&'a str>,
    pub max_idea_chars: usize,
}

/// A prompt that fits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedPrompt {
    /// The user turn.
    pub text: String,
    /// Its size as the caller counts it (the rendered conversation).
    pub tokens: usize,
    pub listed: usize,
    pub avoided: usize,
    /// Listed and avoided ideas left out to fit the context.
    pub dropped: usize,
}

fn clip_chars(s: &str, max: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{} [...]", s[..cut].trim_end()),
    }
}

fn fmt_score(x: f64) -> String {
    format!("{x:.4}")
}

fn listed_block(kind: PromptKind, i: usize, e: &Entry, max_chars: usize) -> String {
    let label = match (&e.failure, kind) {
        (Some(why), _) => format!("failed: {}", clip_chars(why, 160)),
        (None, _) => format!("score {}", fmt_score(e.reward)),
    };
    format!("Idea {} ({label}):\n{}\n", i + 1, clip_chars(&e.text, max_chars))
}

fn avoid_block(i: usize, text: &str, max_chars: usize) -> String {
    format!("Proposed idea {}:\n{}\n", i + 1, clip_chars(text, max_chars))
}

/// The user turn with the chosen listed and avoided ideas.
fn render(req: &PromptRequest, listed: &[&Entry], avoid: &[&str]) -> String {
    let b = fmt_score(req.baseline);
    let mut out = String::from(req.task.trim());
    out.push_str("\n\n");
    match req.kind {
        PromptKind::Fresh => out.push_str("Propose one new idea that should beat the baseline."),
        PromptKind::Exploit => {
            out.push_str(&format!(
                "The baseline recipe (no changes) scores {b}. These ideas were tried and beat it; each is shown with \
                 its score:\n\n"
            ));
            for (i, e) in listed.iter().enumerate() {
                out.push_str(&listed_block(req.kind, i, e, req.max_idea_chars));
                out.push('\n');
            }
            out.push_str(
                "Propose one new idea that should score even higher than these: refine one of them, or combine the \
                 changes of several.",
            );
        }
        PromptKind::Explore => {
            out.push_str(&format!(
                "For reference, the baseline recipe (no changes) scores {b}. These ideas were tried before, with \
                 their scores (a failed idea could not be implemented or run and scored 0):\n\n"
            ));
            for (i, e) in listed.iter().enumerate() {
                out.push_str(&listed_block(req.kind, i, e, req.max_idea_chars));
                out.push('\n');
            }
            out.push_str(
                "Propose one brand-new idea that is different from all of these: a new direction, avoiding the \
                 patterns that failed or scored below the baseline.",
            );
        }
    }
    if !avoid.is_empty() {
        out.push_str("\n\nAvoid ideas similar to these, already proposed in this round:\n\n");
        for (i, t) in avoid.iter().enumerate() {
            out.push_str(&avoid_block(i, t, req.max_idea_chars));
            out.push('\n');
        }
        out.truncate(out.trim_end().len());
    }
    out
}

/// Builds the prompt and fits it into `budget` tokens as `count` measures them (the caller renders the whole
/// conversation, so the chat template is counted too): the instructions always stay; listed ideas and ideas to
/// avoid are dropped (the last listed and the oldest avoided first, alternately) until it fits. Fails only when
/// the instructions alone do not fit.
pub fn fit_prompt(req: &PromptRequest, budget: usize, count: &dyn Fn(&str) -> usize) -> Result<FittedPrompt> {
    let full = render(req, &req.listed, &req.avoid);
    let tokens = count(&full);
    if tokens <= budget {
        return Ok(FittedPrompt {
            text: full,
            tokens,
            listed: req.listed.len(),
            avoided: req.avoid.len(),
            dropped: 0,
        });
    }
    let bare = render(req, &[], &[]);
    let bare_tokens = count(&bare);
    if bare_tokens > budget {
        return Err(TrainerError::Config(format!(
            "the {} prompt's instructions alone take {bare_tokens} tokens, more than the {budget} the model's context \
             leaves after the new tokens; use a model with a longer context or fewer sampling.max_new_tokens",
            req.kind.as_str()
        )));
    }
    // Per-idea costs, measured one at a time against the bare prompt (close to additive), choose a first cut;
    // the whole prompt is then measured and trimmed further if the estimate was short.
    let overhead = count("");
    let cost = |block: String| count(&block).saturating_sub(overhead);
    let listed_costs: Vec<usize> =
        req.listed.iter().enumerate().map(|(i, e)| cost(listed_block(req.kind, i, e, req.max_idea_chars))).collect();
    let avoid_costs: Vec<usize> =
        req.avoid.iter().enumerate().map(|(i, t)| cost(avoid_block(i, t, req.max_idea_chars))).collect();
    // Priority: listed ideas in display order and avoided ideas newest first, interleaved.
    let mut order: Vec<(bool, usize)> = Vec::new();
    let (mut li, mut ai) = (0, req.avoid.len());
    while li < req.listed.len() || ai > 0 {
        if li < req.listed.len() {
            order.push((true, li));
            li += 1;
        }
        if ai > 0 {
            ai -= 1;
            order.push((false, ai));
        }
    }
    // The section headings of the avoid list cost a few tokens too; keep a small margin.
    let room = budget.saturating_sub(bare_tokens + 24);
    let mut used = 0;
    let mut keep = 0;
    for &(is_listed, i) in &order {
        let c = if is_listed { listed_costs[i] } else { avoid_costs[i] };
        if used + c > room {
            break;
        }
        used += c;
        keep += 1;
    }
    loop {
        let chosen = &order[..keep];
        let mut listed_idx: Vec<usize> = chosen.iter().filter(|(l, _)| *l).map(|&(_, i)| i).collect();
        let mut avoid_idx: Vec<usize> = chosen.iter().filter(|(l, _)| !*l).map(|&(_, i)| i).collect();
        listed_idx.sort_unstable();
        avoid_idx.sort_unstable();
        let listed: Vec<&Entry> = listed_idx.iter().map(|&i| req.listed[i]).collect();
        let avoid: Vec<&str> = avoid_idx.iter().map(|&i| req.avoid[i]).collect();
        let text = render(req, &listed, &avoid);
        let tokens = count(&text);
        if tokens <= budget || keep == 0 {
            let dropped = req.listed.len() + req.avoid.len() - keep;
            return Ok(FittedPrompt { text, tokens, listed: listed.len(), avoided: avoid.len(), dropped });
        }
        keep -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u64, text: &str, reward: f64, failure: Option<&str>) -> Entry {
        Entry { epoch, text: text.into(), reward, failure: failure.map(str::to_string), baseline: None }
    }

    #[test]
    fn exploit_share_follows_the_paper_schedule() {
        let got: Vec<f64> = (0..12).map(exploit_share).collect();
        let want = [0.5, 0.5, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8];
        for (e, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-12, "epoch {e}: {g} != {w}");
        }
        // Prompt counts: floor(B * share); none in epoch 0.
        assert_eq!(exploit_prompts(0, 10), 0);
        assert_eq!(exploit_prompts(1, 10), 5);
        assert_eq!(exploit_prompts(2, 10), 6);
        assert_eq!(exploit_prompts(5, 7), 4); // 4.9 -> 4
        assert_eq!(exploit_prompts(9, 80), 64);
        assert_eq!(exploit_prompts(3, 1), 0);
    }

    #[test]
    fn prompt_kinds_put_exploit_first_and_fall_back_without_winners() {
        let kinds: Vec<PromptKind> = (0..10).map(|i| prompt_kind(2, 10, i, true)).collect();
        assert_eq!(kinds.iter().filter(|k| **k == PromptKind::Exploit).count(), 6);
        assert!(kinds[..6].iter().all(|k| *k == PromptKind::Exploit));
        assert!(kinds[6..].iter().all(|k| *k == PromptKind::Explore));
        assert!((0..10).all(|i| prompt_kind(2, 10, i, false) == PromptKind::Explore));
        assert!((0..10).all(|i| prompt_kind(0, 10, i, true) == PromptKind::Fresh));
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
        assert_eq!(db.best().unwrap().text, "d");
    }

    /// Tokens as whitespace-separated words, plus a fixed template overhead.
    fn words(s: &str) -> usize {
        10 + s.split_whitespace().count()
    }

    fn request<'a>(kind: PromptKind, listed: Vec<&'a Entry>, avoid: Vec<&'a str>) -> PromptRequest<'a> {
        PromptRequest { kind, task: "TASK with knobs.", baseline: 0.25, listed, avoid, max_idea_chars: 200 }
    }

    #[test]
    fn a_prompt_that_fits_is_complete_and_ends_with_the_ideas_to_avoid() {
        let e1 = entry(0, "[Experiment] raise lr [Code Changes] lr = 1e-3 [End]", 0.4, None);
        let e2 = entry(0, "[Experiment] broken", 0.0, Some("implementation: unknown knob `x`"));
        let req = request(PromptKind::Explore, vec![&e1, &e2], vec!["first this round", "second this round"]);
        let p = fit_prompt(&req, 10_000, &words).unwrap();
        assert_eq!((p.listed, p.avoided, p.dropped), (2, 2, 0));
        assert!(p.text.starts_with("TASK with knobs."));
        assert!(p.text.contains("baseline recipe (no changes) scores 0.2500"));
        assert!(p.text.contains("Idea 1 (score 0.4000)"));
        assert!(p.text.contains("Idea 2 (failed: implementation: unknown knob `x`)"));
        assert!(p.text.contains("brand-new idea"));
        assert!(p.text.ends_with("Proposed idea 2:\nsecond this round"), "{}", p.text);
        assert_eq!(p.tokens, words(&p.text));
        let ex = fit_prompt(&request(PromptKind::Exploit, vec![&e1], vec![]), 10_000, &words).unwrap();
        assert!(ex.text.contains("beat it") && ex.text.contains("combine"));
        assert!(!ex.text.contains("Avoid ideas"));
    }

    #[test]
    fn fitting_drops_ideas_never_instructions() {
        let long: Vec<Entry> =
            (0..30).map(|i| entry(1, &format!("idea number {i} {}", "word ".repeat(20)), 0.3, None)).collect();
        let avoid_texts: Vec<String> = (0..30).map(|i| format!("avoid {i} {}", "w ".repeat(20))).collect();
        let req =
            request(PromptKind::Exploit, long.iter().collect(), avoid_texts.iter().map(String::as_str).collect());
        let full = fit_prompt(&req, usize::MAX, &words).unwrap();
        let bare = words(&render(&req, &[], &[]));
        for budget in [bare, bare + 50, bare + 300, full.tokens - 1] {
            let p = fit_prompt(&req, budget, &words).unwrap();
            assert!(p.tokens <= budget, "{} > {budget}", p.tokens);
            assert!(p.dropped > 0);
            assert_eq!(p.listed + p.avoided + p.dropped, 60);
            // Every instruction survives.
            assert!(p.text.starts_with("TASK with knobs."));
            assert!(p.text.contains("Propose one new idea that should score even higher"));
            // Kept listed ideas are the first ones; kept avoided ideas are the newest.
            if p.listed > 0 {
                assert!(p.text.contains("idea number 0 "));
            }
            if p.avoided > 0 {
                assert!(p.text.contains("avoid 29 "));
                assert!(!p.text.contains("avoid 0 ") || p.avoided == 30);
            }
            // Dropping is shared between the two lists.
            if budget > bare + 100 {
                assert!(p.listed > 0 && p.avoided > 0, "{} listed, {} avoided", p.listed, p.avoided);
            }
        }
        let too_small = fit_prompt(&req, bare - 1, &words);
        assert!(too_small.unwrap_err().to_string().contains("instructions alone"));
    }

    /// The reference database of the exact-text tests: two winners (one tied twice), a loss, two failures (one
    /// with a long message) and a long idea that is clipped.
    fn reference_database() -> PromptDatabase {
        let mut db = PromptDatabase::new(0.25);
        db.add(entry(0, "[Experiment] raise lr\n[Code Changes]\nlr = 1e-3\n[End]", 0.4, None));
        db.add(entry(0, "[Experiment] broken", 0.0, Some("implementation: unknown knob `x`")));
        db.add(entry(0, "  [Experiment] padded\n[Code Changes]\nwarmup = 10\n[End]  \n", 0.2, None));
        db.add(entry(1, &format!("[Experiment] long {}[End]", "word ".repeat(30)), 0.3, None));
        db.add(entry(1, "[Experiment] crashes", 0.0, Some(&format!("run: {}", "z".repeat(200)))));
        db.add(entry(1, "[Experiment] raise lr\n[Code Changes]\nlr = 1e-3\n[End]", 0.45, None));
        db
    }

    /// Exploit, explore and fresh prompts of the reference database, whole and fitted to a small budget.
    fn reference_prompts() -> Vec<FittedPrompt> {
        let db = reference_database();
        let avoid = ["first idea of this round", "  second idea of this round\n", "third"];
        let task = "  TASK: the knobs, the format and an example.\n";
        let req = |kind, listed, avoid: &[&'static str]| PromptRequest {
            kind,
            task,
            baseline: db.baseline,
            listed,
            avoid: avoid.to_vec(),
            max_idea_chars: 60,
        };
        let exploit = req(PromptKind::Exploit, db.draw_exploit(10, 5), &avoid);
        let explore = req(PromptKind::Explore, db.draw_explore(100, 9), &avoid);
        let fresh = req(PromptKind::Fresh, Vec::new(), &[]);
        let fresh_avoid = req(PromptKind::Fresh, Vec::new(), &avoid[..1]);
        let mut out = Vec::new();
        for r in [&exploit, &explore, &fresh, &fresh_avoid] {
            out.push(fit_prompt(r, usize::MAX, &words).unwrap());
        }
        for (r, room) in [(&exploit, 40), (&explore, 40), (&explore, 70)] {
            let bare = words(&render(r, &[], &[]));
            out.push(fit_prompt(r, bare + room, &words).unwrap());
        }
        out
    }

    /// (tokens, listed, avoided, dropped) and the exact text of each of [`reference_prompts`].
    const REFERENCE_PROMPTS: [((usize, usize, usize, usize), &str); 7] = [
        (
            (118, 2, 3, 0),
            "TASK: the knobs, the format and an example.\n\
            \n\
            The baseline recipe (no changes) scores 0.2500. These ideas were tried and beat it; each is shown with \
            its score:\n\
            \n\
            Idea 1 (score 0.4500):\n\
            [Experiment] raise lr\n\
            [Code Changes]\n\
            lr = 1e-3\n\
            [End]\n\
            \n\
            Idea 2 (score 0.3000):\n\
            [Experiment] long word word word word word word word word wo [...]\n\
            \n\
            Propose one new idea that should score even higher than these: refine one of them, or combine the \
            changes of several.\n\
            \n\
            Avoid ideas similar to these, already proposed in this round:\n\
            \n\
            Proposed idea 1:\n\
            first idea of this round\n\
            \n\
            Proposed idea 2:\n\
            second idea of this round\n\
            \n\
            Proposed idea 3:\n\
            third",
        ),
        (
            (172, 6, 3, 0),
            "TASK: the knobs, the format and an example.\n\
            \n\
            For reference, the baseline recipe (no changes) scores 0.2500. These ideas were tried before, with \
            their scores (a failed idea could not be implemented or run and scored 0):\n\
            \n\
            Idea 1 (score 0.4500):\n\
            [Experiment] raise lr\n\
            [Code Changes]\n\
            lr = 1e-3\n\
            [End]\n\
            \n\
            Idea 2 (failed: implementation: unknown knob `x`):\n\
            [Experiment] broken\n\
            \n\
            Idea 3 (score 0.2000):\n\
            [Experiment] padded\n\
            [Code Changes]\n\
            warmup = 10\n\
            [End]\n\
            \n\
            Idea 4 (score 0.4000):\n\
            [Experiment] raise lr\n\
            [Code Changes]\n\
            lr = 1e-3\n\
            [End]\n\
            \n\
            Idea 5 (failed: run: \
            zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz [...]):\n\
            [Experiment] crashes\n\
            \n\
            Idea 6 (score 0.3000):\n\
            [Experiment] long word word word word word word word word wo [...]\n\
            \n\
            Propose one brand-new idea that is different from all of these: a new direction, avoiding the patterns \
            that failed or scored below the baseline.\n\
            \n\
            Avoid ideas similar to these, already proposed in this round:\n\
            \n\
            Proposed idea 1:\n\
            first idea of this round\n\
            \n\
            Proposed idea 2:\n\
            second idea of this round\n\
            \n\
            Proposed idea 3:\n\
            third",
        ),
        (
            (27, 0, 0, 0),
            "TASK: the knobs, the format and an example.\n\
            \n\
            Propose one new idea that should beat the baseline.",
        ),
        (
            (45, 0, 1, 0),
            "TASK: the knobs, the format and an example.\n\
            \n\
            Propose one new idea that should beat the baseline.\n\
            \n\
            Avoid ideas similar to these, already proposed in this round:\n\
            \n\
            Proposed idea 1:\n\
            first idea of this round",
        ),
        (
            (72, 1, 0, 4),
            "TASK: the knobs, the format and an example.\n\
            \n\
            The baseline recipe (no changes) scores 0.2500. These ideas were tried and beat it; each is shown with \
            its score:\n\
            \n\
            Idea 1 (score 0.4500):\n\
            [Experiment] raise lr\n\
            [Code Changes]\n\
            lr = 1e-3\n\
            [End]\n\
            \n\
            Propose one new idea that should score even higher than these: refine one of them, or combine the \
            changes of several.",
        ),
        (
            (84, 1, 0, 8),
            "TASK: the knobs, the format and an example.\n\
            \n\
            For reference, the baseline recipe (no changes) scores 0.2500. These ideas were tried before, with \
            their scores (a failed idea could not be implemented or run and scored 0):\n\
            \n\
            Idea 1 (score 0.4500):\n\
            [Experiment] raise lr\n\
            [Code Changes]\n\
            lr = 1e-3\n\
            [End]\n\
            \n\
            Propose one brand-new idea that is different from all of these: a new direction, avoiding the patterns \
            that failed or scored below the baseline.",
        ),
        (
            (127, 3, 2, 4),
            "TASK: the knobs, the format and an example.\n\
            \n\
            For reference, the baseline recipe (no changes) scores 0.2500. These ideas were tried before, with \
            their scores (a failed idea could not be implemented or run and scored 0):\n\
            \n\
            Idea 1 (score 0.4500):\n\
            [Experiment] raise lr\n\
            [Code Changes]\n\
            lr = 1e-3\n\
            [End]\n\
            \n\
            Idea 2 (failed: implementation: unknown knob `x`):\n\
            [Experiment] broken\n\
            \n\
            Idea 3 (score 0.2000):\n\
            [Experiment] padded\n\
            [Code Changes]\n\
            warmup = 10\n\
            [End]\n\
            \n\
            Propose one brand-new idea that is different from all of these: a new direction, avoiding the patterns \
            that failed or scored below the baseline.\n\
            \n\
            Avoid ideas similar to these, already proposed in this round:\n\
            \n\
            Proposed idea 1:\n\
            second idea of this round\n\
            \n\
            Proposed idea 2:\n\
            third",
        ),
    ];

    #[test]
    fn reference_prompts_are_exact() {
        let got = reference_prompts();
        assert_eq!(got.len(), REFERENCE_PROMPTS.len());
        for (i, (p, (counts, text))) in got.iter().zip(REFERENCE_PROMPTS).enumerate() {
            assert_eq!(p.text, text, "prompt {i}");
            assert_eq!((p.tokens, p.listed, p.avoided, p.dropped), counts, "prompt {i}");
        }
    }

    #[test]
    fn listed_ideas_are_clipped() {
        let e = entry(0, &"x".repeat(5000), 0.3, None);
        let req = PromptRequest { max_idea_chars: 100, ..request(PromptKind::Explore, vec![&e], vec![]) };
        let p = fit_prompt(&req, usize::MAX, &words).unwrap();
        assert!(p.text.contains(&format!("{} [...]", "x".repeat(100))));
        assert!(!p.text.contains(&"x".repeat(101)));
    }
}
